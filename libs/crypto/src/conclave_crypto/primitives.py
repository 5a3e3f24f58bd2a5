"""Primitive building blocks: KDF labels, HKDF/HMAC, AEAD, X25519, padding.

Every derived key in Conclave goes through :func:`hkdf` with one of the ``INFO_*`` labels
below, so no two protocol steps can ever produce the same key from the same input
(domain separation). The labels are part of the wire protocol: see docs/protocol.md §2.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from conclave_crypto.errors import DecryptionError

# --- protocol version ---------------------------------------------------------------------
#: First byte of every Conclave wire structure.
PROTOCOL_VERSION = 0x01

# --- KDF info strings (domain separation), docs/protocol.md §2 -----------------------------
INFO_PQXDH = b"Conclave_PQXDH_X25519_SHA-256_ML-KEM-1024"
INFO_X3DH = b"Conclave_X3DH_X25519_SHA-256_NO-PQ"
INFO_RATCHET_ROOT = b"Conclave/v1/DoubleRatchet/Root"
INFO_MESSAGE_KEYS = b"Conclave/v1/DoubleRatchet/MessageKeys"
INFO_SENDER_KEY_MESSAGE = b"Conclave/v1/SenderKey/MessageKeys"
INFO_ATTACHMENT = b"Conclave/v1/Attachment"
INFO_SEALED_EPHEMERAL = b"Conclave/v1/SealedSender/Ephemeral"
INFO_SEALED_STATIC = b"Conclave/v1/SealedSender/Static"

# --- signature contexts: prefixed to every signed byte string ------------------------------
SIG_SIGNED_PREKEY = b"Conclave/v1/Sig/SignedPreKey"
SIG_KEM_PREKEY = b"Conclave/v1/Sig/KEMPreKey"
SIG_SENDER_KEY_MESSAGE = b"Conclave/v1/Sig/SenderKeyMessage"
SIG_SENDER_CERTIFICATE = b"Conclave/v1/Sig/SenderCertificate"

# --- symmetric-ratchet constants (as in Signal's Double Ratchet §5.2 recommendation) ---------
CHAIN_MESSAGE_SEED = b"\x01"
CHAIN_NEXT = b"\x02"

KEY_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
HASH_LEN = 32

#: Messages are padded to a multiple of this many bytes (as Signal does) before encryption.
MESSAGE_PAD_BLOCK = 160
#: Smallest padded attachment size.
ATTACHMENT_MIN_BUCKET = 512


def random_bytes(n: int) -> bytes:
    """Return ``n`` bytes from the OS CSPRNG."""
    return os.urandom(n)


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA-256 (RFC 2104)."""
    return hmac.new(key, data, hashlib.sha256).digest()


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA-256 (RFC 5869); an empty salt means ``HashLen`` zero bytes.

    Args:
        ikm: input keying material.
        salt: optional salt (may be empty).
        info: context string, always one of the ``INFO_*`` labels in protocol code.
        length: number of output bytes (at most 255 * 32).

    Returns:
        ``length`` bytes of output keying material.

    Raises:
        ValueError: if ``length`` is out of range.
    """
    if not 0 < length <= 255 * HASH_LEN:
        raise ValueError("invalid HKDF output length")
    prk = hmac_sha256(salt or bytes(HASH_LEN), ikm)
    out = b""
    block = b""
    for i in range(1, math.ceil(length / HASH_LEN) + 1):
        block = hmac_sha256(prk, block + info + bytes([i]))
        out += block
    return out[:length]


def chain_step(chain_key: bytes) -> tuple[bytes, bytes]:
    """Advance a symmetric KDF chain.

    Returns:
        ``(message_key_seed, next_chain_key)`` = (HMAC(ck, 0x01), HMAC(ck, 0x02)).
    """
    return hmac_sha256(chain_key, CHAIN_MESSAGE_SEED), hmac_sha256(chain_key, CHAIN_NEXT)


def _message_cipher(seed: bytes, info: bytes) -> tuple[AESGCM, bytes]:
    okm = hkdf(seed, b"", info, KEY_LEN + NONCE_LEN)
    return AESGCM(okm[:KEY_LEN]), okm[KEY_LEN:]


def seal(seed: bytes, info: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """AES-256-GCM under a key and nonce derived from a single-use ``seed``.

    The seed (a message key) is used exactly once, so a derived, deterministic nonce is safe.
    """
    cipher, nonce = _message_cipher(seed, info)
    return cipher.encrypt(nonce, plaintext, ad)


def open_sealed(seed: bytes, info: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    """Inverse of :func:`seal`.

    Raises:
        DecryptionError: on any authentication failure.
    """
    cipher, nonce = _message_cipher(seed, info)
    try:
        return cipher.decrypt(nonce, ciphertext, ad)
    except (InvalidTag, ValueError):
        raise DecryptionError from None


def x25519(private: X25519PrivateKey, public: bytes) -> bytes:
    """X25519 (RFC 7748) with a raw 32-byte peer key.

    Raises:
        DecryptionError: if the peer key is malformed or of small order (all-zero output).
    """
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise DecryptionError from None


def x25519_public(private: X25519PrivateKey) -> bytes:
    """Raw 32-byte public key of an X25519 private key."""
    return private.public_key().public_bytes_raw()


def pad_message(plaintext: bytes) -> bytes:
    """Pad to a multiple of :data:`MESSAGE_PAD_BLOCK` bytes: ``pt || 0x80 || 0x00*``.

    Hides exact message lengths from anyone seeing ciphertext (ISO/IEC 7816-4 padding).
    """
    padded_len = ((len(plaintext) + 1 + MESSAGE_PAD_BLOCK - 1) // MESSAGE_PAD_BLOCK) * (
        MESSAGE_PAD_BLOCK
    )
    return plaintext + b"\x80" + bytes(padded_len - len(plaintext) - 1)


def unpad_message(padded: bytes) -> bytes:
    """Remove :func:`pad_message` padding.

    Raises:
        DecryptionError: if the padding is malformed.
    """
    stripped = padded.rstrip(b"\x00")
    if not stripped or stripped[-1] != 0x80:
        raise DecryptionError
    return stripped[:-1]


def padme(length: int) -> int:
    """Padmé padded length (Nikitin et al., PETS 2019): leaks O(log log L) bits, <12% overhead."""
    if length < 2:
        return length
    e = length.bit_length() - 1
    s = e.bit_length()
    last_bits = e - s
    mask = (1 << last_bits) - 1
    return (length + mask) & ~mask


def attachment_bucket(length: int) -> int:
    """Padded plaintext size of an attachment of ``length`` bytes (size bucket)."""
    return max(ATTACHMENT_MIN_BUCKET, padme(length))


def ct_equal(a: bytes, b: bytes) -> bool:
    """Constant-time byte comparison."""
    return hmac.compare_digest(a, b)
