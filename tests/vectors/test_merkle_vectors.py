"""RFC 6962/9162 Merkle vectors against the keys server's tree and the client verifier.

Source: the Certificate Transparency reference data as published in transparency-dev/merkle
(``testonly/constants.go`` for leaves, node hashes and roots; ``proof/verify_test.go`` for
inclusion and consistency proofs, whose leaf numbers there are 1-based). The mutation set
follows that file's ``corruptInclusionProof`` / ``corruptConsistencyProof``.
"""

from __future__ import annotations

import hashlib

import pytest
from conclave_client.transparency import leaf_hash as client_leaf_hash
from conclave_client.transparency import verify_consistency, verify_inclusion
from conclave_keys.transparency import (
    EMPTY_ROOT,
    InMemoryTree,
    leaf_hash,
    merkle_root,
    roots_at_sizes,
)

LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243",
          "5051525354555657", "606162636465666768696a6b6c6d6e6f")]  # fmt: skip
# Root hash by tree size 0..8.
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# Hashes of the complete subtrees of the 8-leaf tree, by level.
NODES = [
    ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
     "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
     "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
     "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
     "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
     "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
     "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
     "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"],
    ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
     "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
     "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
     "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"],
    ["d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
     "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
    ["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
]  # fmt: skip
# (leaf index, tree size, audit path): verify_test.go's 1-based leaves minus one.
INCLUSION = [
    (0, 1, []),
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip
# (first size, second size, proof).
CONSISTENCY = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def _tree() -> InMemoryTree:
    tree = InMemoryTree()
    for leaf in LEAVES:
        tree.append(leaf_hash(leaf))
    return tree


def _root(size: int) -> bytes:
    return bytes.fromhex(ROOTS[size])


def test_empty_root_and_leaf_hashing() -> None:
    """The empty tree is SHA-256(""), and server and client hash leaves identically."""
    assert EMPTY_ROOT == hashlib.sha256(b"").digest() == _root(0)
    for leaf in LEAVES:
        assert leaf_hash(leaf) == client_leaf_hash(leaf)


def test_roots_for_every_size() -> None:
    """The incremental tree, the literal recursion and the one-pass rebuild give the CT roots."""
    tree = _tree()
    hashes = [leaf_hash(leaf) for leaf in LEAVES]
    rebuilt = roots_at_sizes(hashes, range(9))
    for size in range(9):
        assert tree.root(size) == _root(size), size
        assert merkle_root(hashes[:size]) == _root(size), size
        assert rebuilt[size] == _root(size), size


def test_stored_nodes_match_reference_subtrees() -> None:
    """Every complete-subtree node the server stores equals the published node hash."""
    tree = _tree()
    for level, row in enumerate(NODES):
        for index, expected in enumerate(row):
            assert tree.nodes[(level, index)].hex() == expected, (level, index)
    assert len(tree.nodes) == sum(len(row) for row in NODES)


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_inclusion_vectors(index: int, size: int, path: list[str]) -> None:
    """The server produces the published audit path and the client accepts it."""
    proof = [bytes.fromhex(h) for h in path]
    assert _tree().inclusion_proof(index, size) == proof
    assert verify_inclusion(leaf_hash(LEAVES[index]), index, size, proof, _root(size))


@pytest.mark.parametrize(("first", "second", "path"), CONSISTENCY)
def test_consistency_vectors(first: int, second: int, path: list[str]) -> None:
    """The server produces the published consistency proof and the client accepts it."""
    proof = [bytes.fromhex(h) for h in path]
    assert _tree().consistency_proof(first, second) == proof
    assert verify_consistency(first, second, proof, _root(first), _root(second))


def _flip(proof: list[bytes], i: int) -> list[bytes]:
    out = list(proof)
    out[i] = bytes([out[i][0] ^ 8]) + out[i][1:]
    return out


@pytest.mark.parametrize(("index", "size", "path"), [v for v in INCLUSION if v[2]])
def test_inclusion_mutations_rejected(index: int, size: int, path: list[str]) -> None:
    """Every corruption from verify_test.go's corruptInclusionProof is rejected."""
    proof = [bytes.fromhex(h) for h in path]
    root, leaf = _root(size), leaf_hash(LEAVES[index])
    probes: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
        (index - 1, size, root, leaf, proof),
        (index + 1, size, root, leaf, proof),
        (index ^ 2, size, root, leaf, proof),
        (index, size * 2, root, leaf, proof),
        (index, size // 2, root, leaf, proof),
        (index, size, root, leaf_hash(b"WrongLeaf"), proof),
        (index, size, EMPTY_ROOT, leaf, proof),
        (index, size, SOME_HASH, leaf, proof),
        (index, size, root, leaf, [*proof, b""]),
        (index, size, root, leaf, [*proof, root]),
        (index, size, root, leaf, [b"", *proof]),
        (index, size, root, leaf, [root, *proof]),
        (index, size, root, leaf, proof[:-1]),
    ]
    probes += [(index, size, root, leaf, _flip(proof, i)) for i in range(len(proof))]
    if len(proof) > 1:
        probes.append((index, size, root, leaf, [proof[0], SOME_HASH, *proof[1:]]))
    for probe in probes:
        assert not verify_inclusion(probe[3], probe[0], probe[1], probe[4], probe[2]), probe


@pytest.mark.parametrize(("first", "second", "path"), [v for v in CONSISTENCY if v[2]])
def test_consistency_mutations_rejected(first: int, second: int, path: list[str]) -> None:
    """Every corruption from verify_test.go's corruptConsistencyProof is rejected."""
    proof = [bytes.fromhex(h) for h in path]
    r1, r2 = _root(first), _root(second)
    wrong = hashlib.sha256(b"WrongRoot").digest()
    probes: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
        (first - 1, second, r1, r2, proof),
        (first + 1, second, r1, r2, proof),
        (first ^ 2, second, r1, r2, proof),
        (first, second * 2, r1, r2, proof),
        (first, second // 2, r1, r2, proof),
        (first, second, wrong, r2, proof),
        (first, second, r1, wrong, proof),
        (first, second, r2, r1, proof),
        (first, second, r1, r2, []),
        (first, second, r1, r2, [*proof, b""]),
        (first, second, r1, r2, [*proof, r1]),
        (first, second, r1, r2, [*proof, r2]),
        (first, second, r1, r2, [b"", *proof]),
        (first, second, r1, r2, [r1, *proof]),
        (first, second, r1, r2, [r2, *proof]),
        (first, second, r1, r2, [proof[0], *proof]),
        (first, second, r1, r2, proof[:-1]),
    ]
    probes += [(first, second, r1, r2, _flip(proof, i)) for i in range(len(proof))]
    for probe in probes:
        assert not verify_consistency(*probe[:2], probe[4], probe[2], probe[3]), probe
