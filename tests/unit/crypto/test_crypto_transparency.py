"""Key-transparency Merkle proofs (RFC 9162) and binding verification."""

from __future__ import annotations

import pytest
from conclave_crypto.keys import IdentityKeyPair
from conclave_crypto.transparency import (
    EMPTY_ROOT,
    LogAction,
    SignedTreeHead,
    consistency_proof,
    encode_leaf,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    verify_binding,
    verify_consistency,
    verify_inclusion,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# RFC 6962 reference data (as published with Certificate Transparency's test suites):
# leaves, and the root for each tree size 1..8.
CT_LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243",
             "5051525354555657", "606162636465666768696a6b6c6d6e6f")]  # fmt: skip
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip


def test_merkle_roots_match_rfc6962_reference() -> None:
    """Our Merkle tree hash matches the RFC 6962 reference roots for sizes 0..8."""
    hashes = [leaf_hash(x) for x in CT_LEAVES]
    assert merkle_root([]) == EMPTY_ROOT
    for n in range(1, 9):
        assert merkle_root(hashes[:n]).hex() == CT_ROOTS[n - 1]


@pytest.mark.parametrize(("index", "size", "path"), CT_INCLUSION)
def test_inclusion_proofs_match_reference(index: int, size: int, path: list[str]) -> None:
    """Inclusion proofs equal the reference audit paths and verify."""
    hashes = [leaf_hash(x) for x in CT_LEAVES]
    proof = inclusion_proof(index, hashes[:size])
    assert [p.hex() for p in proof] == path
    root = bytes.fromhex(CT_ROOTS[size - 1])
    assert verify_inclusion(hashes[index], index, size, proof, root)


def test_every_inclusion_and_consistency_proof_verifies_and_tampering_fails() -> None:
    """All proofs for trees up to 20 leaves verify; wrong index/size/hash never does."""
    hashes = [leaf_hash(bytes([i, i * 7 % 256])) for i in range(20)]
    for n in range(1, len(hashes) + 1):
        root = merkle_root(hashes[:n])
        for i in range(n):
            proof = inclusion_proof(i, hashes[:n])
            assert verify_inclusion(hashes[i], i, n, proof, root)
            assert not verify_inclusion(hashes[i], i + 1, n, proof, root)
            assert not verify_inclusion(hashes[(i + 1) % n], i, n, proof, root) or n == 1
            if proof:
                assert not verify_inclusion(hashes[i], i, n, proof[:-1], root)
        for m in range(1, n + 1):
            old = merkle_root(hashes[:m])
            proof = consistency_proof(m, hashes[:n])
            assert verify_consistency(m, n, proof, old, root)
            if m < n:
                assert not verify_consistency(m, n, proof, hashes[0], root) or m == 1
                assert not verify_consistency(m, n, proof, old, hashes[0])
                assert not verify_consistency(m, n, proof[:-1], old, root)


def test_forked_log_fails_consistency() -> None:
    """A log that rewrote history cannot prove consistency with a remembered head."""
    hashes = [leaf_hash(bytes([i])) for i in range(10)]
    forked = [*hashes[:3], leaf_hash(b"evil"), *hashes[4:]]
    old_root = merkle_root(hashes[:5])
    assert not verify_consistency(
        5, 10, consistency_proof(5, forked), old_root, merkle_root(forked)
    )


def test_verify_binding_end_to_end() -> None:
    """A client accepts a key only with a signed head and an inclusion proof of its leaf."""
    log_key = Ed25519PrivateKey.generate()
    pinned = log_key.public_key().public_bytes_raw()
    ident = IdentityKeyPair.generate().public
    leaves = [
        encode_leaf(LogAction.ADD, f"acct{i}", "dev", IdentityKeyPair.generate().public, i)
        for i in range(6)
    ]
    leaves.append(encode_leaf(LogAction.ADD, "alice", "d1", ident, 1_700_000_000_000))
    hashes = [leaf_hash(x) for x in leaves]
    root = merkle_root(hashes)
    unsigned = SignedTreeHead(len(leaves), 1_700_000_001_000, root, b"")
    head = SignedTreeHead(
        unsigned.tree_size, unsigned.timestamp_ms, root, log_key.sign(unsigned.signed_bytes())
    )
    kwargs = {
        "pinned_log_key": pinned,
        "head": head,
        "action": LogAction.ADD,
        "account_id": "alice",
        "device_id": "d1",
        "identity": ident,
        "leaf_timestamp_ms": 1_700_000_000_000,
        "leaf_index": 6,
        "audit_path": inclusion_proof(6, hashes),
    }
    assert verify_binding(**kwargs)  # type: ignore[arg-type]
    other = IdentityKeyPair.generate().public
    for change in (
        {"identity": other},
        {"device_id": "d2"},
        {"leaf_index": 5},
        {"action": LogAction.REMOVE},
        {"pinned_log_key": Ed25519PrivateKey.generate().public_key().public_bytes_raw()},
    ):
        assert not verify_binding(**{**kwargs, **change})  # type: ignore[arg-type]
