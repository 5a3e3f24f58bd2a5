"""Safety numbers: a 60-digit fingerprint of two identities (docs/protocol.md §9).

Follows Signal's NumericFingerprintGenerator (version 0): for each party,
``h = version(2) || identity || stable_id`` then 5,200 times ``h = SHA-512(h || identity)``;
the first 30 bytes of ``h`` give 6 groups of 5 digits (each group: a 5-byte big-endian
integer mod 100000). The two 30-digit halves are concatenated in sorted order, so both
parties see the same 60 digits. The scannable (QR) form carries the first 32 bytes of each
party's hash, local first; the scanner compares it with roles swapped.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from conclave_crypto.errors import InvalidKeyError
from conclave_crypto.keys import IdentityKey
from conclave_crypto.primitives import ct_equal

FINGERPRINT_VERSION = 0
ITERATIONS = 5200
SCANNABLE_VERSION = 1


def _iterated_hash(identity: bytes, stable_id: bytes) -> bytes:
    h = FINGERPRINT_VERSION.to_bytes(2, "big") + identity + stable_id
    for _ in range(ITERATIONS):
        h = hashlib.sha512(h + identity).digest()
    return h


def _digits(h: bytes) -> str:
    return "".join(f"{int.from_bytes(h[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))


@dataclass(frozen=True)
class SafetyNumber:
    """Safety number between the local and a remote identity."""

    local_hash: bytes
    remote_hash: bytes

    @classmethod
    def compute(
        cls, local_id: str, local: IdentityKey, remote_id: str, remote: IdentityKey
    ) -> SafetyNumber:
        """Compute both parties' iterated hashes (about 10k SHA-512 calls)."""
        return cls(
            _iterated_hash(local.encode(), local_id.encode()),
            _iterated_hash(remote.encode(), remote_id.encode()),
        )

    def digits(self) -> str:
        """The 60-digit displayable number; identical on both sides."""
        a, b = _digits(self.local_hash), _digits(self.remote_hash)
        return a + b if a <= b else b + a

    def display(self) -> str:
        """The 60 digits in 12 groups of 5 separated by spaces."""
        d = self.digits()
        return " ".join(d[i : i + 5] for i in range(0, 60, 5))

    def scannable(self) -> bytes:
        """QR payload: ``version(1) || local_hash[:32] || remote_hash[:32]``."""
        return bytes([SCANNABLE_VERSION]) + self.local_hash[:32] + self.remote_hash[:32]

    def matches_scanned(self, scanned: bytes) -> bool:
        """Check a QR payload scanned from the other party's screen.

        Raises:
            InvalidKeyError: if the payload is malformed or of an unknown version.
        """
        if len(scanned) != 65 or scanned[0] != SCANNABLE_VERSION:
            raise InvalidKeyError("bad scannable safety number")
        return ct_equal(scanned[1:33], self.remote_hash[:32]) and ct_equal(
            scanned[33:65], self.local_hash[:32]
        )
