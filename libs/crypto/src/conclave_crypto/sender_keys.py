"""Sender keys for groups (docs/protocol.md §8).

Each member device owns, per group, a *sender chain*: a random 32-byte chain key advanced
with the same KDF_CK as the Double Ratchet, plus an Ed25519 signing key. The chain key,
current iteration and signing public key travel to every other member device in a
``SenderKeyDistribution`` over the pairwise (PQXDH + Double Ratchet) sessions. A group
message is then encrypted **once** and signed, whatever the group size::

    SenderKeyMessage = 0x01 || 0x03 || lp(group_id) || chain_id(u32) || iteration(u32)
                       || lp(aead_ciphertext) || signature(64)
    signature = Ed25519(SIG_SENDER_KEY_MESSAGE || everything before the signature)
    aead: key||nonce = HKDF(HMAC(ck_i, 0x01), info=INFO_SENDER_KEY_MESSAGE, 44), AES-256-GCM,
          AD = version || type || lp(group_id) || chain_id || iteration

    SenderKeyDistribution = 0x01 || 0x04 || lp(group_id) || chain_id(u32) || iteration(u32)
                            || chain_key(32) || signing_public(32)

When a member leaves or is removed every remaining member calls :meth:`GroupSessions.rotate`
(new chain id, chain key and signing key) and distributes only to the remaining members, so
the removed member cannot derive any later message key. A new member receives the current
chain key and iteration: the KDF chain is one-way, so it cannot go back to older messages.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conclave_crypto.encoding import Reader, lp, u8, u32
from conclave_crypto.errors import DecryptionError
from conclave_crypto.keys import random_chain_id, verify_signature
from conclave_crypto.manager import DeviceAddress
from conclave_crypto.primitives import (
    INFO_SENDER_KEY_MESSAGE,
    PROTOCOL_VERSION,
    SIG_SENDER_KEY_MESSAGE,
    chain_step,
    open_sealed,
    pad_message,
    random_bytes,
    seal,
    unpad_message,
)
from conclave_crypto.ratchet import MAX_FORWARD_JUMP, MAX_SKIPPED_KEYS

TYPE_SENDER_KEY_MESSAGE = 0x03
TYPE_SENDER_KEY_DISTRIBUTION = 0x04
#: Older chains kept per sender so messages in flight across a rotation still decrypt.
MAX_SENDER_CHAINS = 5
MAX_GROUP_ID_LEN = 255

JSON = dict[str, Any]


@dataclass
class SenderChain:
    """One sender chain; ``signing_private`` is set only for our own chain."""

    chain_id: int
    iteration: int
    chain_key: bytes
    signing_public: bytes
    signing_private: Ed25519PrivateKey | None = None
    skipped: OrderedDict[int, bytes] = field(default_factory=OrderedDict)

    def to_json(self) -> JSON:
        """Serialise for local storage."""
        return {
            "chain_id": self.chain_id,
            "iteration": self.iteration,
            "chain_key": self.chain_key.hex(),
            "signing_public": self.signing_public.hex(),
            "signing_private": (
                self.signing_private.private_bytes_raw().hex() if self.signing_private else None
            ),
            "skipped": [[i, k.hex()] for i, k in self.skipped.items()],
        }

    @classmethod
    def from_json(cls, d: JSON) -> SenderChain:
        """Inverse of :meth:`to_json`."""
        priv = d["signing_private"]
        return cls(
            int(d["chain_id"]),
            int(d["iteration"]),
            bytes.fromhex(d["chain_key"]),
            bytes.fromhex(d["signing_public"]),
            Ed25519PrivateKey.from_private_bytes(bytes.fromhex(priv)) if priv else None,
            OrderedDict((int(i), bytes.fromhex(k)) for i, k in d["skipped"]),
        )


def _group_bytes(group_id: str) -> bytes:
    raw = group_id.encode()
    if not 0 < len(raw) <= MAX_GROUP_ID_LEN:
        raise ValueError("group id must be 1..255 UTF-8 bytes")
    return raw


@dataclass(frozen=True)
class SenderKeyDistribution:
    """Parsed SenderKeyDistribution message."""

    group_id: str
    chain_id: int
    iteration: int
    chain_key: bytes
    signing_public: bytes

    def encode(self) -> bytes:
        """Serialise."""
        return (
            u8(PROTOCOL_VERSION)
            + u8(TYPE_SENDER_KEY_DISTRIBUTION)
            + lp(_group_bytes(self.group_id))
            + u32(self.chain_id)
            + u32(self.iteration)
            + self.chain_key
            + self.signing_public
        )

    @classmethod
    def parse(cls, data: bytes) -> SenderKeyDistribution:
        """Parse.

        Raises:
            DecryptionError: if malformed.
        """
        r = Reader(data)
        if r.u8() != PROTOCOL_VERSION or r.u8() != TYPE_SENDER_KEY_DISTRIBUTION:
            raise DecryptionError
        try:
            gid = r.lp().decode()
        except UnicodeDecodeError:
            raise DecryptionError from None
        d = cls(gid, r.u32(), r.u32(), r.take(32), r.take(32))
        r.end()
        return d


def _message_ad(group: bytes, chain_id: int, iteration: int) -> bytes:
    return (
        u8(PROTOCOL_VERSION)
        + u8(TYPE_SENDER_KEY_MESSAGE)
        + lp(group)
        + u32(chain_id)
        + u32(iteration)
    )


class GroupSessions:
    """Sender-key state of one local device for all its groups."""

    def __init__(self) -> None:
        self.own: dict[str, SenderChain] = {}
        #: (group, sender address) -> chains, newest first.
        self.received: dict[tuple[str, DeviceAddress], list[SenderChain]] = {}

    # -- own chain --------------------------------------------------------------------------
    def distribution(self, group_id: str) -> bytes:
        """Our SenderKeyDistribution for ``group_id`` (creating the chain if needed).

        Send it to each member device over the pairwise sessions (SessionManager.encrypt).
        """
        chain = self.own.get(group_id)
        if chain is None:
            chain = self._new_chain(group_id)
        return SenderKeyDistribution(
            group_id, chain.chain_id, chain.iteration, chain.chain_key, chain.signing_public
        ).encode()

    def _new_chain(self, group_id: str) -> SenderChain:
        _group_bytes(group_id)
        sk = Ed25519PrivateKey.generate()
        chain = SenderChain(
            random_chain_id(), 0, random_bytes(32), sk.public_key().public_bytes_raw(), sk
        )
        self.own[group_id] = chain
        return chain

    def rotate(self, group_id: str) -> bytes:
        """Replace our chain for ``group_id`` (after a member left/was removed).

        Returns:
            The new distribution message, to send to the *remaining* members only.
        """
        self._new_chain(group_id)
        return self.distribution(group_id)

    def encrypt(self, group_id: str, plaintext: bytes) -> bytes:
        """Encrypt one group message, once for all members.

        Raises:
            KeyError: if no chain exists (call :meth:`distribution` and distribute it first).
        """
        chain = self.own[group_id]
        assert chain.signing_private is not None
        group = _group_bytes(group_id)
        seed, chain.chain_key = chain_step(chain.chain_key)
        ad = _message_ad(group, chain.chain_id, chain.iteration)
        chain.iteration += 1
        body = ad + lp(seal(seed, INFO_SENDER_KEY_MESSAGE, pad_message(plaintext), ad))
        return body + chain.signing_private.sign(SIG_SENDER_KEY_MESSAGE + body)

    # -- other members' chains --------------------------------------------------------------
    def process_distribution(self, sender: DeviceAddress, data: bytes) -> str:
        """Install a member's chain received over a pairwise session.

        Returns:
            The group id.

        Raises:
            DecryptionError: if malformed.
        """
        d = SenderKeyDistribution.parse(data)
        chains = self.received.setdefault((d.group_id, sender), [])
        for c in chains:
            if c.chain_id == d.chain_id:
                # Never move a chain backwards (a replayed distribution must not re-enable
                # already used message keys).
                if d.iteration > c.iteration:
                    c.chain_key, c.iteration = d.chain_key, d.iteration
                return d.group_id
        chains.insert(0, SenderChain(d.chain_id, d.iteration, d.chain_key, d.signing_public))
        del chains[MAX_SENDER_CHAINS:]
        return d.group_id

    def forget_member(self, group_id: str, sender: DeviceAddress) -> None:
        """Drop a removed member's chains: we will not accept its messages any more."""
        self.received.pop((group_id, sender), None)

    def forget_group(self, group_id: str) -> None:
        """Drop all state of a group we left."""
        self.own.pop(group_id, None)
        for key in [k for k in self.received if k[0] == group_id]:
            del self.received[key]

    def decrypt(self, sender: DeviceAddress, data: bytes) -> tuple[str, bytes]:
        """Verify and decrypt a SenderKeyMessage from ``sender``.

        Returns:
            ``(group_id, plaintext)``.

        Raises:
            DecryptionError: on any failure (unknown chain, bad signature, replay, too far
                ahead, tampering); state is unchanged in that case.
        """
        if len(data) < 64:
            raise DecryptionError
        body, signature = data[:-64], data[-64:]
        r = Reader(body)
        if r.u8() != PROTOCOL_VERSION or r.u8() != TYPE_SENDER_KEY_MESSAGE:
            raise DecryptionError
        group = r.lp()
        chain_id, iteration = r.u32(), r.u32()
        ad_len = len(body) - r.remaining()
        ciphertext = r.lp()
        r.end()
        try:
            group_id = group.decode()
        except UnicodeDecodeError:
            raise DecryptionError from None
        chain = next(
            (c for c in self.received.get((group_id, sender), []) if c.chain_id == chain_id), None
        )
        if chain is None or not verify_signature(
            chain.signing_public, signature, SIG_SENDER_KEY_MESSAGE + body
        ):
            raise DecryptionError
        ad = body[:ad_len]
        seed = chain.skipped.get(iteration)
        if seed is not None:
            pt = open_sealed(seed, INFO_SENDER_KEY_MESSAGE, ciphertext, ad)
            del chain.skipped[iteration]
            return group_id, unpad_message(pt)
        if iteration < chain.iteration or iteration > chain.iteration + MAX_FORWARD_JUMP:
            raise DecryptionError
        ck, it = chain.chain_key, chain.iteration
        new_skipped: deque[tuple[int, bytes]] = deque(maxlen=MAX_SKIPPED_KEYS)
        while it < iteration:
            s, ck = chain_step(ck)
            new_skipped.append((it, s))
            it += 1
        seed, ck = chain_step(ck)
        pt = open_sealed(seed, INFO_SENDER_KEY_MESSAGE, ciphertext, ad)
        chain.chain_key, chain.iteration = ck, it + 1
        for i, s in new_skipped:
            chain.skipped[i] = s
        while len(chain.skipped) > MAX_SKIPPED_KEYS:
            chain.skipped.popitem(last=False)
        return group_id, unpad_message(pt)

    # -- persistence ------------------------------------------------------------------------
    def to_json(self) -> JSON:
        """Serialise for local storage."""
        return {
            "own": {g: c.to_json() for g, c in self.own.items()},
            "received": [
                [g, a.user_id, a.device_id, [c.to_json() for c in cs]]
                for (g, a), cs in self.received.items()
            ],
        }

    @classmethod
    def from_json(cls, d: JSON) -> GroupSessions:
        """Inverse of :meth:`to_json`."""
        gs = cls()
        gs.own = {g: SenderChain.from_json(c) for g, c in d["own"].items()}
        for g, user, dev, cs in d["received"]:
            gs.received[(g, DeviceAddress(user, dev))] = [SenderChain.from_json(c) for c in cs]
        return gs
