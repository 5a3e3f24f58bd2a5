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


class AttachmentEncryptor:
    """Streaming form of :func:`encrypt_attachment` (same output bytes format).

    Feed the plaintext with :meth:`update` in pieces of any size; upload each returned
    ciphertext piece as it comes (the first one starts with the header). :meth:`finalize`
    returns the last pieces and the pointer. The total size must be known up front because
    the padded length (bucket) decides which chunk is the last one.
    """

    def __init__(self, size: int, *, chunk_size: int = CHUNK_SIZE) -> None:
        if size < 0 or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError("bad size or chunk size")
        self._size = size
        self._chunk_size = chunk_size
        self._key = random_bytes(32)
        self._aead = AESGCM(hkdf(self._key, b"", INFO_ATTACHMENT, 32))
        self._header = u8(PROTOCOL_VERSION) + u32(chunk_size)
        self._padded_len = attachment_bucket(size)
        self._n_chunks = max(1, -(-self._padded_len // chunk_size))
        self._digest = hashlib.sha256(self._header)
        self._buf = bytearray()
        self._fed = 0
        self._index = 0
        self._out: list[bytes] = [self._header]

    def _emit(self, chunk: bytes) -> None:
        ct = self._aead.encrypt(
            _nonce(self._index, self._index == self._n_chunks - 1), chunk, self._header
        )
        self._digest.update(ct)
        self._out.append(ct)
        self._index += 1

    def update(self, data: bytes) -> list[bytes]:
        """Add plaintext; returns ciphertext pieces ready to upload (possibly none).

        Raises:
            ValueError: if more than ``size`` bytes are fed.
        """
        self._fed += len(data)
        if self._fed > self._size:
            raise ValueError("more data than announced")
        self._buf += data
        cs = self._chunk_size
        # The last chunk (which carries the last flag and the padding) is only ever
        # produced by finalize().
        while len(self._buf) >= cs and self._index < self._n_chunks - 1:
            self._emit(bytes(self._buf[:cs]))
            del self._buf[:cs]
        out, self._out = self._out, []
        return out

    def finalize(self) -> tuple[list[bytes], AttachmentPointer]:
        """Pad, encrypt the remaining chunks and return them with the pointer.

        Raises:
            ValueError: if fewer than ``size`` bytes were fed.
        """
        if self._fed != self._size:
            raise ValueError("less data than announced")
        remaining = self._padded_len - self._index * self._chunk_size
        self._buf += bytes(remaining - len(self._buf))
        cs = self._chunk_size
        while self._index < self._n_chunks:
            self._emit(bytes(self._buf[:cs]))
            del self._buf[:cs]
        out, self._out = self._out, []
        return out, AttachmentPointer(self._key, self._digest.digest(), self._size)


class AttachmentDecryptor:
    """Streaming form of :func:`decrypt_attachment`.

    Plaintext is released chunk by chunk, each chunk already authenticated by AES-GCM under
    the secret key; :meth:`finalize` then checks the digest, the chunk count, the last-chunk
    flag and the padding. **Discard everything released if finalize raises.**
    """

    def __init__(self, pointer: AttachmentPointer) -> None:
        self._ptr = pointer
        self._aead = AESGCM(hkdf(pointer.key, b"", INFO_ATTACHMENT, 32))
        self._digest = hashlib.sha256()
        self._buf = bytearray()
        self._header: bytes | None = None
        self._chunk_size = 0
        self._index = 0
        self._released = 0
        self._padded_len = attachment_bucket(pointer.size)
        self._n_chunks = 0

    def _open(self, part: bytes, last: bool) -> bytes:
        assert self._header is not None
        try:
            pt = self._aead.decrypt(_nonce(self._index, last), part, self._header)
        except (InvalidTag, ValueError):
            raise DecryptionError from None
        self._index += 1
        take = max(0, min(len(pt), self._ptr.size - self._released))
        if any(pt[take:]):
            raise DecryptionError
        self._released += take
        return pt[:take]

    def update(self, data: bytes) -> bytes:
        """Add ciphertext; returns the plaintext that became available.

        Raises:
            DecryptionError: on any authentication or format failure.
        """
        self._digest.update(data)
        self._buf += data
        if self._header is None:
            if len(self._buf) < HEADER_LEN:
                return b""
            self._header = bytes(self._buf[:HEADER_LEN])
            del self._buf[:HEADER_LEN]
            r = Reader(self._header)
            if r.u8() != PROTOCOL_VERSION:
                raise DecryptionError
            self._chunk_size = r.u32()
            if not MIN_CHUNK_SIZE <= self._chunk_size <= MAX_CHUNK_SIZE:
                raise DecryptionError
            self._n_chunks = max(1, -(-self._padded_len // self._chunk_size))
        step = self._chunk_size + TAG_LEN
        out = []
        # A chunk is opened as non-last only when more data follows it, so a truncated
        # stream can never be mistaken for a complete one.
        while len(self._buf) > step and self._index < self._n_chunks - 1:
            out.append(self._open(bytes(self._buf[:step]), last=False))
            del self._buf[:step]
        return b"".join(out)

    def finalize(self) -> bytes:
        """Open the last chunk and verify digest, length and padding.

        Raises:
            DecryptionError: on any failure.
        """
        if self._header is None or self._index != self._n_chunks - 1:
            raise DecryptionError
        last_len = self._padded_len - self._index * self._chunk_size + TAG_LEN
        if len(self._buf) != last_len:
            raise DecryptionError
        pt = self._open(bytes(self._buf), last=True)
        self._buf.clear()
        if not ct_equal(self._digest.digest(), self._ptr.digest):
            raise DecryptionError
        if self._released != self._ptr.size:
            raise DecryptionError
        return pt
