"""Ed25519-signed access tokens: minted by auth, verified locally by every service.

Format: a JWT (RFC 7519) signed with EdDSA/Ed25519 (RFC 8037), header ``kid`` naming the
signing key so keys can rotate (verifiers hold several keys by id). Only ``EdDSA`` is
accepted when verifying, which rules out algorithm-confusion attacks (``none``, HS256 with a
public key as secret).

Claims: ``sub`` account id, ``dev`` device id, ``sid`` session id, ``iat``/``exp`` (short:
5 minutes by default), ``auth_time`` (when password + TOTP last succeeded, for
``AUTH_MODE_FRESH``), ``roles`` (``operator`` for administrative tokens), ``iss``, and
``pending: true`` while the device awaits approval by another device of the account.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from conclave_kit.errors import Unauthenticated

ISSUER = "conclave-auth"
DEFAULT_TTL_SECONDS = 300
_INVALID = "access token is invalid or expired"


@dataclass(frozen=True)
class Claims:
    """What a verified access token says about its holder.

    Attributes:
        account_id: The account the token was issued to.
        device_id: The device the session is bound to.
        session_id: The session; revoking it invalidates the token everywhere.
        issued_at: Unix time the token was minted.
        expires_at: Unix time after which it is rejected.
        auth_time: Unix time of the last successful password + TOTP check.
        roles: Extra roles (``operator``); empty for end users.
        pending_approval: The device waits for approval by another device of the account;
            only the auth service serves it until then.
    """

    account_id: str
    device_id: str
    session_id: str
    issued_at: int
    expires_at: int
    auth_time: int
    roles: tuple[str, ...] = field(default=())
    pending_approval: bool = False


def b64url(data: bytes) -> str:
    """Encodes bytes as unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """Returns the 32 raw bytes of an Ed25519 public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class TokenSigner:
    """Mints access tokens (used by the auth service, and by tests before auth exists).

    Args:
        kid: Key id placed in the token header.
        private_key: The Ed25519 signing key.
        ttl_seconds: Lifetime of minted tokens.
    """

    def __init__(
        self, kid: str, private_key: Ed25519PrivateKey, ttl_seconds: int = DEFAULT_TTL_SECONDS
    ) -> None:
        self.kid = kid
        self._key = private_key
        self.ttl_seconds = ttl_seconds

    @classmethod
    def generate(cls, kid: str = "dev-1", ttl_seconds: int = DEFAULT_TTL_SECONDS) -> TokenSigner:
        """Creates a signer with a fresh random key."""
        return cls(kid, Ed25519PrivateKey.generate(), ttl_seconds)

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte public key verifiers need."""
        return public_key_bytes(self._key)

    def mint(
        self,
        *,
        account_id: str,
        device_id: str,
        session_id: str,
        auth_time: int | None = None,
        roles: tuple[str, ...] = (),
        pending_approval: bool = False,
        now: int | None = None,
        ttl_seconds: int | None = None,
    ) -> str:
        """Returns a signed access token for the given session."""
        issued = int(time.time()) if now is None else now
        payload: dict[str, Any] = {
            "iss": ISSUER,
            "sub": account_id,
            "dev": device_id,
            "sid": session_id,
            "iat": issued,
            "exp": issued + (self.ttl_seconds if ttl_seconds is None else ttl_seconds),
            "auth_time": issued if auth_time is None else auth_time,
            "roles": list(roles),
        }
        if pending_approval:
            payload["pending"] = True
        return jwt.encode(payload, self._key, algorithm="EdDSA", headers={"kid": self.kid})


class TokenVerifier:
    """Verifies access tokens against a set of Ed25519 public keys, offline.

    Args:
        keys: Raw 32-byte public keys by key id.
        leeway_seconds: Clock skew tolerated on ``exp`` and ``iat``.
    """

    def __init__(self, keys: Mapping[str, bytes], leeway_seconds: int = 5) -> None:
        self._keys = {kid: Ed25519PublicKey.from_public_bytes(raw) for kid, raw in keys.items()}
        self._leeway = leeway_seconds

    def set_keys(self, keys: Mapping[str, bytes]) -> None:
        """Replaces the trusted keys (key rotation); raw 32-byte Ed25519 keys by id."""
        self._keys = {kid: Ed25519PublicKey.from_public_bytes(raw) for kid, raw in keys.items()}

    @property
    def key_ids(self) -> frozenset[str]:
        """Ids of the keys currently trusted."""
        return frozenset(self._keys)

    def verify(self, token: str, *, now: int | None = None) -> Claims:
        """Checks signature, key id, issuer and lifetime, and returns the claims.

        Raises:
            Unauthenticated: Any failure; one opaque message so callers learn nothing about
                which check failed.
        """
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self._keys.get(kid) if isinstance(kid, str) else None
            if key is None:
                raise Unauthenticated(_INVALID)
            data = jwt.decode(
                token,
                key,
                algorithms=["EdDSA"],
                issuer=ISSUER,
                leeway=self._leeway,
                options={
                    "require": ["exp", "iat", "sub", "iss"],
                    # With an explicit clock we check exp and iat ourselves below.
                    "verify_exp": now is None,
                    "verify_iat": now is None,
                },
            )
            current = int(time.time()) if now is None else now
            if now is not None and int(data["exp"]) + self._leeway < current:
                raise Unauthenticated(_INVALID)
            if int(data["iat"]) - self._leeway > current:
                raise Unauthenticated(_INVALID)
            return Claims(
                account_id=str(data["sub"]),
                device_id=str(data["dev"]),
                session_id=str(data["sid"]),
                issued_at=int(data["iat"]),
                expires_at=int(data["exp"]),
                auth_time=int(data["auth_time"]),
                roles=tuple(str(r) for r in data.get("roles", [])),
                pending_approval=data.get("pending") is True,
            )
        except Unauthenticated:
            raise
        except (jwt.PyJWTError, KeyError, TypeError, ValueError):
            raise Unauthenticated(_INVALID) from None
