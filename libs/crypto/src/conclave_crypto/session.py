"""Pairwise session = PQXDH result + Double Ratchet + wire format (docs/protocol.md §6).

Wire formats (all Conclave messages start with ``version(u8) || type(u8)``)::

    Message        = 0x01 || 0x01 || header(40) || aead_ciphertext
    PreKeyMessage  = 0x01 || 0x02 || PQXDHInit || header(40) || aead_ciphertext

``aead_ciphertext`` = AES-256-GCM(pad_message(plaintext)) with AD = session AD || header.
The initiator sends PreKeyMessages until it has decrypted a reply from the peer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from conclave_crypto.encoding import Reader, u8
from conclave_crypto.errors import DecryptionError
from conclave_crypto.keys import IdentityKey
from conclave_crypto.pqxdh import PQXDHInit
from conclave_crypto.primitives import PROTOCOL_VERSION, pad_message, unpad_message
from conclave_crypto.ratchet import DoubleRatchet, Header

TYPE_MESSAGE = 0x01
TYPE_PREKEY_MESSAGE = 0x02

JSON = dict[str, Any]


@dataclass(frozen=True)
class WireMessage:
    """A parsed pairwise message."""

    init: PQXDHInit | None
    header: Header
    ciphertext: bytes

    @classmethod
    def parse(cls, data: bytes) -> WireMessage:
        """Parse Message / PreKeyMessage bytes.

        Raises:
            DecryptionError: if malformed or of an unknown version/type.
        """
        r = Reader(data)
        if r.u8() != PROTOCOL_VERSION:
            raise DecryptionError
        kind = r.u8()
        if kind == TYPE_PREKEY_MESSAGE:
            init: PQXDHInit | None = PQXDHInit.read(r)
        elif kind == TYPE_MESSAGE:
            init = None
        else:
            raise DecryptionError
        header = Header.read(r)
        return cls(init, header, r.rest())

    def encode(self) -> bytes:
        """Serialise."""
        if self.init is None:
            prefix = u8(PROTOCOL_VERSION) + u8(TYPE_MESSAGE)
        else:
            prefix = u8(PROTOCOL_VERSION) + u8(TYPE_PREKEY_MESSAGE) + self.init.encode()
        return prefix + self.header.encode() + self.ciphertext


class Session:
    """One pairwise session with one remote device."""

    def __init__(
        self,
        remote_identity: IdentityKey,
        associated_data: bytes,
        ratchet: DoubleRatchet,
        *,
        post_quantum: bool,
        base_key: bytes,
        pending_init: PQXDHInit | None = None,
    ) -> None:
        self.remote_identity = remote_identity
        self.associated_data = associated_data
        self.ratchet = ratchet
        #: False only if the session was set up with the (policy-allowed) non-PQ fallback.
        self.post_quantum = post_quantum
        #: The initiator's ephemeral key EK_A: identifies the PQXDH run of this session.
        self.base_key = base_key
        #: Set on the initiator until a reply was decrypted; makes us send PreKeyMessages.
        self.pending_init = pending_init

    def encrypt(self, plaintext: bytes) -> bytes:
        """Pad, encrypt and frame one message."""
        header, ct = self.ratchet.encrypt(pad_message(plaintext), self.associated_data)
        return WireMessage(self.pending_init, header, ct).encode()

    def decrypt(self, msg: WireMessage) -> bytes:
        """Decrypt a parsed message; state is unchanged on failure.

        Raises:
            DecryptionError: on any failure.
        """
        padded = self.ratchet.decrypt(msg.header, msg.ciphertext, self.associated_data)
        plaintext = unpad_message(padded)
        if msg.init is None:
            # The peer answered with a normal message, so it holds the session.
            self.pending_init = None
        return plaintext

    def to_json(self) -> JSON:
        """Serialise for local storage."""
        return {
            "remote_identity": self.remote_identity.encode().hex(),
            "ad": self.associated_data.hex(),
            "ratchet": self.ratchet.to_json(),
            "pq": self.post_quantum,
            "base_key": self.base_key.hex(),
            "pending_init": self.pending_init.encode().hex() if self.pending_init else None,
        }

    @classmethod
    def from_json(cls, d: JSON) -> Session:
        """Inverse of :meth:`to_json`."""
        pending = None
        if d["pending_init"] is not None:
            pending = PQXDHInit.read(Reader(bytes.fromhex(d["pending_init"])))
        return cls(
            IdentityKey.from_bytes(bytes.fromhex(d["remote_identity"])),
            bytes.fromhex(d["ad"]),
            DoubleRatchet.from_json(d["ratchet"]),
            post_quantum=bool(d["pq"]),
            base_key=bytes.fromhex(d["base_key"]),
            pending_init=pending,
        )
