"""TOTP against RFC 6238 Appendix B (SHA-1 rows), truncated to our 6 digits."""

from __future__ import annotations

import pytest
from conclave_auth.credentials import totp_matching_step

# RFC 6238 Appendix B uses the ASCII seed "12345678901234567890" (base32 below) and prints
# 8-digit codes; a 6-digit code is the same HOTP value mod 10^6, i.e. its last 6 digits.
SEED_B32 = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
VECTORS = [
    (59, "94287082"),
    (1111111109, "07081804"),
    (1111111111, "14050471"),
    (1234567890, "89005924"),
    (2000000000, "69279037"),
    (20000000000, "65353130"),
]


@pytest.mark.parametrize(("unix_time", "eight_digits"), VECTORS)
def test_rfc6238_sha1_vectors(unix_time: int, eight_digits: str) -> None:
    """Our verifier accepts exactly the RFC's code at its time step (drift 0)."""
    step = totp_matching_step(SEED_B32, eight_digits[-6:], unix_time, drift_steps=0)
    assert step == unix_time // 30
