"""Attachment encryption (docs/protocol.md §10).

A random 32-byte key per file. The plaintext is zero-padded to its size bucket
(:func:`~conclave_crypto.primitives.attachment_bucket`, Padmé) and encrypted in chunks with
AES-256-GCM (a STREAM-like construction: the nonce carries the chunk index and a "last chunk"
flag, so chunks cannot be reordered, dropped or truncated)::

    AttachmentCiphertext = version(u8 = 0x01) || chunk_size(u32) || chunk_0 || ... || chunk_k
    aes_key  = HKDF(attachment_key, salt = "", info = INFO_ATTACHMENT, L = 32)
    nonce_i  = i (u88 big-endian, 11 bytes) || last(u8: 1 for the final chunk, else 0)
    chunk_i  = AES-256-GCM(aes_key, nonce_i, padded[i*cs:(i+1)*cs], AD = version || chunk_size)

The SHA-256 digest of the whole ciphertext travels (with the key and the true size) inside
the end-to-end encrypted message as an :class:`AttachmentPointer`; the downloader checks it
before decrypting anything, so the media server cannot substitute a blob.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from conclave_crypto.encoding import Reader, u8, u32, u64
from conclave_crypto.errors import DecryptionError
from conclave_crypto.primitives import (
    INFO_ATTACHMENT,
    PROTOCOL_VERSION,
    TAG_LEN,
    attachment_bucket,
    ct_equal,
    hkdf,
    random_bytes,
)

CHUNK_SIZE = 64 * 1024
MIN_CHUNK_SIZE = 1024
MAX_CHUNK_SIZE = 16 * 1024 * 1024
HEADER_LEN = 5


@dataclass(frozen=True)
class AttachmentPointer:
    """What the sender puts in the (end-to-end encrypted) message next to the media id."""

    key: bytes
    digest: bytes
    size: int

    def encode(self) -> bytes:
        """``version(u8) || key(32) || sha256(32) || size(u64)``."""
        return u8(PROTOCOL_VERSION) + self.key + self.digest + u64(self.size)

    @classmethod
    def parse(cls, data: bytes) -> AttachmentPointer:
        """Parse an encoded pointer.

        Raises:
            DecryptionError: if malformed.
        """
        r = Reader(data)
        if r.u8() != PROTOCOL_VERSION:
            raise DecryptionError
        p = cls(r.take(32), r.take(32), r.u64())
        r.end()
        return p


def _nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def encrypt_attachment(
    data: bytes, *, chunk_size: int = CHUNK_SIZE
) -> tuple[bytes, AttachmentPointer]:
    """Encrypt a file.

    Returns:
        ``(ciphertext to upload, pointer to send inside the message)``.
    """
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError("chunk size out of range")
    key = random_bytes(32)
    aead = AESGCM(hkdf(key, b"", INFO_ATTACHMENT, 32))
    header = u8(PROTOCOL_VERSION) + u32(chunk_size)
    padded_len = attachment_bucket(len(data))
    n_chunks = max(1, -(-padded_len // chunk_size))
    src = memoryview(data)
    digest = hashlib.sha256(header)
    parts = [header]
    for i in range(n_chunks):
        start, end = i * chunk_size, min((i + 1) * chunk_size, padded_len)
        chunk: bytes | memoryview = src[start:end]
        if end > len(data):  # the chunk holding the end of the data plus zero padding
            chunk = bytes(src[start:]) + bytes(end - max(start, len(data)))
        ct = aead.encrypt(_nonce(i, i == n_chunks - 1), chunk, header)
        digest.update(ct)  # hashed while the chunk is still in cache
        parts.append(ct)
    return b"".join(parts), AttachmentPointer(key, digest.digest(), len(data))


def decrypt_attachment(ciphertext: bytes, pointer: AttachmentPointer) -> bytes:
    """Verify the digest, then decrypt and strip padding.

    Raises:
        DecryptionError: digest mismatch, tampering, truncation, bad padding or bad size.
    """
    if not ct_equal(hashlib.sha256(ciphertext).digest(), pointer.digest):
        raise DecryptionError
    r = Reader(ciphertext)
    header = ciphertext[:HEADER_LEN]
    if r.u8() != PROTOCOL_VERSION:
        raise DecryptionError
    chunk_size = r.u32()
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise DecryptionError
    body = memoryview(ciphertext)[HEADER_LEN:]
    step = chunk_size + TAG_LEN
    n_chunks = -(-len(body) // step)
    padded_len = attachment_bucket(pointer.size)
    if n_chunks != max(1, -(-padded_len // chunk_size)):
        raise DecryptionError
    aead = AESGCM(hkdf(pointer.key, b"", INFO_ATTACHMENT, 32))
    out = []
    try:
        for i in range(n_chunks):
            part = body[i * step : (i + 1) * step]
            out.append(aead.decrypt(_nonce(i, i == n_chunks - 1), bytes(part), header))
    except (InvalidTag, ValueError):
        raise DecryptionError from None
    padded = b"".join(out)
    if len(padded) != padded_len or any(padded[pointer.size :]):
        raise DecryptionError
    return padded[: pointer.size]
