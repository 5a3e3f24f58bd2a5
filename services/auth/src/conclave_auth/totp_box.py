"""TOTP shared secrets encrypted at rest (AES-256-GCM under a key outside the database).

Verifying a TOTP code needs the shared secret itself, so it cannot be hashed like a
password. Stored in clear, a copy of the auth database (a backup, a replica, an SQL
injection) would hand an attacker every account's second factor. With
``CONCLAVE_AUTH_TOTP_KEY_FILE`` set, ``accounts.totp_secret`` and ``pending_totp_secret``
hold ``v1:`` + base64(12-byte nonce ‖ AES-256-GCM ciphertext ‖ tag), with the account id
as associated data: a sealed secret copied onto another account's row does not open.

The key is a file of 32 random bytes (raw, or base64 text as Kubernetes Secrets often
hold it), mode 0600, kept out of the database and its backups. At start-up auth seals
every secret still stored in clear (deployments that add the key later), and refuses to
start when secrets are sealed but no key is configured.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from conclave_kit.config import ConfigError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "v1:"
KEY_BYTES = 32
_NONCE_BYTES = 12
_AAD_PREFIX = b"conclave-totp-secret:"


def load_totp_key(path: str, setting: str = "CONCLAVE_AUTH_TOTP_KEY_FILE") -> bytes:
    """Reads a 32-byte key file (raw bytes or base64 text).

    Raises:
        ConfigError: Unreadable, or not 32 bytes either way.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(f"{setting}: cannot read {path!r} ({err.strerror})") from None
    if len(raw) == KEY_BYTES:
        return raw
    try:
        decoded = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) != KEY_BYTES:
        raise ConfigError(f"{setting}: expected 32 random bytes (raw or base64) in {path!r}")
    return decoded


class TotpSecretBox:
    """Seals and opens TOTP secrets for storage.

    Args:
        key: The 32-byte AES key; None stores secrets in clear (development without the
            setting; start-up logs a warning).
    """

    def __init__(self, key: bytes | None) -> None:
        if key is not None and len(key) != KEY_BYTES:
            raise ValueError("TOTP key must be 32 bytes")
        self._aead = None if key is None else AESGCM(key)

    @property
    def enabled(self) -> bool:
        """True when secrets are sealed."""
        return self._aead is not None

    def seal(self, account_id: str, secret: str) -> str:
        """The stored form of ``secret`` for ``account_id``."""
        if self._aead is None:
            return secret
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, secret.encode(), _AAD_PREFIX + account_id.encode())
        return PREFIX + base64.b64encode(nonce + sealed).decode()

    def open(self, account_id: str, stored: str) -> str:
        """The secret from its stored form (a clear legacy value is returned as is).

        Raises:
            ValueError: Sealed but no key is configured, or it does not open (wrong key,
                wrong account, altered).
        """
        if not is_sealed(stored):
            return stored
        if self._aead is None:
            raise ValueError("TOTP secret is sealed but no TOTP key is configured")
        blob = base64.b64decode(stored[len(PREFIX) :])
        try:
            plain = self._aead.decrypt(
                blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], _AAD_PREFIX + account_id.encode()
            )
        except InvalidTag:
            raise ValueError("TOTP secret does not open with the configured key") from None
        return plain.decode()


def is_sealed(stored: str) -> bool:
    """True for a sealed (``v1:``) value."""
    return stored.startswith(PREFIX)
