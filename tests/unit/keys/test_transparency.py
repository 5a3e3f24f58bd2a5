"""The server's Merkle log against two independent verifiers (client library, conclave_crypto).

Trees are built with the keys server's code (:mod:`conclave_keys.transparency`); proofs are
checked with :mod:`conclave_client.transparency` and, as a third opinion, with the
reference generators in :mod:`conclave_crypto.transparency`.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from conclave_client import transparency as client
from conclave_crypto import transparency as reference
from conclave_crypto.keys import IdentityKey
from conclave_keys.transparency import (
    InMemoryTree,
    LeafContent,
    LogAction,
    TreeHeadSigner,
    consistency_ranges,
    inclusion_ranges,
    leaf_hash,
    merkle_root,
    range_nodes,
    roots_at_sizes,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

MAX_LEAVES = 300
# One shared tree, grown once: every prefix of it is also a valid tree.
_TREE = InMemoryTree()
_HASHES = [leaf_hash(i.to_bytes(4, "big")) for i in range(MAX_LEAVES)]
for _h in _HASHES:
    _TREE.append(_h)


def _flip(proof: list[bytes], which: int, bit: int) -> list[bytes]:
    out = list(proof)
    target = bytearray(out[which])
    target[bit // 8] ^= 1 << (bit % 8)
    out[which] = bytes(target)
    return out


@st.composite
def _index_and_size(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(1, MAX_LEAVES))
    return draw(st.integers(0, size - 1)), size


@st.composite
def _two_sizes(draw: st.DrawFn) -> tuple[int, int]:
    second = draw(st.integers(1, MAX_LEAVES))
    return draw(st.integers(1, second)), second


@settings(max_examples=300, deadline=None)
@given(_index_and_size())
def test_every_inclusion_proof_verifies(case: tuple[int, int]) -> None:
    """Any inclusion proof the server produces verifies and equals RFC 9162's PATH."""
    index, size = case
    proof = _TREE.inclusion_proof(index, size)
    assert proof == reference.inclusion_proof(index, _HASHES[:size])
    assert _TREE.root(size) == merkle_root(_HASHES[:size])
    assert client.verify_inclusion(_HASHES[index], index, size, proof, _TREE.root(size))


@settings(max_examples=300, deadline=None)
@given(_two_sizes())
def test_every_consistency_proof_verifies(case: tuple[int, int]) -> None:
    """Any consistency proof the server produces verifies and equals RFC 9162's PROOF."""
    first, second = case
    proof = _TREE.consistency_proof(first, second) if first != second else []
    assert proof == reference.consistency_proof(first, _HASHES[:second])
    assert client.verify_consistency(first, second, proof, _TREE.root(first), _TREE.root(second))


@settings(max_examples=300, deadline=None)
@given(_index_and_size(), st.data())
def test_tampered_inclusion_proofs_fail(case: tuple[int, int], data: st.DataObject) -> None:
    """Index +-1, size *2 and /2, wrong root, any flipped bit, truncation or an extra hash fail."""
    index, size = case
    proof = _TREE.inclusion_proof(index, size)
    root = _TREE.root(size)
    leaf = _HASHES[index]
    bad: list[tuple[int, int, list[bytes], bytes]] = [
        (index, size, proof, _TREE.root(size + 1) if size < MAX_LEAVES else b"\0" * 32),
        (index, size, [*proof, leaf], root),
    ]
    if size > 1:
        bad.append((index + 1, size, proof, root))
        bad.append((index - 1, size, proof, root))
        bad.append((index, size * 2, proof, root))
        bad.append((index, size // 2, proof, root))
    if proof:
        which = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        bad.append((index, size, _flip(proof, which, bit), root))
        bad.append((index, size, proof[:-1], root))
    for i, s, p, r in bad:
        if (i, s, p, r) == (index, size, proof, root):
            continue
        if 0 <= i < s and s <= MAX_LEAVES and p == _TREE.inclusion_proof(i, s):
            continue  # happens to be another valid proof (e.g. same path shape)
        assert not client.verify_inclusion(leaf, i, s, p, r), (i, s)


@settings(max_examples=300, deadline=None)
@given(_two_sizes(), st.data())
def test_tampered_consistency_proofs_fail(case: tuple[int, int], data: st.DataObject) -> None:
    """Sizes +-1, *2, /2, swapped or wrong roots, a flipped bit, truncation, extra hash fail."""
    first, second = case
    if first == second:
        return
    proof = _TREE.consistency_proof(first, second)
    r1, r2 = _TREE.root(first), _TREE.root(second)
    which = data.draw(st.integers(0, len(proof) - 1))
    bit = data.draw(st.integers(0, 255))
    bad = [
        (first, second, _flip(proof, which, bit), r1, r2),
        (first, second, proof[:-1], r1, r2),
        (first, second, [*proof, r2], r1, r2),
        (first, second, proof, r2, r1),
        (first, second, proof, r1, _flip([r2], 0, bit)[0]),
        (first + 1, second, proof, r1, r2),
        (first - 1, second, proof, r1, r2),
        (first, second * 2, proof, r1, r2),
        (first, second // 2, proof, r1, r2),
    ]
    for f, s, p, a, b in bad:
        assert not client.verify_consistency(f, s, p, a, b), (f, s)


def test_ranges_are_aligned_for_all_small_trees() -> None:
    """Every range the proofs need decomposes into aligned perfect subtrees (no ValueError)."""
    for size in range(1, 130):
        for index in range(size):
            for start, end in inclusion_ranges(index, size):
                range_nodes(start, end)
        for first in range(1, size + 1):
            for start, end in consistency_ranges(first, size):
                range_nodes(start, end)
    with pytest.raises(ValueError, match="not aligned"):
        range_nodes(1, 3)


def test_rebuild_matches_every_prefix_root() -> None:
    """The one-pass rebuild gives the same root as the recursion for every prefix."""
    roots = roots_at_sizes(_HASHES, range(MAX_LEAVES + 1))
    for size in range(MAX_LEAVES + 1):
        assert roots[size] == _TREE.root(size)


def _leaf() -> tuple[LeafContent, IdentityKey]:
    identity = IdentityKey(signing=bytes(range(32)), dh=bytes(range(32, 64)))
    content = LeafContent(
        LogAction.ROTATE,
        "5b7f2d7e-8c3a-4d0e-9a53-3c1f0b5d2e71",
        "0c9e4f0a-1b2c-4d3e-8f70-112233445566",
        identity.signing,
        identity.dh,
        1_764_000_000_123,
    )
    return content, identity


def test_leaf_encoding_matches_client_and_crypto_library() -> None:
    """Server, client and conclave_crypto encode a KT leaf byte for byte the same way."""
    content, identity = _leaf()
    encoded = content.encode()
    assert encoded == client.encode_leaf(
        2,
        content.account_id,
        content.device_id,
        content.signing_public_key,
        content.agreement_public_key,
        content.timestamp_ms,
    )
    assert encoded == reference.encode_leaf(
        reference.LogAction.ROTATE,
        content.account_id,
        content.device_id,
        identity,
        content.timestamp_ms,
    )


def test_signed_head_verifies_only_with_the_log_key() -> None:
    """A server-signed head verifies with the pinned key, fails with another or if altered."""
    signer = TreeHeadSigner(Ed25519PrivateKey.generate())
    head = signer.sign(42, 1_764_000_000_000, _TREE.root(42))
    seen = client.TreeHead(head.tree_size, head.root_hash, head.timestamp_ms, head.key_id,
                           head.signature)  # fmt: skip
    assert client.verify_tree_head(seen, signer.public_key)
    assert reference.SignedTreeHead(42, head.timestamp_ms, head.root_hash, head.signature).verify(
        signer.public_key
    )
    other = TreeHeadSigner(Ed25519PrivateKey.generate())
    assert not client.verify_tree_head(seen, other.public_key)
    for forged in (
        client.TreeHead(43, head.root_hash, head.timestamp_ms, head.key_id, head.signature),
        client.TreeHead(42, _TREE.root(41), head.timestamp_ms, head.key_id, head.signature),
        client.TreeHead(42, head.root_hash, head.timestamp_ms + 1, head.key_id, head.signature),
    ):
        assert not client.verify_tree_head(forged, signer.public_key)
    assert "kt-" in repr(signer) and "private" not in repr(signer).lower()


def _head(signer: TreeHeadSigner, tree: InMemoryTree, size: int, ts: int = 1) -> client.TreeHead:
    h = signer.sign(size, ts, tree.root(size))
    return client.TreeHead(h.tree_size, h.root_hash, h.timestamp_ms, h.key_id, h.signature)


def test_head_store_accepts_consistent_growth_and_persists(tmp_path: Path) -> None:
    """The store trusts the first head, then only consistent extensions, in a 0600 file."""
    signer = TreeHeadSigner(Ed25519PrivateKey.generate())
    store = client.TrustedHeadStore(tmp_path / "home" / "kt-heads.json")
    assert store.last("keys:1") is None
    store.update("keys:1", _head(signer, _TREE, 10), [], signer.public_key)
    proof = _TREE.consistency_proof(10, 57)
    store.update("keys:1", _head(signer, _TREE, 57, 2), proof, signer.public_key)
    same = store.update("keys:1", _head(signer, _TREE, 57, 2), [], signer.public_key)
    assert same.tree_size == 57
    reopened = client.TrustedHeadStore(tmp_path / "home" / "kt-heads.json")
    last = reopened.last("keys:1")
    assert last is not None and last.root_hash == _TREE.root(57)
    assert stat.S_IMODE((tmp_path / "home" / "kt-heads.json").stat().st_mode) == 0o600
    assert json.loads((tmp_path / "home" / "kt-heads.json").read_text())["version"] == 1


def test_head_store_default_location_is_conclave_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a path the store lives in $CONCLAVE_HOME, so users do not share state."""
    monkeypatch.setenv("CONCLAVE_HOME", str(tmp_path / "alice"))
    assert client.TrustedHeadStore().path == tmp_path / "alice" / "kt-heads.json"


def test_head_store_refuses_rollback_fork_and_forgery(tmp_path: Path) -> None:
    """A smaller head, a different root, an inconsistent extension or a bad signature fail."""
    signer = TreeHeadSigner(Ed25519PrivateKey.generate())
    store = client.TrustedHeadStore(tmp_path / "kt-heads.json")
    store.update("k", _head(signer, _TREE, 100), [], signer.public_key)
    with pytest.raises(client.RollbackError):
        store.update("k", _head(signer, _TREE, 99), [], signer.public_key)
    # A fork: the server signs a tree of the same size with different leaves.
    fork = InMemoryTree()
    for h in _HASHES[:99]:
        fork.append(h)
    fork.append(leaf_hash(b"substituted key"))
    fork.append(leaf_hash(b"more"))
    with pytest.raises(client.EquivocationError):
        store.update("k", _head(signer, fork, 100), [], signer.public_key)
    # The forked tree grown further cannot be proven consistent with the remembered head.
    with pytest.raises(client.EquivocationError):
        store.update("k", _head(signer, fork, 101), fork.consistency_proof(100, 101),
                     signer.public_key)  # fmt: skip
    # A head signed by anyone but the pinned log key is refused outright.
    impostor = TreeHeadSigner(Ed25519PrivateKey.generate())
    with pytest.raises(client.TransparencyError):
        store.update("k", _head(impostor, _TREE, 200), _TREE.consistency_proof(100, 200),
                     signer.public_key)  # fmt: skip
    last = store.last("k")
    assert last is not None and last.tree_size == 100 and last.root_hash == _TREE.root(100)
