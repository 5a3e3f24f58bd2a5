"""Sealed-sender certificates (docs/protocol.md §11), issued by auth.

Layout (all integers big-endian, ``lp(x)`` = u32 length || x)::

    SenderCertificate = 0x01 || lp(account_id) || lp(device_id) || signing(32) || agreement(32)
                        || u64 expires_ms || u32 server_key_id || signature(64)
    signature = Ed25519(server_key, "Conclave/v1/Sig/SenderCertificate" || all preceding bytes)

Servers may not import the client crypto library, so the layout is written here against the
spec; a test decodes and verifies what this module emits with ``conclave_crypto``.
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

VERSION = 1
SIGNATURE_CONTEXT = b"Conclave/v1/Sig/SenderCertificate"
LIFETIME_SECONDS = 24 * 3600  # clients refuse more than 48 h


def _lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def issue_certificate(
    server_key: Ed25519PrivateKey,
    server_key_id: int,
    account_id: str,
    device_id: str,
    signing_public_key: bytes,
    agreement_public_key: bytes,
    expires_ms: int,
) -> bytes:
    """Returns the encoded, signed certificate binding (account, device) to its identity."""
    if len(signing_public_key) != 32 or len(agreement_public_key) != 32:
        raise ValueError("identity keys must be 32 bytes each")
    body = (
        struct.pack(">B", VERSION)
        + _lp(account_id.encode())
        + _lp(device_id.encode())
        + signing_public_key
        + agreement_public_key
        + struct.pack(">QI", expires_ms, server_key_id)
    )
    return body + server_key.sign(SIGNATURE_CONTEXT + body)
