"""Tiny length-prefixed binary encoding used by every wire format in docs/protocol.md.

All integers are unsigned big-endian. Variable-length byte strings are prefixed with a
u32 length. The :class:`Reader` raises :class:`DecryptionError` on any truncation or
trailing garbage so that parsing failures are indistinguishable from MAC failures.
"""

from __future__ import annotations

import struct

from conclave_crypto.errors import DecryptionError


def u8(v: int) -> bytes:
    """Encode an unsigned 8-bit integer."""
    return struct.pack(">B", v)


def u16(v: int) -> bytes:
    """Encode an unsigned 16-bit big-endian integer."""
    return struct.pack(">H", v)


def u32(v: int) -> bytes:
    """Encode an unsigned 32-bit big-endian integer."""
    return struct.pack(">I", v)


def u64(v: int) -> bytes:
    """Encode an unsigned 64-bit big-endian integer."""
    return struct.pack(">Q", v)


def lp(b: bytes) -> bytes:
    """Encode a byte string with a u32 length prefix."""
    return u32(len(b)) + b


class Reader:
    """Sequential parser over a byte string; every error is a :class:`DecryptionError`."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, n: int) -> bytes:
        """Return the next ``n`` bytes.

        Raises:
            DecryptionError: if fewer than ``n`` bytes remain.
        """
        if n < 0 or self._pos + n > len(self._data):
            raise DecryptionError
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self) -> int:
        """Read an unsigned 8-bit integer."""
        return int(self.take(1)[0])

    def u16(self) -> int:
        """Read an unsigned 16-bit big-endian integer."""
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        """Read an unsigned 32-bit big-endian integer."""
        return int(struct.unpack(">I", self.take(4))[0])

    def u64(self) -> int:
        """Read an unsigned 64-bit big-endian integer."""
        return int(struct.unpack(">Q", self.take(8))[0])

    def lp(self) -> bytes:
        """Read a u32-length-prefixed byte string."""
        return self.take(self.u32())

    def rest(self) -> bytes:
        """Return all remaining bytes."""
        out = self._data[self._pos :]
        self._pos = len(self._data)
        return out

    def remaining(self) -> int:
        """Number of unread bytes."""
        return len(self._data) - self._pos

    def end(self) -> None:
        """Assert that the whole input was consumed.

        Raises:
            DecryptionError: if bytes remain.
        """
        if self._pos != len(self._data):
            raise DecryptionError
