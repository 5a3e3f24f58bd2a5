"""Key-transparency verification (RFC 9162 Merkle proofs; docs/protocol.md §3.4).

The keys service appends every (account, device) → identity-key change to a Merkle log and
signs tree heads with a log key that clients pin from configuration. Before trusting an
identity key, a client checks:

1. the signed tree head (Ed25519 by the pinned log key);
2. the inclusion proof of the binding's leaf in that head (:func:`verify_inclusion`);
3. that every newer head it sees is consistent with the older ones it remembered
   (:func:`verify_consistency`), so the log is append-only and it is not being shown a fork.

Encodings (shared with ``proto/conclave/keys/v1/keys.proto``)::

    leaf       = "Conclave/v1/KT/Leaf" || u8 action || lp(account_id) || lp(device_id)
                 || Encode(IK) (64) || u64 timestamp_ms
    leaf hash  = SHA-256(0x00 || leaf);  node hash = SHA-256(0x01 || left || right)
    tree head  = Ed25519(log_key, "Conclave/v1/KT/TreeHead" || u64 tree_size
                 || u64 timestamp_ms || root_hash)

The proof generators (:func:`merkle_root`, :func:`inclusion_proof`,
:func:`consistency_proof`) follow RFC 9162 §2.1 literally; they serve as the reference for
tests and tools, not for the server (which must not import this library).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from conclave_crypto.encoding import lp, u8, u64
from conclave_crypto.keys import IdentityKey, verify_signature

LEAF_CONTEXT = b"Conclave/v1/KT/Leaf"
TREE_HEAD_CONTEXT = b"Conclave/v1/KT/TreeHead"
EMPTY_ROOT = hashlib.sha256(b"").digest()
MAX_PROOF_LEN = 128


class LogAction(enum.IntEnum):
    """What a leaf records (numbers as in the proto's ``LogAction``)."""

    ADD = 1
    ROTATE = 2
    REMOVE = 3


def encode_leaf(
    action: LogAction, account_id: str, device_id: str, identity: IdentityKey, timestamp_ms: int
) -> bytes:
    """The leaf bytes for a binding change."""
    return (
        LEAF_CONTEXT
        + u8(int(action))
        + lp(account_id.encode())
        + lp(device_id.encode())
        + identity.encode()
        + u64(timestamp_ms)
    )


def leaf_hash(leaf: bytes) -> bytes:
    """RFC 9162 leaf hash: SHA-256(0x00 || leaf)."""
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def merkle_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over already hashed leaves (RFC 9162 §2.1.1)."""
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaf_hashes[0]
    k = _split(n)
    return node_hash(merkle_root(leaf_hashes[:k]), merkle_root(leaf_hashes[k:]))


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 §2.1.3.1."""
    n = len(leaf_hashes)
    if n <= 1:
        return []
    k = _split(n)
    if index < k:
        return [*inclusion_proof(index, leaf_hashes[:k]), merkle_root(leaf_hashes[k:])]
    return [*inclusion_proof(index - k, leaf_hashes[k:]), merkle_root(leaf_hashes[:k])]


def consistency_proof(first_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 9162 §2.1.4.1."""

    def sub(m: int, d: Sequence[bytes], complete: bool) -> list[bytes]:
        n = len(d)
        if m == n:
            return [] if complete else [merkle_root(d)]
        k = _split(n)
        if m <= k:
            return [*sub(m, d[:k], complete), merkle_root(d[k:])]
        return [*sub(m - k, d[k:], False), merkle_root(d[:k])]

    return sub(first_size, leaf_hashes, True)


def verify_inclusion(
    leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Verify an inclusion proof for a leaf *hash* (RFC 9162 §2.1.3.2)."""
    if index >= tree_size or len(proof) > MAX_PROOF_LEN or any(len(p) != 32 for p in proof):
        return False
    fn, sn, r = index, tree_size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    first_size: int,
    second_size: int,
    proof: Sequence[bytes],
    first_root: bytes,
    second_root: bytes,
) -> bool:
    """Verify that the tree of ``second_size`` extends that of ``first_size`` (§2.1.4.2)."""
    if len(proof) > MAX_PROOF_LEN or any(len(p) != 32 for p in proof):
        return False
    if first_size < 1 or first_size > second_size:
        return False
    if first_size == second_size:
        return not proof and first_root == second_root
    path = list(proof)
    if first_size & (first_size - 1) == 0:  # exact power of two
        path.insert(0, first_root)
    if not path:
        return False
    fn, sn = first_size - 1, second_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0


@dataclass(frozen=True)
class SignedTreeHead:
    """A log tree head and its signature."""

    tree_size: int
    timestamp_ms: int
    root_hash: bytes
    signature: bytes

    def signed_bytes(self) -> bytes:
        """The byte string the log key signs."""
        return TREE_HEAD_CONTEXT + u64(self.tree_size) + u64(self.timestamp_ms) + self.root_hash

    def verify(self, pinned_log_key: bytes) -> bool:
        """Check the signature against the pinned 32-byte Ed25519 log key."""
        return len(self.root_hash) == 32 and verify_signature(
            pinned_log_key, self.signature, self.signed_bytes()
        )


def verify_binding(
    *,
    pinned_log_key: bytes,
    head: SignedTreeHead,
    action: LogAction,
    account_id: str,
    device_id: str,
    identity: IdentityKey,
    leaf_timestamp_ms: int,
    leaf_index: int,
    audit_path: Sequence[bytes],
) -> bool:
    """All checks a client makes before trusting ``identity`` for (account, device).

    Returns:
        True only if the head is signed by the pinned key, the leaf is an ADD or ROTATE of
        exactly this binding, and it is included in the head's tree.
    """
    if action not in (LogAction.ADD, LogAction.ROTATE) or not head.verify(pinned_log_key):
        return False
    leaf = encode_leaf(action, account_id, device_id, identity, leaf_timestamp_ms)
    return verify_inclusion(leaf_hash(leaf), leaf_index, head.tree_size, audit_path, head.root_hash)
