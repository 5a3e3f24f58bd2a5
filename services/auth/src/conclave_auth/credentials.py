"""Credential primitives: usernames, passwords, TOTP, recovery codes, opaque tokens.

Everything that compares a secret does it in constant time or by looking up a hash, so
timing does not reveal how much of a guess was right.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote

import argon2
import pyotp
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from conclave_kit.errors import InvalidArgument
from zxcvbn.frequency_lists import FREQUENCY_LISTS

TOTP_STEP_SECONDS = 30
TOTP_DIGITS = 6
TOTP_ISSUER = "Conclave"
RECOVERY_CODE_COUNT = 10
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{2,31}$")
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
# 30,000 most common passwords (zxcvbn's list, from leaked-password corpora).
_COMMON_PASSWORDS = frozenset(FREQUENCY_LISTS["passwords"])
MAX_PASSWORD_BYTES = 1024


def normalise_username(raw: str) -> str:
    """Returns the canonical form of a username.

    NFKC folds compatibility look-alikes (fullwidth letters, ligatures), case folding
    removes case, and the result must be plain ASCII ``[a-z0-9._-]``: restricting the
    alphabet is what makes cross-script confusables (Cyrillic U+0430 for Latin ``a``)
    impossible rather than merely unlikely.

    Raises:
        InvalidArgument: Not 3-32 allowed characters after normalisation.
    """
    folded = unicodedata.normalize("NFKC", raw).casefold().strip()
    if not _USERNAME.match(folded):
        raise InvalidArgument(
            "username must be 3-32 characters: letters a-z, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            reason="INVALID_USERNAME",
        )
    return folded


def check_password_policy(password: str, username: str, min_length: int) -> None:
    """Rejects weak passwords with the rule that failed.

    Raises:
        InvalidArgument: reason ``WEAK_PASSWORD``, message naming the failed rule.
    """
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise InvalidArgument(
            f"password is longer than {MAX_PASSWORD_BYTES} bytes", reason="WEAK_PASSWORD"
        )
    if len(password) < min_length:
        raise InvalidArgument(
            f"password is too short: at least {min_length} characters", reason="WEAK_PASSWORD"
        )
    lowered = password.casefold()
    if lowered in _COMMON_PASSWORDS or lowered.rstrip("0123456789!") in _COMMON_PASSWORDS:
        raise InvalidArgument(
            "password is on the list of commonly used passwords", reason="WEAK_PASSWORD"
        )
    if username and username in lowered:
        raise InvalidArgument("password must not contain the username", reason="WEAK_PASSWORD")
    if len(set(password)) < 5:
        raise InvalidArgument(
            "password repeats too few distinct characters", reason="WEAK_PASSWORD"
        )


class PasswordHasher:
    """Argon2id hashing off the event loop, with parameters stored in each hash.

    The PHC string (``$argon2id$v=19$m=...,t=...,p=...$salt$hash``) carries its own
    parameters and 16-byte random salt, so parameters can be raised later: a login whose
    hash has weaker parameters than configured is re-hashed (:meth:`needs_rehash`).
    """

    def __init__(
        self, memory_kib: int, time_cost: int, parallelism: int, max_concurrent: int = 4
    ) -> None:
        # Each hash holds memory_kib of RAM while it runs: bounding concurrency bounds the
        # memory a login storm can take (and queues logins instead of thrashing the CPU).
        self._slots = asyncio.Semaphore(max_concurrent)
        self._hasher = argon2.PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_kib,
            parallelism=parallelism,
            hash_len=32,
            salt_len=16,
            type=argon2.Type.ID,
        )
        # Verifying against this hash when the username is unknown makes "no such user"
        # take as long as "wrong password", so timing cannot enumerate usernames.
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        """Returns the Argon2id PHC string (runs in a worker thread: ~tens of ms of CPU)."""
        async with self._slots:
            return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        """True when ``password`` matches ``stored`` (None: compare with a dummy hash)."""

        def check() -> bool:
            try:
                return bool(self._hasher.verify(stored or self._dummy, password)) and bool(stored)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        async with self._slots:
            return await asyncio.to_thread(check)

    def needs_rehash(self, stored: str) -> bool:
        """True when ``stored`` uses weaker parameters than configured."""
        return bool(self._hasher.check_needs_rehash(stored))


def new_totp_secret() -> str:
    """A 160-bit TOTP secret in base32 without padding (RFC 4226 recommends >= 128 bits)."""
    return base64.b32encode(secrets.token_bytes(20)).decode().rstrip("=")


def otpauth_uri(secret: str, username: str) -> str:
    """The ``otpauth://`` URI authenticator apps scan (contains the secret)."""
    label = quote(f"{TOTP_ISSUER}:{username}")
    return (
        f"otpauth://totp/{label}?secret={secret}&issuer={TOTP_ISSUER}"
        f"&algorithm=SHA1&digits={TOTP_DIGITS}&period={TOTP_STEP_SECONDS}"
    )


def totp_matching_step(secret: str, code: str, now: float, drift_steps: int = 1) -> int | None:
    """Returns the RFC 6238 time step whose code equals ``code``, or None.

    Steps ``current - drift .. current + drift`` are accepted (clock drift of one 30 s
    step either way). Every candidate is compared in constant time, and all candidates are
    always computed, so timing does not tell which step matched.
    """
    if len(code) != TOTP_DIGITS or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP_SECONDS)
    current = int(now) // TOTP_STEP_SECONDS
    found: int | None = None
    for step in range(current - drift_steps, current + drift_steps + 1):
        candidate = totp.generate_otp(step)
        if hmac.compare_digest(candidate.encode(), code.encode()) and found is None:
            found = step
    return found


def require_totp_format(code: str) -> None:
    """Raises INVALID_ARGUMENT unless ``code`` is six digits."""
    if len(code) != TOTP_DIGITS or not code.isdigit():
        raise InvalidArgument("TOTP code must be 6 digits", reason="INVALID_TOTP_FORMAT")


@dataclass(frozen=True)
class RecoveryCodes:
    """Freshly generated codes (to show once) and their hashes (to store)."""

    codes: list[str]
    hashes: list[bytes]


def _recovery_digest(account_id: str, normalised: str) -> bytes:
    # 80-bit random codes cannot be brute-forced offline, so a fast hash suffices;
    # the account id binds each hash to its account.
    return hashlib.sha256(f"conclave-recovery-v1:{account_id}:{normalised}".encode()).digest()


def new_recovery_codes(account_id: str) -> RecoveryCodes:
    """Ten codes of 16 base32 characters (80 bits each), shown as XXXX-XXXX-XXXX-XXXX."""
    codes: list[str] = []
    for _ in range(RECOVERY_CODE_COUNT):
        raw = "".join(secrets.choice(_BASE32) for _ in range(16))
        codes.append("-".join(raw[i : i + 4] for i in range(0, 16, 4)))
    return RecoveryCodes(codes, [recovery_code_hash(account_id, c) for c in codes])


def recovery_code_hash(account_id: str, code: str) -> bytes:
    """Hash of a recovery code as typed (dashes, spaces and case ignored)."""
    normalised = re.sub(r"[\s-]", "", code).upper()
    return _recovery_digest(account_id, normalised)


def new_opaque_token() -> str:
    """A 256-bit random token, base64url without padding (43 characters)."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    """SHA-256 of an opaque token: stored instead of the token, looked up by equality."""
    return hashlib.sha256(token.encode()).digest()
