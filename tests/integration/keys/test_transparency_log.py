"""The key-transparency log as served, checked with the client library's verifier."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from pathlib import Path

import grpc
import pytest
from conclave.common.v1 import types_pb2
from conclave.events.v1 import events_pb2
from conclave.keys.v1 import keys_pb2
from conclave_client import transparency as kt
from conclave_keys.manager import KeyManager
from conclave_keys.transparency import TreeHeadSigner

from tests.integration.keys.conftest import Device, KeysHarness

pytestmark = pytest.mark.integration


async def _fails(call: Awaitable[object], code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()


async def _pinned(keys: KeysHarness) -> bytes:
    """The log key as a client pins it from configuration (and as the server announces it)."""
    pinned = TreeHeadSigner(keys.config.tree_signing_key).public_key
    reply = await keys.stub.GetSignedTreeHead(keys_pb2.GetSignedTreeHeadRequest())
    assert reply.log_public_key == pinned
    return pinned


async def _never_publish(subject: str, payload: bytes, event_id: str) -> None:
    raise AssertionError("auditing must not publish events")


def _auditor(keys: KeysHarness) -> KeyManager:
    return KeyManager(keys.runtime.resources, keys.config, _never_publish)


async def _verify_binding(keys: KeysHarness, viewer: Device, owner: Device) -> kt.TreeHead:
    reply = await keys.stub.GetInclusionProof(
        keys_pb2.GetInclusionProofRequest(
            binding=keys_pb2.LogBinding(
                account_id=owner.account_id,
                device_id=owner.device_id,
                identity_key=owner.identity(),
            )
        ),
        metadata=keys.auth(viewer),
    )
    identity = owner.identity()
    return kt.verify_binding(
        reply,
        await _pinned(keys),
        account_id=owner.account_id,
        device_id=owner.device_id,
        signing_public_key=identity.signing_public_key,
        agreement_public_key=identity.agreement_public_key,
    )


async def test_every_publication_is_provably_in_the_log(keys: KeysHarness) -> None:
    """Each published binding has a valid inclusion proof under a head signed by the log key."""
    owners = [Device() for _ in range(5)]
    published = [await keys.publish(d) for d in owners]
    viewer = Device()
    for owner, reply in zip(owners, published, strict=True):
        head = kt.TreeHead.from_proto(reply.tree_head)
        assert kt.verify_tree_head(head, await _pinned(keys))
        verified = await _verify_binding(keys, viewer, owner)
        assert verified.tree_size >= reply.leaf_index + 1
    # By index, against an older head too.
    first = published[0]
    proof = await keys.stub.GetInclusionProof(
        keys_pb2.GetInclusionProofRequest(
            leaf_index=first.leaf_index, tree_size=first.tree_head.tree_size
        ),
        metadata=keys.auth(viewer),
    )
    leaf = proof.leaf
    encoded = kt.encode_leaf(
        leaf.action,
        leaf.account_id,
        leaf.device_id,
        leaf.identity_key.signing_public_key,
        leaf.identity_key.agreement_public_key,
        leaf.timestamp.seconds * 1000 + leaf.timestamp.nanos // 1_000_000,
    )
    assert leaf.action == keys_pb2.LOG_ACTION_ADD and leaf.account_id == owners[0].account_id
    assert kt.verify_inclusion(
        kt.leaf_hash(encoded),
        proof.leaf_index,
        first.tree_head.tree_size,
        list(proof.audit_path),
        first.tree_head.root_hash,
    )


async def test_substituted_key_is_not_provable(keys: KeysHarness) -> None:
    """A key the device never published has no inclusion proof, and a swapped leaf fails."""
    bob, viewer = Device(), Device()
    await keys.publish(bob)
    impostor = Device(account_id=bob.account_id, device_id=bob.device_id)
    await _fails(
        keys.stub.GetInclusionProof(
            keys_pb2.GetInclusionProofRequest(
                binding=keys_pb2.LogBinding(
                    account_id=bob.account_id,
                    device_id=bob.device_id,
                    identity_key=impostor.identity(),
                )
            ),
            metadata=keys.auth(viewer),
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    # A server answering with bob's proof but the impostor's key is caught by the client.
    reply = await keys.stub.GetInclusionProof(
        keys_pb2.GetInclusionProofRequest(
            binding=keys_pb2.LogBinding(
                account_id=bob.account_id, device_id=bob.device_id, identity_key=bob.identity()
            )
        ),
        metadata=keys.auth(viewer),
    )
    reply.leaf.identity_key.CopyFrom(impostor.identity())
    with pytest.raises(kt.TransparencyError):
        kt.verify_binding(
            reply,
            await _pinned(keys),
            account_id=bob.account_id,
            device_id=bob.device_id,
            signing_public_key=impostor.identity().signing_public_key,
            agreement_public_key=impostor.identity().agreement_public_key,
        )


async def test_consistency_between_heads_and_head_store(keys: KeysHarness, tmp_path: Path) -> None:
    """Heads served over time are consistent; the client store accepts them and refuses rollback."""
    pinned = await _pinned(keys)
    store = kt.TrustedHeadStore(tmp_path / "kt-heads.json")
    server = f"127.0.0.1:{keys.runtime.grpc_port}"
    old = (await keys.stub.GetSignedTreeHead(keys_pb2.GetSignedTreeHeadRequest())).tree_head
    if old.tree_size == 0:
        await keys.publish(Device())
        old = (await keys.stub.GetSignedTreeHead(keys_pb2.GetSignedTreeHeadRequest())).tree_head
    store.update(server, kt.TreeHead.from_proto(old), [], pinned)
    for _ in range(3):
        await keys.publish(Device())
    latest = (await keys.stub.GetSignedTreeHead(keys_pb2.GetSignedTreeHeadRequest())).tree_head
    proof = await keys.stub.GetConsistencyProof(
        keys_pb2.GetConsistencyProofRequest(first_tree_size=old.tree_size)
    )
    assert proof.first_tree_head == old
    assert proof.second_tree_head.tree_size >= latest.tree_size
    second = kt.TreeHead.from_proto(proof.second_tree_head)
    store.update(server, second, list(proof.proof), pinned)
    # The server now shows the old head as its latest: a rollback.
    with pytest.raises(kt.RollbackError):
        store.update(server, kt.TreeHead.from_proto(old), [], pinned)
    # A head for the same size with another root, even validly signed, is a fork.
    forged = kt.TreeHead(
        second.tree_size, bytes(32), second.timestamp_ms, second.key_id, second.signature
    )
    with pytest.raises(kt.TransparencyError):
        store.update(server, forged, [], pinned)
    # Every historical head the server signed is available and consistent with the latest.
    for size in range(1, second.tree_size + 1, max(1, second.tree_size // 7)):
        head = await keys.stub.GetSignedTreeHead(keys_pb2.GetSignedTreeHeadRequest(tree_size=size))
        cp = await keys.stub.GetConsistencyProof(
            keys_pb2.GetConsistencyProofRequest(
                first_tree_size=size, second_tree_size=second.tree_size
            )
        )
        assert kt.verify_consistency(
            size, second.tree_size, list(cp.proof), head.tree_head.root_hash, second.root_hash
        )


async def test_log_arguments_are_checked(keys: KeysHarness) -> None:
    """Sizes beyond the log, size 0 or reversed sizes, and unknown leaves answer as documented."""
    await keys.publish(Device())
    viewer = Device()
    size = (await keys.stub.GetSignedTreeHead(keys_pb2.GetSignedTreeHeadRequest())).tree_head
    beyond = size.tree_size + 1000
    stub = keys.stub
    cases: list[tuple[Awaitable[object], grpc.StatusCode]] = [
        (
            stub.GetSignedTreeHead(keys_pb2.GetSignedTreeHeadRequest(tree_size=beyond)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            stub.GetConsistencyProof(keys_pb2.GetConsistencyProofRequest(first_tree_size=0)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            stub.GetConsistencyProof(
                keys_pb2.GetConsistencyProofRequest(first_tree_size=2, second_tree_size=1)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            stub.GetConsistencyProof(
                keys_pb2.GetConsistencyProofRequest(first_tree_size=1, second_tree_size=beyond)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            stub.GetInclusionProof(
                keys_pb2.GetInclusionProofRequest(leaf_index=beyond), metadata=keys.auth(viewer)
            ),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            stub.GetInclusionProof(
                keys_pb2.GetInclusionProofRequest(leaf_index=size.tree_size - 1, tree_size=1),
                metadata=keys.auth(viewer),
            )
            if size.tree_size > 1
            else stub.GetInclusionProof(
                keys_pb2.GetInclusionProofRequest(), metadata=keys.auth(viewer)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for call, code in cases:
        await _fails(call, code)


async def test_concurrent_appends_are_dense_and_rebuild_to_every_head(keys: KeysHarness) -> None:
    """Parallel publications and removals get dense leaf indexes; leaves rebuild every head."""
    devices = [Device() for _ in range(20)]
    replies = await asyncio.gather(*(keys.publish(d) for d in devices))
    indexes = sorted(r.leaf_index for r in replies)
    assert len(set(indexes)) == 20
    removed = await asyncio.gather(
        *(
            keys.stub.RemoveDeviceKeys(keys_pb2.RemoveDeviceKeysRequest(), metadata=keys.auth(d))
            for d in devices[:5]
        )
    )
    assert all(r.removed for r in removed)
    pool = keys.runtime.resources.pool
    row = await pool.fetchrow("SELECT count(*) AS n, max(leaf_index) AS top FROM kt_leaves")
    assert row is not None
    count = row["n"]
    assert row["top"] == count - 1  # dense: 0 .. n-1, no gaps
    heads = await pool.fetchval(
        "SELECT count(DISTINCT tree_size) FROM kt_tree_heads WHERE tree_size > 0"
    )
    assert heads == count  # one head per append
    # Rebuilding the tree from the stored leaves reproduces every signed head.
    assert await _auditor(keys).audit_log() == []


async def test_rebuild_detects_a_tampered_leaf(keys: KeysHarness) -> None:
    """If a stored leaf hash is altered, the rebuild names the head that no longer matches."""
    await keys.publish(Device())
    pool = keys.runtime.resources.pool
    size = await pool.fetchval("SELECT max(tree_size) FROM kt_tree_heads")
    original = await pool.fetchval(
        "SELECT leaf_hash FROM kt_leaves WHERE leaf_index = $1", size - 1
    )
    tamper = "UPDATE kt_leaves SET leaf_hash = $1 WHERE leaf_index = $2"
    await pool.execute(tamper, bytes(32), size - 1)
    try:
        assert await _auditor(keys).audit_log() == [size]
    finally:
        await pool.execute(tamper, original, size - 1)
    assert await _auditor(keys).audit_log() == []


async def test_client_verify_account_end_to_end(keys: KeysHarness, tmp_path: Path) -> None:
    """verify_account proves every device of an account and detects a server gone backwards."""
    bob = Device()
    sibling = bob.sibling()
    await keys.publish(bob)
    await keys.publish(sibling)
    viewer = Device()
    pinned = await _pinned(keys)
    store = kt.TrustedHeadStore(tmp_path / "kt-heads.json")
    server = f"127.0.0.1:{keys.runtime.grpc_port}"

    async def verify(into: kt.TrustedHeadStore) -> list[kt.VerifiedDevice]:
        return await kt.verify_account(
            keys.stub,
            bob.account_id,
            pinned_log_key=pinned,
            server=server,
            store=into,
            metadata=keys.auth(viewer),
        )

    found = await verify(store)
    assert sorted(d.device_id for d in found) == sorted((bob.device_id, sibling.device_id))
    mine = next(d for d in found if d.device_id == bob.device_id)
    assert mine.signing_public_key == bob.identity().signing_public_key
    assert len(mine.digest.replace(" ", "")) == 64
    # Later verifications move the remembered head forward through consistency proofs.
    await keys.publish(Device())
    again = await verify(store)
    remembered = store.last(server)
    assert remembered is not None and remembered.tree_size == again[0].tree_size
    assert again[0].tree_size > found[0].tree_size
    # This client once saw (validly signed) a larger tree: the server's latest is a rollback.
    signer = TreeHeadSigner(keys.config.tree_signing_key)
    future = signer.sign(remembered.tree_size + 10, remembered.timestamp_ms + 1, bytes(32))
    other = kt.TrustedHeadStore(tmp_path / "other.json")
    other.update(
        server,
        kt.TreeHead(future.tree_size, future.root_hash, future.timestamp_ms, future.key_id,
                    future.signature),
        [],
        pinned,
    )  # fmt: skip
    with pytest.raises(kt.RollbackError):
        await verify(other)


async def test_account_erasure_keeps_only_leaf_hashes(keys: KeysHarness) -> None:
    """account.deleted erases keys and leaf contents, keeps hashes, and reports completion."""
    bob = Device()
    published = await keys.publish(bob, one_time=3)
    await keys.publish(bob.sibling())
    viewer = Device()
    js = keys.runtime.resources.js
    erasure_id = str(uuid.uuid4())
    done = await js.subscribe("conclave.events.erasure.completed", ordered_consumer=True)
    try:
        deleted = events_pb2.AccountDeleted(
            event_id=str(uuid.uuid4()), account_id=bob.account_id, erasure_id=erasure_id
        )
        await js.publish(
            "conclave.events.account.deleted",
            deleted.SerializeToString(),
            headers={"Nats-Msg-Id": deleted.event_id},
        )
        while True:
            msg = await done.next_msg(timeout=10)
            completed = events_pb2.ErasureCompleted.FromString(msg.data)
            if completed.erasure_id == erasure_id:
                break
    finally:
        await done.unsubscribe()
    assert completed.account_id == bob.account_id
    assert completed.service == types_pb2.SERVICE_NAME_KEYS
    assert completed.items_deleted >= 2 + 2 + 3 + 4  # devices, leaves, one-time, signed keys
    pool = keys.runtime.resources.pool
    row = await pool.fetchrow("SELECT * FROM kt_leaves WHERE leaf_index = $1", published.leaf_index)
    assert row is not None and len(row["leaf_hash"]) == 32
    assert row["account_id"] is None and row["signing_public_key"] is None
    assert not await pool.fetchval(
        "SELECT count(*) FROM devices WHERE account_id = $1", bob.account_id
    )
    for request in (
        keys_pb2.GetInclusionProofRequest(leaf_index=published.leaf_index),
        keys_pb2.GetInclusionProofRequest(
            binding=keys_pb2.LogBinding(
                account_id=bob.account_id, device_id=bob.device_id, identity_key=bob.identity()
            )
        ),
    ):
        await _fails(
            keys.stub.GetInclusionProof(request, metadata=keys.auth(viewer)),
            grpc.StatusCode.NOT_FOUND,
        )
    assert await _auditor(keys).audit_log() == []  # the tree still rebuilds to every head
