"""Media's account data through the kit: operator purge by kind, purge lag, export, erasure
events, and the blob TTL taken from the uploader's retention policy."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
from conclave.common.v1 import account_data_pb2 as D
from conclave.common.v1.account_data_pb2_grpc import AccountDataServiceStub
from conclave.events.v1 import events_pb2
from conclave.media.v1 import media_pb2 as M
from conclave.retention.v1 import retention_pb2 as R
from conclave_kit.account_data import ACCOUNT_DELETED, ERASURE_COMPLETED
from conclave_kit.nats_bus import EVENTS_STREAM
from conclave_media.manager import id_hash
from conclave_media.policy import POLICY_SUBJECT
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from prometheus_client import REGISTRY

from tests.integration.media.conftest import MediaHarness, User, ciphertext, requests

pytestmark = pytest.mark.integration
DAY = 24 * 3600
KIB = 1024


def _operator(media: MediaHarness) -> tuple[tuple[str, str]]:
    token = media.signer.mint(
        account_id=str(uuid.uuid4()),
        device_id=str(uuid.uuid4()),
        session_id=str(uuid.uuid4()),
        roles=("operator",),
    )
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def nats(media: MediaHarness) -> AsyncIterator[NatsClient]:
    """A client connection to the test NATS server."""
    nc = NatsClient()
    await nc.connect(media.runtime.config.nats_urls[0])
    yield nc
    await nc.close()


async def test_operator_purge_reports_kinds_and_clears_the_lag(media: MediaHarness) -> None:
    """PurgeExpired is operator-only; it deletes expired blobs and abandoned uploads,
    counted by kind, and the purge-lag gauge shows how overdue they were until then."""
    alice = User()
    data = ciphertext(200 * KIB)
    await media.upload(alice, data, chunk_size=64 * KIB)
    stalled = await media.create(alice, data, chunk_size=64 * KIB)
    await media.stub.UploadChunks(
        requests(stalled.media_id, data, 64 * KIB, stop=64 * KIB), metadata=media.auth(alice)
    )
    stub = AccountDataServiceStub(media.channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PurgeExpired(D.PurgeExpiredRequest(), metadata=media.auth(alice))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

    media.clock.advance(31 * DAY)
    provider = media.runtime.spec.account_data.provider  # type: ignore[union-attr]
    assert provider is not None
    lag = await provider.purge_lag()
    assert lag[D.PURGE_KIND_MEDIA_BLOBS] >= DAY - 60
    assert lag[D.PURGE_KIND_INCOMPLETE_UPLOADS] >= 30 * DAY - 60

    reply = await stub.PurgeExpired(D.PurgeExpiredRequest(), metadata=_operator(media))
    counts = {c.kind: c.items for c in reply.counts}
    assert counts[D.PURGE_KIND_MEDIA_BLOBS] >= 1
    assert counts[D.PURGE_KIND_INCOMPLETE_UPLOADS] >= 1
    for data_kind in ("media_blobs", "incomplete_uploads"):
        gauge = REGISTRY.get_sample_value(
            "conclave_retention_purge_lag_seconds", {"data": data_kind}
        )
        assert gauge == 0.0


async def test_export_lists_blob_metadata_without_ids_or_content(media: MediaHarness) -> None:
    """The media export section names blobs by the SHA-256 of their id (the id itself is
    never stored) with sizes, states and times, and the quota."""
    alice = User()
    media_id = await media.upload(alice, ciphertext(100 * KIB), chunk_size=64 * KIB)
    chunks = [
        c.json_chunk
        async for c in AccountDataServiceStub(media.channel).ExportAccountData(
            D.ExportAccountDataRequest(), metadata=media.auth(alice)
        )
    ]
    section = json.loads(b"".join(chunks))
    (blob,) = section["blobs"]
    assert blob["media_id_sha256"] == id_hash(media_id).hex()
    assert blob["state"] == "COMPLETE"
    assert blob["size_bytes"] == 100 * KIB
    assert media_id not in json.dumps(section)
    assert section["quota"]["used_bytes"] == 100 * KIB


async def test_account_deleted_event_erases_blobs(media: MediaHarness, nats: NatsClient) -> None:
    """conclave.events.account.deleted removes the account's blobs and objects, then media
    reports ErasureCompleted."""
    alice = User()
    media_id = await media.upload(alice, ciphertext(100 * KIB), chunk_size=64 * KIB)
    erasure_id = uuid.uuid4().hex
    done: asyncio.Future[events_pb2.ErasureCompleted] = asyncio.get_running_loop().create_future()

    async def on_completed(msg: Msg) -> None:
        event = events_pb2.ErasureCompleted.FromString(msg.data)
        if event.erasure_id == erasure_id and not done.done():
            done.set_result(event)

    sub = await nats.subscribe(ERASURE_COMPLETED, cb=on_completed)
    event = events_pb2.AccountDeleted(
        event_id=str(uuid.uuid4()), account_id=alice.account_id, erasure_id=erasure_id
    )
    await nats.jetstream().publish(ACCOUNT_DELETED, event.SerializeToString(), stream=EVENTS_STREAM)
    completed = await asyncio.wait_for(done, 20)
    await sub.unsubscribe()
    assert completed.items_deleted >= 1
    rows = await media.runtime.resources.pool.fetchval(
        "SELECT count(*) FROM blobs WHERE account_id = $1", alice.account_id
    )
    assert rows == 0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in media.stub.Download(
            M.DownloadRequest(media_id=media_id), metadata=media.auth(alice)
        ):
            pass
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_blob_ttl_follows_the_uploaders_retention_policy(
    media: MediaHarness, nats: NatsClient
) -> None:
    """A completed blob expires after the uploader's policy media TTL (asked of retention
    over conclave.internal.retention.policy); a longer policy is capped by the media
    server's configured TTL, and with no retention answering the configured TTL applies."""
    ttl_by_account: dict[str, int] = {}

    async def answer(msg: Msg) -> None:
        request = R.ResolvePolicyRequest.FromString(msg.data)
        policy = R.EffectivePolicy()
        policy.policy.media_ttl.FromTimedelta(timedelta(seconds=ttl_by_account[request.account_id]))
        await msg.respond(policy.SerializeToString())

    short, long_, unanswered = User(), User(), User()
    ttl_by_account[short.account_id] = 2 * DAY
    ttl_by_account[long_.account_id] = 90 * DAY
    sub = await nats.subscribe(POLICY_SUBJECT, cb=answer)
    try:
        short_status = await _upload_status(media, short)
        long_status = await _upload_status(media, long_)
    finally:
        await sub.unsubscribe()
    no_retention = await _upload_status(media, unanswered)
    now = media.clock().timestamp()
    assert short_status.expire_time.seconds - now == pytest.approx(2 * DAY, abs=30)
    assert long_status.expire_time.seconds - now == pytest.approx(30 * DAY, abs=30)
    assert no_retention.expire_time.seconds - now == pytest.approx(30 * DAY, abs=30)


async def _upload_status(media: MediaHarness, user: User) -> M.GetUploadStatusResponse:
    media_id = await media.upload(user, ciphertext(10 * KIB), chunk_size=64 * KIB)
    return await media.stub.GetUploadStatus(
        M.GetUploadStatusRequest(media_id=media_id), metadata=media.auth(user)
    )
