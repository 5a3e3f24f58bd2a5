"""Key-transparency Merkle log: RFC 9162 §2.1 hashing, proofs and signed tree heads.

Server side only (servers never import the client library; the client's independent
verifier is ``conclave_client.transparency``, and tests cross-check the two).

Storage model: a tree of ``n`` leaves is described by its *perfect subtrees*. A node
``(level, index)`` is the hash of the perfect subtree over leaves
``[index * 2**level, (index + 1) * 2**level)``; level 0 nodes are the leaf hashes. Once a
perfect subtree is complete its hash never changes (the log is append-only), so each node is
written exactly once, when its last leaf is appended (on average one interior node per leaf).

Every hash the RFC's recursive definitions need is the Merkle tree hash (MTH) of a range
``[start, end)`` that the recursion produces; such a range decomposes into at most
``log2(n) + 1`` aligned perfect subtrees (the binary digits of ``end - start``), and its MTH
is their right fold (RFC 9162 §2.1.1 splits at the largest power of two below the size,
which is exactly the first of those subtrees). So a root, an inclusion proof or a
consistency proof costs O(log² n) node reads in the worst case, in one query, whatever the
log size, and computing them is independent of where the nodes are stored
(:class:`InMemoryTree` for tests and tools, Postgres in :mod:`conclave_keys.store`).

Encodings (keys.proto, docs/api.md)::

    leaf       = "Conclave/v1/KT/Leaf" || u8 action || lp(account_id) || lp(device_id)
                 || signing_public_key (32) || agreement_public_key (32) || u64 timestamp_ms
    leaf hash  = SHA-256(0x00 || leaf);  node hash = SHA-256(0x01 || left || right)
    tree head  = Ed25519(log key, "Conclave/v1/KT/TreeHead" || u64 tree_size
                 || u64 timestamp_ms || root_hash)
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

LEAF_CONTEXT = b"Conclave/v1/KT/Leaf"
TREE_HEAD_CONTEXT = b"Conclave/v1/KT/TreeHead"
EMPTY_ROOT = hashlib.sha256(b"").digest()
HASH_SIZE = 32

# (level, index) of a perfect subtree; see the module docstring.
NodeRef = tuple[int, int]
# [start, end) leaf range whose MTH a proof or root needs.
Range = tuple[int, int]


class LogAction(enum.IntEnum):
    """What a leaf records (numbers as in ``conclave.keys.v1.LogAction``)."""

    ADD = 1
    ROTATE = 2
    REMOVE = 3


@dataclass(frozen=True)
class LeafContent:
    """The content of one log leaf (what is hashed).

    Attributes:
        action: ADD, ROTATE or REMOVE.
        account_id: Account id (UUID string).
        device_id: Device id (UUID string).
        signing_public_key: The identity's Ed25519 half (32 bytes).
        agreement_public_key: The identity's X25519 half (32 bytes).
        timestamp_ms: When the leaf was appended, ms since the epoch.
    """

    action: LogAction
    account_id: str
    device_id: str
    signing_public_key: bytes
    agreement_public_key: bytes
    timestamp_ms: int

    def encode(self) -> bytes:
        """The leaf bytes as fixed by keys.proto."""
        account = self.account_id.encode()
        device = self.device_id.encode()
        return b"".join(
            (
                LEAF_CONTEXT,
                struct.pack(">B", int(self.action)),
                struct.pack(">I", len(account)),
                account,
                struct.pack(">I", len(device)),
                device,
                self.signing_public_key,
                self.agreement_public_key,
                struct.pack(">Q", self.timestamp_ms),
            )
        )

    def hash(self) -> bytes:
        """The RFC 9162 leaf hash of :meth:`encode`."""
        return leaf_hash(self.encode())


def leaf_hash(leaf: bytes) -> bytes:
    """RFC 9162 §2.1.1 leaf hash: SHA-256(0x00 || leaf)."""
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def tree_head_message(tree_size: int, timestamp_ms: int, root_hash: bytes) -> bytes:
    """The byte string the log key signs for a tree head."""
    return TREE_HEAD_CONTEXT + struct.pack(">QQ", tree_size, timestamp_ms) + root_hash


def _split(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (``n >= 2``), RFC 9162 §2.1.1."""
    return 1 << ((n - 1).bit_length() - 1)


def range_nodes(start: int, end: int) -> list[NodeRef]:
    """The perfect subtrees that make up ``[start, end)``, left to right, largest first.

    Raises:
        ValueError: The range is empty or not aligned the way RFC 9162's recursion aligns
            every range it produces (a bug in the caller, never client input).
    """
    if end <= start:
        raise ValueError(f"empty range [{start}, {end})")
    nodes: list[NodeRef] = []
    position = start
    remaining = end - start
    for level in range(remaining.bit_length() - 1, -1, -1):
        if remaining >> level & 1:
            if position % (1 << level):
                raise ValueError(f"range [{start}, {end}) is not aligned")
            nodes.append((level, position >> level))
            position += 1 << level
    return nodes


def range_hash(start: int, end: int, nodes: Mapping[NodeRef, bytes]) -> bytes:
    """MTH of leaves ``[start, end)`` from its perfect subtrees (right fold)."""
    refs = range_nodes(start, end)
    result = nodes[refs[-1]]
    for ref in reversed(refs[:-1]):
        result = node_hash(nodes[ref], result)
    return result


def inclusion_ranges(index: int, tree_size: int) -> list[Range]:
    """Ranges whose MTHs form PATH(index, D[tree_size]) (RFC 9162 §2.1.3.1), leaf first.

    Raises:
        ValueError: ``index`` is not below ``tree_size``.
    """
    if not 0 <= index < tree_size:
        raise ValueError(f"leaf {index} is not in a tree of size {tree_size}")
    top_down: list[Range] = []
    lo, hi = 0, tree_size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            top_down.append((lo + k, hi))
            hi = lo + k
        else:
            top_down.append((lo, lo + k))
            lo += k
    return top_down[::-1]


def consistency_ranges(first_size: int, second_size: int) -> list[Range]:
    """Ranges whose MTHs form PROOF(first, D[second]) (RFC 9162 §2.1.4.1).

    Raises:
        ValueError: Unless ``0 < first_size <= second_size``.
    """
    if not 0 < first_size <= second_size:
        raise ValueError(f"no consistency proof from {first_size} to {second_size}")
    top_down: list[Range] = []
    lo, hi, m, complete = 0, second_size, first_size, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            top_down.append((lo + k, hi))
            hi = lo + k
        else:
            top_down.append((lo, lo + k))
            m -= k
            lo += k
            complete = False
    head: list[Range] = [] if complete else [(lo, hi)]
    return head + top_down[::-1]


def nodes_for(ranges: Iterable[Range]) -> set[NodeRef]:
    """Every node needed to hash ``ranges`` (to fetch them in one go)."""
    return {ref for start, end in ranges for ref in range_nodes(start, end)}


def new_nodes_after_append(leaf_index: int) -> list[tuple[NodeRef, NodeRef, NodeRef]]:
    """Interior nodes completed by appending leaf ``leaf_index``, lowest first.

    Returns:
        ``(node, left_child, right_child)`` triples; each node's right child is either the
        new leaf or the node before it in the list.
    """
    out: list[tuple[NodeRef, NodeRef, NodeRef]] = []
    count = leaf_index + 1
    level = 1
    while count % (1 << level) == 0:
        index = (count >> level) - 1
        out.append(((level, index), (level - 1, 2 * index), (level - 1, 2 * index + 1)))
        level += 1
    return out


def merkle_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes by the RFC's literal recursion (reference for rebuilds/tests)."""
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaf_hashes[0]
    k = _split(n)
    return node_hash(merkle_root(leaf_hashes[:k]), merkle_root(leaf_hashes[k:]))


def roots_at_sizes(leaf_hashes: Iterable[bytes], sizes: Iterable[int]) -> dict[int, bytes]:
    """Roots of the prefixes of ``leaf_hashes`` at each of ``sizes``, in one O(n) pass.

    Used to check that the stored leaves rebuild every signed head. Keeps the compact
    range (the perfect subtrees of the prefix, at most log2(n) of them) as it goes.
    """
    wanted = set(sizes)
    roots: dict[int, bytes] = {}
    if 0 in wanted:
        roots[0] = EMPTY_ROOT
    stack: list[tuple[int, bytes]] = []  # (level, hash), levels strictly decreasing
    for count, leaf in enumerate(leaf_hashes, start=1):
        level, value = 0, leaf
        while stack and stack[-1][0] == level:
            _, left = stack.pop()
            value = node_hash(left, value)
            level += 1
        stack.append((level, value))
        if count in wanted:
            root = stack[-1][1]
            for _, left in reversed(stack[:-1]):
                root = node_hash(left, root)
            roots[count] = root
    return roots


class InMemoryTree:
    """An append-only tree holding every perfect-subtree node in a dict.

    The same node arithmetic as the Postgres-backed log; used by tests and benchmarks.
    """

    def __init__(self) -> None:
        self.nodes: dict[NodeRef, bytes] = {}
        self.size = 0

    def append(self, leaf_hash_: bytes) -> int:
        """Appends a leaf hash; returns its index."""
        index = self.size
        self.nodes[(0, index)] = leaf_hash_
        for node, left, right in new_nodes_after_append(index):
            self.nodes[node] = node_hash(self.nodes[left], self.nodes[right])
        self.size += 1
        return index

    def root(self, tree_size: int | None = None) -> bytes:
        """Root of the first ``tree_size`` leaves (default: all)."""
        size = self.size if tree_size is None else tree_size
        return EMPTY_ROOT if size == 0 else range_hash(0, size, self.nodes)

    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        """Audit path of leaf ``index`` in the tree of ``tree_size`` leaves."""
        return [range_hash(s, e, self.nodes) for s, e in inclusion_ranges(index, tree_size)]

    def consistency_proof(self, first_size: int, second_size: int) -> list[bytes]:
        """Consistency proof from ``first_size`` to ``second_size``."""
        return [
            range_hash(s, e, self.nodes) for s, e in consistency_ranges(first_size, second_size)
        ]


@dataclass(frozen=True)
class SignedHead:
    """A signed tree head as stored and served.

    Attributes:
        tree_size: Number of leaves.
        root_hash: MTH of those leaves (32 bytes).
        timestamp_ms: Signing time, ms since the epoch.
        key_id: Id of the log key that signed it.
        signature: Ed25519 signature over :func:`tree_head_message`.
    """

    tree_size: int
    root_hash: bytes
    timestamp_ms: int
    key_id: str
    signature: bytes


class TreeHeadSigner:
    """Signs tree heads with the log's Ed25519 key.

    The key id is derived from the public key (``kt-`` + 16 hex digits of its SHA-256), so
    a rotated key gets a new id without any configuration.

    Args:
        private_key: The log signing key. Never logged, never stored in the database.
    """

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = "kt-" + hashlib.sha256(self.public_key).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"TreeHeadSigner(key_id={self.key_id!r})"

    def sign(self, tree_size: int, timestamp_ms: int, root_hash: bytes) -> SignedHead:
        """Returns the signed head for a tree state."""
        signature = self._key.sign(tree_head_message(tree_size, timestamp_ms, root_hash))
        return SignedHead(tree_size, root_hash, timestamp_ms, self.key_id, signature)
