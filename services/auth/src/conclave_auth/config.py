"""Auth-specific settings (on top of the kit's :class:`ServiceConfig`).

Session timeouts come in profiles so an operator picks a policy, not six numbers:

=============  ============  ==================  ====================================
profile        idle timeout  absolute lifetime   for
=============  ============  ==================  ====================================
``standard``   14 days       90 days             consumer-style messaging
``enterprise`` 30 minutes    12 hours            NIST SP 800-63B AAL2 reauthentication
=============  ============  ==================  ====================================

Each value can still be overridden (``CONCLAVE_AUTH_IDLE_TIMEOUT_SECONDS``,
``CONCLAVE_AUTH_ABSOLUTE_LIFETIME_SECONDS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from conclave_kit.config import ConfigError, Env, ServiceConfig
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conclave_auth.totp_box import load_totp_key

PROFILES = {
    "standard": (14 * 24 * 3600.0, 90 * 24 * 3600.0),
    "enterprise": (30 * 60.0, 12 * 3600.0),
}
# OWASP Password Storage Cheat Sheet minimum for Argon2id: m = 19 MiB, t = 2, p = 1.
ARGON2_MIN_MEMORY_KIB = 19 * 1024
ARGON2_MIN_TIME_COST = 2


@dataclass(frozen=True)
class AuthConfig:
    """Settings of the auth service.

    Attributes:
        service: Common settings (ports, database, NATS, token verification keys).
        signing_key_id: Key id of the access-token signing key (JWT ``kid``).
        signing_key: Ed25519 private key that signs access tokens.
        access_token_seconds: Access-token lifetime.
        idle_timeout_seconds: A session unused this long ends.
        absolute_lifetime_seconds: A session ends this long after login regardless of use.
        device_cap: Maximum devices per account.
        enrollment_seconds: How long an unconfirmed registration waits for its TOTP code.
        password_min_length: Minimum password length in characters.
        argon2_memory_kib: Argon2id memory cost (at least OWASP's 19 MiB).
        argon2_time_cost: Argon2id iterations (at least 2).
        argon2_parallelism: Argon2id lanes.
        argon2_max_concurrent: Hashes computed at once (memory = this x argon2_memory_kib).
        source_logins_per_minute: Login/confirm attempts per client address (burst = 1 min).
        source_registrations_per_hour: Registrations per client address (burst = 1 h).
        audit_ttl_seconds: Deployment default lifetime of audit-log entries.
        sender_cert_key: Ed25519 key signing sealed-sender certificates (None: not offered).
        sender_cert_key_id: Its u32 id, written into each certificate.
        totp_key: AES-256 key sealing stored TOTP secrets (``CONCLAVE_AUTH_TOTP_KEY_FILE``);
            None stores them in clear (development only; start-up warns).
    """

    service: ServiceConfig
    signing_key_id: str
    signing_key: Ed25519PrivateKey = field(repr=False)
    access_token_seconds: int
    idle_timeout_seconds: float
    absolute_lifetime_seconds: float
    device_cap: int
    enrollment_seconds: float
    password_min_length: int
    argon2_memory_kib: int
    argon2_time_cost: int
    argon2_parallelism: int
    argon2_max_concurrent: int = 4
    source_logins_per_minute: int = 30
    source_registrations_per_hour: int = 10
    audit_ttl_seconds: float = 365 * 24 * 3600.0
    sender_cert_key: Ed25519PrivateKey | None = field(default=None, repr=False)
    sender_cert_key_id: int = 1
    totp_key: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AuthConfig:
        """Reads all auth settings.

        Raises:
            ConfigError: A setting is missing or malformed (one line naming it).
        """
        env = Env(environ)
        service = ServiceConfig.from_env(
            "auth", default_grpc_port=50051, default_metrics_port=9101, environ=environ
        )
        key_id = env.text("CONCLAVE_TOKEN_SIGNING_KEY_ID")
        key_file = env.text("CONCLAVE_TOKEN_SIGNING_KEY_FILE")
        key = _load_ed25519(key_file, "CONCLAVE_TOKEN_SIGNING_KEY_FILE")
        if key_id not in service.token_verify_keys:
            raise ConfigError(
                "CONCLAVE_TOKEN_VERIFY_KEYS: must include the signing key id "
                f"{key_id!r} so other services accept its tokens"
            )
        cert_file = env.optional_text("CONCLAVE_AUTH_SENDER_CERT_KEY_FILE")
        cert_key = (
            None
            if cert_file is None
            else _load_ed25519(cert_file, "CONCLAVE_AUTH_SENDER_CERT_KEY_FILE")
        )
        totp_key_file = env.optional_text("CONCLAVE_AUTH_TOTP_KEY_FILE")
        totp_key = None if totp_key_file is None else load_totp_key(totp_key_file)
        profile = env.choice("CONCLAVE_AUTH_SESSION_PROFILE", "standard", tuple(PROFILES))
        idle_default, absolute_default = PROFILES[profile]
        idle = env.seconds("CONCLAVE_AUTH_IDLE_TIMEOUT_SECONDS", idle_default, minimum=60)
        absolute = env.seconds(
            "CONCLAVE_AUTH_ABSOLUTE_LIFETIME_SECONDS", absolute_default, minimum=60
        )
        if absolute < idle:
            raise ConfigError(
                "CONCLAVE_AUTH_ABSOLUTE_LIFETIME_SECONDS: must be at least the idle timeout"
            )
        return cls(
            service=service,
            totp_key=totp_key,
            signing_key_id=key_id,
            signing_key=key,
            access_token_seconds=env.integer(
                "CONCLAVE_AUTH_ACCESS_TOKEN_SECONDS", 300, minimum=30, maximum=3600
            ),
            idle_timeout_seconds=idle,
            absolute_lifetime_seconds=absolute,
            device_cap=env.integer("CONCLAVE_AUTH_DEVICE_CAP", 8, minimum=1, maximum=100),
            enrollment_seconds=env.seconds(
                "CONCLAVE_AUTH_ENROLLMENT_SECONDS", 24 * 3600.0, minimum=60
            ),
            password_min_length=env.integer(
                "CONCLAVE_AUTH_PASSWORD_MIN_LENGTH", 12, minimum=8, maximum=128
            ),
            argon2_memory_kib=env.integer(
                "CONCLAVE_AUTH_ARGON2_MEMORY_KIB", 64 * 1024, minimum=ARGON2_MIN_MEMORY_KIB
            ),
            argon2_time_cost=env.integer(
                "CONCLAVE_AUTH_ARGON2_TIME_COST", 3, minimum=ARGON2_MIN_TIME_COST, maximum=20
            ),
            argon2_parallelism=env.integer(
                "CONCLAVE_AUTH_ARGON2_PARALLELISM", 4, minimum=1, maximum=16
            ),
            argon2_max_concurrent=env.integer(
                "CONCLAVE_AUTH_ARGON2_MAX_CONCURRENT", 4, minimum=1, maximum=64
            ),
            source_logins_per_minute=env.integer(
                "CONCLAVE_AUTH_SOURCE_LOGINS_PER_MINUTE", 30, minimum=1
            ),
            source_registrations_per_hour=env.integer(
                "CONCLAVE_AUTH_SOURCE_REGISTRATIONS_PER_HOUR", 10, minimum=1
            ),
            sender_cert_key=cert_key,
            sender_cert_key_id=env.integer(
                "CONCLAVE_AUTH_SENDER_CERT_KEY_ID", 1, minimum=1, maximum=2**32 - 1
            ),
            audit_ttl_seconds=env.seconds(
                "CONCLAVE_AUTH_AUDIT_TTL_SECONDS", 365 * 24 * 3600.0, minimum=3600
            ),
        )


def _load_ed25519(path: str, variable: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{variable}: cannot read an Ed25519 PEM key ({err})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{variable}: not an Ed25519 private key")
    return key
