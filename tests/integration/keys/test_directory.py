"""Key directory on a real keys service: publication, uploads, claims, counts, removal."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import time
import uuid
from collections.abc import Awaitable

import grpc
import pytest
import structlog
from conclave.common.v1 import types_pb2
from conclave.events.v1 import events_pb2
from conclave.keys.v1 import keys_pb2
from conclave_devstack.infra import EmbeddedNats
from conclave_kit.logs import configure_logging
from conclave_kit.ratelimit import Limit

from tests.integration.keys.conftest import Device, KeysHarness, StartKeys, kem_public, make_config
from tests.support import trailers

pytestmark = pytest.mark.integration


async def _fails(call: Awaitable[object], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    return err.value


async def _counts(keys: KeysHarness, device: Device) -> keys_pb2.PrekeyCounts:
    reply = await keys.stub.GetPrekeyCounts(
        keys_pb2.GetPrekeyCountsRequest(device_id=device.device_id), metadata=keys.auth(device)
    )
    (counts,) = reply.devices
    return counts


async def _claim(
    keys: KeysHarness, caller: Device, target: Device, device_id: str = ""
) -> list[keys_pb2.PrekeyBundle]:
    reply = await keys.stub.ClaimPrekeyBundles(
        keys_pb2.ClaimPrekeyBundlesRequest(account_id=target.account_id, device_id=device_id),
        metadata=keys.auth(caller),
    )
    return list(reply.bundles)


async def test_publish_then_claim_full_bundle(keys: KeysHarness) -> None:
    """A published device's bundle has identity, signed, PQ one-time and EC one-time keys."""
    bob = Device()
    published = await keys.publish(bob, one_time=3, pq_one_time=2)
    assert published.tree_head.tree_size > published.leaf_index
    counts = await _counts(keys, bob)
    assert (counts.one_time_prekeys, counts.pq_one_time_prekeys) == (3, 2)
    assert counts.signed_prekey_id == 1 and counts.pq_last_resort_prekey_id == 1
    assert counts.low and counts.signed_prekey_upload_time.seconds > 0
    (bundle,) = await _claim(keys, Device(), bob)
    assert bundle.device_id == bob.device_id and bundle.registration_id == 1234
    assert bundle.identity_key == bob.identity()
    assert bundle.leaf_index == published.leaf_index
    assert bundle.signed_prekey.key_id == 1 and len(bundle.signed_prekey.signature) == 64
    assert not bundle.pq_prekey_is_last_resort and bundle.pq_prekey.key_id == 1
    assert bundle.HasField("one_time_prekey") and bundle.one_time_prekey.key_id == 1
    counts = await _counts(keys, bob)
    assert (counts.one_time_prekeys, counts.pq_one_time_prekeys) == (2, 1)


async def test_last_resort_when_pq_one_time_keys_run_out(keys: KeysHarness) -> None:
    """After the PQ one-time keys are gone the last-resort key is returned with the flag set."""
    bob = Device()
    await keys.publish(bob, one_time=1, pq_one_time=1)
    first = (await _claim(keys, Device(), bob))[0]
    assert not first.pq_prekey_is_last_resort and first.HasField("one_time_prekey")
    for _ in range(2):
        again = (await _claim(keys, Device(), bob))[0]
        assert again.pq_prekey_is_last_resort
        assert again.pq_prekey.key_id == 1 and len(again.pq_prekey.public_key) == 1568
        assert not again.HasField("one_time_prekey")  # "none left" is a field, not an error


async def test_concurrent_claims_hand_out_each_key_once(keys: KeysHarness) -> None:
    """200 concurrent claims on 100 one-time keys: 100 distinct keys, 100 'none left'."""
    bob = Device()
    await keys.publish(bob)
    for start in range(1, 101, 100):
        await keys.stub.UploadPrekeys(
            keys_pb2.UploadPrekeysRequest(
                one_time_prekeys=bob.one_time(range(start, start + 100)),
                pq_one_time_prekeys=bob.pq_one_time(range(start, start + 100)),
            ),
            metadata=keys.auth(bob),
        )
    callers = [Device() for _ in range(200)]
    results = await asyncio.gather(*(_claim(keys, c, bob) for c in callers))
    ec = [b[0].one_time_prekey.key_id for b in results if b[0].HasField("one_time_prekey")]
    pq = [b[0].pq_prekey.key_id for b in results if not b[0].pq_prekey_is_last_resort]
    assert sorted(ec) == list(range(1, 101))
    assert sorted(pq) == list(range(1, 101))
    assert sum(not b[0].HasField("one_time_prekey") for b in results) == 100
    assert sum(b[0].pq_prekey_is_last_resort for b in results) == 100
    counts = await _counts(keys, bob)
    assert (counts.one_time_prekeys, counts.pq_one_time_prekeys) == (0, 0)


async def test_claims_hand_out_oldest_first(keys: KeysHarness) -> None:
    """One-time keys are handed out in upload order."""
    bob = Device()
    await keys.publish(bob)
    await keys.stub.UploadPrekeys(
        keys_pb2.UploadPrekeysRequest(one_time_prekeys=bob.one_time(range(50, 40, -1))),
        metadata=keys.auth(bob),
    )
    got = [(await _claim(keys, Device(), bob))[0].one_time_prekey.key_id for _ in range(3)]
    assert got == [50, 49, 48]


async def test_bad_uploads_are_rejected_and_store_nothing(keys: KeysHarness) -> None:
    """Bad signature, wrong length, >100 keys, duplicates or an empty request store nothing."""
    bob = Device()
    await keys.publish(bob, one_time=1, pq_one_time=1)
    bad_sig = bob.kem_prekey(7)
    bad_sig.signature = bytes(64)
    forged = Device().kem_prekey(8)  # signed by someone else's identity
    short = keys_pb2.EcPrekey(key_id=9, public_key=bytes(31))
    bad_kem = bob.kem_prekey(10)
    bad_kem.public_key = bad_kem.public_key[:-1]
    cases = [
        keys_pb2.UploadPrekeysRequest(
            one_time_prekeys=bob.one_time(range(2, 5)), pq_one_time_prekeys=[bad_sig]
        ),
        keys_pb2.UploadPrekeysRequest(pq_one_time_prekeys=[bob.kem_prekey(11), forged]),
        keys_pb2.UploadPrekeysRequest(one_time_prekeys=[*bob.one_time(range(2, 5)), short]),
        keys_pb2.UploadPrekeysRequest(pq_last_resort_prekey=bad_kem),
        keys_pb2.UploadPrekeysRequest(one_time_prekeys=bob.one_time(range(100, 201))),
        keys_pb2.UploadPrekeysRequest(pq_one_time_prekeys=bob.pq_one_time(range(100, 201))),
        keys_pb2.UploadPrekeysRequest(one_time_prekeys=bob.one_time(range(5, 7)) * 2),
        keys_pb2.UploadPrekeysRequest(signed_prekey=bob.signed_prekey(0)),
        keys_pb2.UploadPrekeysRequest(),
    ]
    for request in cases:
        await _fails(
            keys.stub.UploadPrekeys(request, metadata=keys.auth(bob)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    counts = await _counts(keys, bob)
    assert (counts.one_time_prekeys, counts.pq_one_time_prekeys) == (1, 1)
    assert counts.signed_prekey_id == 1 and counts.pq_last_resort_prekey_id == 1


async def test_bad_publications_are_rejected_and_store_nothing(keys: KeysHarness) -> None:
    """A publication with one bad key, signature or over-limit batch leaves no trace."""
    bob = Device()
    requests = []
    for mutate in range(5):
        request = bob.publish_request(one_time=2, pq_one_time=2)
        if mutate == 0:
            request.signed_prekey.signature = bytes(64)
        elif mutate == 1:
            request.identity_key.agreement_public_key = bytes(33)
        elif mutate == 2:
            request.pq_one_time_prekeys[1].signature = Device().kem_prekey(2).signature
        elif mutate == 3:
            request.one_time_prekeys.extend(bob.one_time(range(3, 103)))
        else:
            request.ClearField("pq_last_resort_prekey")
        requests.append(request)
    for request in requests:
        await _fails(
            keys.stub.PublishIdentityKey(request, metadata=keys.auth(bob)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    reply = await keys.stub.LookupIdentityKeys(
        keys_pb2.LookupIdentityKeysRequest(account_id=bob.account_id), metadata=keys.auth(bob)
    )
    assert list(reply.devices) == []
    await _fails(
        keys.stub.GetPrekeyCounts(
            keys_pb2.GetPrekeyCountsRequest(device_id=bob.device_id), metadata=keys.auth(bob)
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_authorization_of_every_rpc(keys: KeysHarness) -> None:
    """No token → UNAUTHENTICATED; another device → PERMISSION_DENIED; stale FRESH → re-auth."""
    bob, mallory = Device(), Device()
    await keys.publish(bob, one_time=1)
    session_rpcs: list[Awaitable[object]] = [
        keys.stub.PublishIdentityKey(bob.publish_request()),
        keys.stub.UploadPrekeys(
            keys_pb2.UploadPrekeysRequest(one_time_prekeys=bob.one_time(range(5, 6)))
        ),
        keys.stub.GetPrekeyCounts(keys_pb2.GetPrekeyCountsRequest()),
        keys.stub.ClaimPrekeyBundles(keys_pb2.ClaimPrekeyBundlesRequest(account_id=bob.account_id)),
        keys.stub.LookupIdentityKeys(keys_pb2.LookupIdentityKeysRequest(account_id=bob.account_id)),
        keys.stub.RemoveDeviceKeys(keys_pb2.RemoveDeviceKeysRequest(device_id=bob.device_id)),
        keys.stub.GetInclusionProof(keys_pb2.GetInclusionProofRequest(leaf_index=0)),
    ]
    for call in session_rpcs:
        await _fails(call, grpc.StatusCode.UNAUTHENTICATED)
    # Publishing or uploading for someone else's device.
    theirs = bob.publish_request()
    theirs.device_id = bob.device_id
    await _fails(
        keys.stub.PublishIdentityKey(theirs, metadata=keys.auth(mallory)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await _fails(
        keys.stub.UploadPrekeys(
            keys_pb2.UploadPrekeysRequest(
                device_id=bob.device_id, one_time_prekeys=mallory.one_time(range(1, 2))
            ),
            metadata=keys.auth(mallory),
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await _fails(
        keys.stub.RemoveDeviceKeys(
            keys_pb2.RemoveDeviceKeysRequest(device_id=bob.device_id), metadata=keys.auth(mallory)
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    # Counts are the owner's only: another account sees nothing of bob's device.
    await _fails(
        keys.stub.GetPrekeyCounts(
            keys_pb2.GetPrekeyCountsRequest(device_id=bob.device_id), metadata=keys.auth(mallory)
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    # A new device publishes only from a session with a recent password + TOTP check.
    newcomer = Device()
    err = await _fails(
        keys.stub.PublishIdentityKey(newcomer.publish_request(), metadata=keys.stale(newcomer)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert trailers(err)["conclave-error-reason"] == "FRESH_AUTH_REQUIRED"
    # Nothing of bob's changed.
    assert (await _counts(keys, bob)).one_time_prekeys == 1


async def test_upload_before_publish_and_reused_ids(keys: KeysHarness) -> None:
    """Uploads need a published identity; a key id still stored is ALREADY_EXISTS."""
    bob = Device()
    err = await _fails(
        keys.stub.UploadPrekeys(
            keys_pb2.UploadPrekeysRequest(one_time_prekeys=bob.one_time(range(1, 3))),
            metadata=keys.auth(bob),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert trailers(err)["conclave-error-reason"] == "NO_IDENTITY_KEY"
    await keys.publish(bob, one_time=2)
    for request in (
        keys_pb2.UploadPrekeysRequest(one_time_prekeys=bob.one_time(range(2, 4))),
        keys_pb2.UploadPrekeysRequest(signed_prekey=bob.signed_prekey(1)),
    ):
        await _fails(
            keys.stub.UploadPrekeys(request, metadata=keys.auth(bob)),
            grpc.StatusCode.ALREADY_EXISTS,
        )
    assert (await _counts(keys, bob)).one_time_prekeys == 2


async def test_signed_prekey_rotation_keeps_old_for_grace(start_keys: StartKeys) -> None:
    """A rotated signed prekey serves new claims; the old one is purged after the grace period."""
    keys = await start_keys(make_config(signed_prekey_grace_seconds=0.5))
    bob = Device()
    await keys.publish(bob)
    reply = await keys.stub.UploadPrekeys(
        keys_pb2.UploadPrekeysRequest(
            signed_prekey=bob.signed_prekey(2), pq_last_resort_prekey=bob.kem_prekey(2)
        ),
        metadata=keys.auth(bob),
    )
    assert reply.counts.signed_prekey_id == 2 and reply.counts.pq_last_resort_prekey_id == 2
    (bundle,) = await _claim(keys, Device(), bob)
    assert bundle.signed_prekey.key_id == 2 and bundle.pq_prekey.key_id == 2
    pool = keys.runtime.resources.pool
    query = "SELECT count(*) FROM signed_prekeys WHERE device_id = $1"
    assert await pool.fetchval(query, bob.device_id) == 4  # two current, two in grace
    await asyncio.sleep(0.6)
    await keys.stub.UploadPrekeys(
        keys_pb2.UploadPrekeysRequest(one_time_prekeys=bob.one_time(range(1, 2))),
        metadata=keys.auth(bob),
    )
    assert await pool.fetchval(query, bob.device_id) == 2


async def test_per_device_cap(start_keys: StartKeys) -> None:
    """Uploading past the per-device cap is RESOURCE_EXHAUSTED and stores nothing."""
    keys = await start_keys(make_config(max_one_time_prekeys=150))
    bob = Device()
    await keys.publish(bob, one_time=100)
    err = await _fails(
        keys.stub.UploadPrekeys(
            keys_pb2.UploadPrekeysRequest(one_time_prekeys=bob.one_time(range(101, 152))),
            metadata=keys.auth(bob),
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert trailers(err)["conclave-error-reason"] == "PREKEY_CAP"
    assert (await _counts(keys, bob)).one_time_prekeys == 100


async def test_claim_rate_limit_gives_retry_after(start_keys: StartKeys) -> None:
    """Claims beyond the requester's budget are RESOURCE_EXHAUSTED with retry-after."""
    keys = await start_keys(
        make_config(claim_per_requester=Limit(f"claims {uuid.uuid4()}", 3, 1 / 60))
    )
    alice, bob = Device(), Device()
    await keys.publish(bob, one_time=10)
    for _ in range(3):
        await _claim(keys, alice, bob)
    err = await _fails(_claim(keys, alice, bob), grpc.StatusCode.RESOURCE_EXHAUSTED)
    sent = trailers(err)
    assert sent["conclave-error-reason"] == "RATE_LIMITED"
    assert 1 <= int(sent["retry-after"]) <= 60
    # Another requester is not affected, and nothing was handed out by the refused call.
    await _claim(keys, Device(), bob)
    assert (await _counts(keys, bob)).one_time_prekeys == 6


async def test_target_device_limit_stops_exhaustion(start_keys: StartKeys) -> None:
    """Many requesters together cannot drain one device faster than its per-device budget."""
    keys = await start_keys(
        make_config(claim_per_target_device=Limit(f"target {uuid.uuid4()}", 5, 1 / 600))
    )
    bob = Device()
    await keys.publish(bob, one_time=20)
    outcomes = await asyncio.gather(
        *(_claim(keys, Device(), bob) for _ in range(12)), return_exceptions=True
    )
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(refused) == 7
    assert all(o.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for o in refused)
    assert (await _counts(keys, bob)).one_time_prekeys == 15


async def test_claims_for_accounts_and_own_account(keys: KeysHarness) -> None:
    """All devices by id order; own device skipped; unknown account or device is NOT_FOUND."""
    bob = Device()
    siblings = [bob.sibling() for _ in range(2)]
    for d in (bob, *siblings):
        await keys.publish(d, one_time=1)
    bundles = await _claim(keys, Device(), bob)
    assert [b.device_id for b in bundles] == sorted(d.device_id for d in (bob, *siblings))
    own = await _claim(keys, bob, bob)
    assert bob.device_id not in {b.device_id for b in own} and len(own) == 2
    one = await _claim(keys, Device(), bob, siblings[0].device_id)
    assert [b.device_id for b in one] == [siblings[0].device_id]
    await _fails(_claim(keys, bob, Device()), grpc.StatusCode.NOT_FOUND)
    await _fails(_claim(keys, bob, bob, str(uuid.uuid4())), grpc.StatusCode.NOT_FOUND)
    malformed = Device(account_id="not-a-uuid")
    await _fails(_claim(keys, bob, malformed), grpc.StatusCode.INVALID_ARGUMENT)


async def test_low_prekey_event_once(keys: KeysHarness, nats_server: EmbeddedNats) -> None:
    """A claim leaving fewer than 10 keys publishes prekeys.low once (throttled per device)."""
    bob = Device()
    await keys.publish(bob, one_time=12, pq_one_time=12)
    js = keys.runtime.resources.js
    seen: list[events_pb2.PrekeysLow] = []
    sub = await js.subscribe("conclave.events.prekeys.low", ordered_consumer=True,
                             deliver_policy=None)  # fmt: skip
    try:
        for _ in range(5):
            await _claim(keys, Device(), bob)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except TimeoutError:
                if seen:
                    break
                continue
            event = events_pb2.PrekeysLow.FromString(msg.data)
            if event.device.device_id == bob.device_id:
                seen.append(event)
    finally:
        await sub.unsubscribe()
    assert len(seen) == 1
    assert (seen[0].one_time_prekeys, seen[0].pq_one_time_prekeys, seen[0].threshold) == (9, 9, 10)
    assert seen[0].device.account_id == bob.account_id
    assert (await _counts(keys, bob)).low


async def test_remove_device_keys(keys: KeysHarness) -> None:
    """Removing a device deletes its keys (no more bundles) and is idempotent."""
    bob = Device()
    sibling = bob.sibling()
    await keys.publish(bob, one_time=5, pq_one_time=5)
    await keys.publish(sibling)
    reply = await keys.stub.RemoveDeviceKeys(
        keys_pb2.RemoveDeviceKeysRequest(device_id=bob.device_id), metadata=keys.auth(sibling)
    )
    assert reply.removed and reply.leaf_index > 0
    again = await keys.stub.RemoveDeviceKeys(
        keys_pb2.RemoveDeviceKeysRequest(device_id=bob.device_id), metadata=keys.auth(sibling)
    )
    assert not again.removed and again.leaf_index == 0
    bundles = await _claim(keys, Device(), bob)
    assert [b.device_id for b in bundles] == [sibling.device_id]
    pool = keys.runtime.resources.pool
    for table in ("signed_prekeys", "one_time_prekeys"):
        left = await pool.fetchval(f"SELECT count(*) FROM {table} WHERE device_id = $1",
                                   bob.device_id)  # fmt: skip
        assert left == 0


async def test_device_removed_event_from_auth_removes_keys(keys: KeysHarness) -> None:
    """conclave.events.device.removed from auth deletes the device's keys and logs REMOVE."""
    bob = Device()
    await keys.publish(bob, one_time=2)
    event = events_pb2.DeviceRemoved(
        event_id=str(uuid.uuid4()),
        device=types_pb2.DeviceAddress(account_id=bob.account_id, device_id=bob.device_id),
        origin=types_pb2.SERVICE_NAME_AUTH,
    )
    await keys.runtime.resources.js.publish(
        "conclave.events.device.removed",
        event.SerializeToString(),
        headers={"Nats-Msg-Id": event.event_id},
    )
    pool = keys.runtime.resources.pool
    deadline = time.monotonic() + 10
    while await pool.fetchval("SELECT count(*) FROM devices WHERE device_id = $1", bob.device_id):
        assert time.monotonic() < deadline, "device.removed was not consumed"
        await asyncio.sleep(0.05)
    action = await pool.fetchval(
        "SELECT action FROM kt_leaves WHERE device_id = $1 ORDER BY leaf_index DESC LIMIT 1",
        bob.device_id,
    )
    assert action == keys_pb2.LOG_ACTION_REMOVE


async def test_republish_is_idempotent_and_rotation_replaces_prekeys(keys: KeysHarness) -> None:
    """Same identity again: same leaf, no key revived. New identity: ROTATE, old prekeys gone."""
    bob = Device()
    request = bob.publish_request(one_time=3)
    first = await keys.stub.PublishIdentityKey(request, metadata=keys.auth(bob))
    (claimed,) = await _claim(keys, Device(), bob)
    assert claimed.one_time_prekey.key_id == 1
    # A retry after a lost response: same leaf, and the claimed key does not come back.
    retry = await keys.stub.PublishIdentityKey(request, metadata=keys.auth(bob))
    assert retry.leaf_index == first.leaf_index
    assert (await _counts(keys, bob)).one_time_prekeys == 2
    handed = [(await _claim(keys, Device(), bob))[0].one_time_prekey.key_id for _ in range(2)]
    assert handed == [2, 3]
    await keys.stub.UploadPrekeys(
        keys_pb2.UploadPrekeysRequest(one_time_prekeys=bob.one_time(range(4, 7))),
        metadata=keys.auth(bob),
    )
    reinstalled = Device(
        account_id=bob.account_id, device_id=bob.device_id, session_id=bob.session_id
    )
    rotated = await keys.publish(reinstalled, one_time=1)
    assert rotated.leaf_index > first.leaf_index
    assert (await _counts(keys, bob)).one_time_prekeys == 1
    (bundle,) = await _claim(keys, Device(), bob)
    assert bundle.identity_key == reinstalled.identity()
    assert bundle.leaf_index == rotated.leaf_index
    assert len(kem_public()) == 1568


async def test_no_key_material_in_logs(keys: KeysHarness) -> None:
    """Publishing, uploading, claiming, proving and removing log no key bytes in any encoding."""
    logs = io.StringIO()
    saved = (structlog.get_config(), logging.root.handlers[:], logging.root.level)
    configure_logging("keys", "debug", stream=logs)
    try:
        bob = Device()
        request = bob.publish_request(one_time=2, pq_one_time=2)
        await keys.stub.PublishIdentityKey(request, metadata=keys.auth(bob))
        upload = keys_pb2.UploadPrekeysRequest(signed_prekey=bob.signed_prekey(9))
        await keys.stub.UploadPrekeys(upload, metadata=keys.auth(bob))
        await _claim(keys, Device(), bob)
        bad = bob.publish_request()
        bad.signed_prekey.signature = bytes(64)
        with pytest.raises(grpc.aio.AioRpcError):
            await keys.stub.PublishIdentityKey(bad, metadata=keys.auth(bob))
        await keys.stub.RemoveDeviceKeys(
            keys_pb2.RemoveDeviceKeysRequest(), metadata=keys.auth(bob)
        )
    finally:
        structlog.configure(**saved[0])
        logging.root.handlers[:] = saved[1]
        logging.root.setLevel(saved[2])
    text = logs.getvalue()
    assert "identity_published" in text and "device_keys_removed" in text
    secrets = [
        request.identity_key.signing_public_key,
        request.identity_key.agreement_public_key,
        request.signed_prekey.public_key,
        request.signed_prekey.signature,
        request.one_time_prekeys[0].public_key,
        request.pq_one_time_prekeys[0].public_key[:48],
        upload.signed_prekey.public_key,
    ]
    for value in secrets:
        for shown in (
            value.hex(),
            base64.b64encode(value).decode()[:40],
            base64.urlsafe_b64encode(value).decode()[:40],
            repr(value)[2:30],
        ):
            assert shown not in text
