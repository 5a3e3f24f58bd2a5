"""Settings specific to the keys service (the common ones are in ``conclave_kit.config``).

Every variable is read once at start-up; a bad value is a one-line :class:`ConfigError`.

The key-transparency log signs tree heads with an Ed25519 key read from
``CONCLAVE_KEYS_TREE_SIGNING_KEY_FILE`` (PEM, PKCS#8). The private key never goes into the
database. Without the variable the service refuses to start, unless
``CONCLAVE_KEYS_ALLOW_EPHEMERAL_TREE_KEY=true`` (development and tests only): then it
generates a key that lives as long as the process, and heads signed before a restart no
longer verify against the new key, which clients pinning a key will notice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from conclave_kit.config import ConfigError, Env
from conclave_kit.ratelimit import Limit
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

TREE_KEY_FILE = "CONCLAVE_KEYS_TREE_SIGNING_KEY_FILE"
ALLOW_EPHEMERAL = "CONCLAVE_KEYS_ALLOW_EPHEMERAL_TREE_KEY"


def load_tree_key(path: str) -> Ed25519PrivateKey:
    """Reads an Ed25519 private key from a PEM (PKCS#8) file.

    Raises:
        ConfigError: The file is unreadable or not an unencrypted Ed25519 PEM key.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(f"{TREE_KEY_FILE}: cannot read {path} ({err.strerror})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{TREE_KEY_FILE}: {path} is not an unencrypted PEM key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{TREE_KEY_FILE}: {path} is not an Ed25519 key")
    return key


def _limit(env: Env, name: str, default: Limit) -> Limit:
    """A bucket tunable by ``CONCLAVE_KEYS_<name>_BURST`` and ``..._PER_SECOND``."""
    cap = env.integer(f"CONCLAVE_KEYS_{name}_BURST", int(default.capacity), minimum=1)
    rate = env.seconds(f"CONCLAVE_KEYS_{name}_PER_SECOND", default.refill_per_second)
    if rate <= 0:
        raise ConfigError(f"CONCLAVE_KEYS_{name}_PER_SECOND: must be greater than 0")
    return Limit(default.name, float(cap), rate)


# Defaults: a person claims bundles for a group at a time (1,100 burst, 10/s); a
# device's one-time keys cannot be drained faster than 300 an hour by everyone together
# (the default cap is 1,000 stored); a device uploads now and then; lookups and log
# reads are cheap but unauthenticated reads are counted per source address.
# A device's first message to a group claims one bundle per member device, so the burst
# covers a 1,000-member group; draining a victim is bounded by the per-target limit below.
_CLAIM = Limit("prekey bundle claims", 1100.0, 10.0)
_TARGET_CLAIM = Limit("claims for this device", 300.0, 300.0 / 3600)
_UPLOAD = Limit("prekey uploads", 30.0, 30.0 / 3600)
_LOOKUP = Limit("directory lookups", 600.0, 10.0)
_PUBLIC = Limit("transparency log reads", 1200.0, 20.0)


@dataclass(frozen=True)
class KeysConfig:
    """Keys-service settings.

    Attributes:
        tree_signing_key: Ed25519 key signing tree heads (never logged).
        signed_prekey_grace_seconds: How long a replaced signed or last-resort prekey is
            kept so in-flight prekey messages still decrypt (default 7 days).
        max_one_time_prekeys: Per device and kind cap on stored one-time prekeys.
        claim_per_requester: Bundle claims per requesting account.
        claim_per_target_device: Bundles handed out per target device (exhaustion attacks).
        upload_per_device: Prekey uploads and publishes per device.
        lookup_per_account: Directory reads (lookups, inclusion proofs) per account.
        public_per_source: Anonymous log reads (heads, consistency proofs) per source address.
    """

    tree_signing_key: Ed25519PrivateKey = field(repr=False)
    signed_prekey_grace_seconds: float = 7 * 24 * 3600.0
    max_one_time_prekeys: int = 1000
    claim_per_requester: Limit = _CLAIM
    claim_per_target_device: Limit = _TARGET_CLAIM
    upload_per_device: Limit = _UPLOAD
    lookup_per_account: Limit = _LOOKUP
    public_per_source: Limit = _PUBLIC

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KeysConfig:
        """Reads the keys settings.

        Raises:
            ConfigError: A setting is malformed, or no tree signing key is configured and
                ephemeral keys are not allowed.
        """
        env = Env(environ)
        path = env.optional_text(TREE_KEY_FILE)
        if path is not None:
            key = load_tree_key(path)
        elif env.flag(ALLOW_EPHEMERAL, False):
            key = Ed25519PrivateKey.generate()
        else:
            raise ConfigError(
                f"{TREE_KEY_FILE}: required (PEM Ed25519 key signing transparency-log heads); "
                f"set {ALLOW_EPHEMERAL}=true for a throwaway development key"
            )
        defaults = cls(tree_signing_key=key)
        return cls(
            tree_signing_key=key,
            signed_prekey_grace_seconds=env.seconds(
                "CONCLAVE_KEYS_SIGNED_PREKEY_GRACE_SECONDS", defaults.signed_prekey_grace_seconds
            ),
            max_one_time_prekeys=env.integer(
                "CONCLAVE_KEYS_MAX_ONE_TIME_PREKEYS",
                defaults.max_one_time_prekeys,
                minimum=100,
                maximum=100_000,
            ),
            claim_per_requester=_limit(env, "CLAIM", _CLAIM),
            claim_per_target_device=_limit(env, "TARGET_CLAIM", _TARGET_CLAIM),
            upload_per_device=_limit(env, "UPLOAD", _UPLOAD),
            lookup_per_account=_limit(env, "LOOKUP", _LOOKUP),
            public_per_source=_limit(env, "PUBLIC", _PUBLIC),
        )
