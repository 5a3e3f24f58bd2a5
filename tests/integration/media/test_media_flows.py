"""Media upload and download on real NATS + Postgres: round trip of client-side encrypted
ciphertext, resumable uploads, digest checks, limits, quota, capability ids and TTLs."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import structlog
from conclave.media.v1 import media_pb2 as M
from conclave_crypto.attachments import decrypt_attachment, encrypt_attachment
from conclave_kit.logs import configure_logging
from conclave_kit.ratelimit import Limit
from conclave_media.config import MediaConfig
from conclave_media.manager import blob_key, id_hash, new_media_id
from conclave_media.storage import ChunkMissing
from prometheus_client import REGISTRY

from tests.integration.media.conftest import (
    MIB,
    MediaHarness,
    StartMedia,
    User,
    ciphertext,
    requests,
    sha256,
)
from tests.support import trailers

pytestmark = pytest.mark.integration
KIB = 1024


def _metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def _stored(media: MediaHarness, media_id: str, chunks: int) -> bytes:
    """The bytes the object store holds for a blob, read directly (not through Download)."""
    key = blob_key(id_hash(media_id))
    return b"".join([await media.storage.get_chunk(key, i) for i in range(chunks)])


async def _assert_gone(media: MediaHarness, media_id: str, chunks: int) -> None:
    """No chunk object and no row of the blob remains."""
    key = blob_key(id_hash(media_id))
    for index in range(chunks + 1):
        with pytest.raises(ChunkMissing):
            await media.storage.get_chunk(key, index)
    row = await media.runtime.resources.pool.fetchrow(
        "SELECT 1 FROM blobs WHERE id_hash = $1", id_hash(media_id)
    )
    assert row is None


async def _error(call: Any) -> grpc.aio.AioRpcError:
    """The error a unary or streaming call ends with (it must fail)."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    return err.value


async def test_20_mib_attachment_round_trips_as_ciphertext_only(media: MediaHarness) -> None:
    """A 20 MiB attachment, encrypted on the client, uploads in 1 MiB chunks and downloads
    byte for byte; the store holds exactly the ciphertext, never the key or plaintext."""
    marker = b"CONCLAVE-PLAINTEXT-MARKER-"
    plaintext = (marker * (20 * MIB // len(marker) + 1))[: 20 * MIB]
    blob, pointer = encrypt_attachment(plaintext, chunk_size=64 * KIB)
    assert len(blob) > 20 * MIB
    alice, bob = User(), User()
    up_before = _metric("conclave_media_uploaded_bytes_total")
    down_before = _metric("conclave_media_downloaded_bytes_total")

    created = await media.create(alice, blob, digest=pointer.digest)
    assert (
        len(created.media_id) == 43 and len(base64.urlsafe_b64decode(created.media_id + "=")) == 32
    )
    assert created.chunk_size_bytes == MIB
    reply = await media.stub.UploadChunks(
        requests(created.media_id, blob, MIB), metadata=media.auth(alice)
    )
    assert reply.complete and reply.next_offset == len(blob)
    assert reply.HasField("expire_time")

    # The recipient (another account holding the id) downloads and decrypts.
    received = await media.download(bob, created.media_id)
    assert received == blob
    assert decrypt_attachment(received, pointer) == plaintext
    call = media.stub.Download(
        M.DownloadRequest(media_id=created.media_id), metadata=media.auth(bob)
    )
    first = await call.read()
    call.cancel()  # a client that stops early cancels; the server stops reading storage
    assert isinstance(first, M.DownloadResponse)
    assert first.size_bytes == len(blob) and first.ciphertext_sha256 == pointer.digest

    # Resuming a download from an arbitrary offset gives the rest.
    start = 5 * MIB + 123
    assert await media.download(bob, created.media_id, start) == blob[start:]

    # Reads use direct gets: no consumer per chunk piles up towards the server's limit
    # (nats-py's ObjectStore.get creates one each time).
    info = await media.runtime.resources.js.stream_info("OBJ_conclave_media")
    assert info.state.consumer_count == 0

    chunks = -(-len(blob) // MIB)
    stored = await _stored(media, created.media_id, chunks)
    assert stored == blob
    assert marker not in stored and pointer.key not in stored
    row = await media.runtime.resources.pool.fetchrow(
        "SELECT * FROM blobs WHERE id_hash = $1", id_hash(created.media_id)
    )
    assert row is not None
    values = b"|".join(str(v).encode() if not isinstance(v, bytes) else v for v in row.values())
    assert pointer.key not in values
    assert created.media_id.encode() not in values  # only the id's hash is kept
    assert _metric("conclave_media_uploaded_bytes_total") - up_before == len(blob)
    assert _metric("conclave_media_downloaded_bytes_total") - down_before >= 2 * len(blob) - start


async def test_interrupted_upload_resumes_from_last_stored_chunk(media: MediaHarness) -> None:
    """Cancelled after two chunks: the status says where to go on, nothing is served yet,
    and the rest completes the blob (digest re-read from storage across streams)."""
    alice = User()
    data = ciphertext(3 * MIB + 777)
    created = await media.create(alice, data)
    hold = asyncio.Event()

    async def two_then_stall() -> AsyncIterator[M.UploadChunksRequest]:
        for request in requests(created.media_id, data, MIB, stop=2 * MIB):
            yield request
        await hold.wait()

    call = media.stub.UploadChunks(two_then_stall(), metadata=media.auth(alice))
    status = M.GetUploadStatusResponse()
    for _ in range(200):
        status = await media.stub.GetUploadStatus(
            M.GetUploadStatusRequest(media_id=created.media_id), metadata=media.auth(alice)
        )
        if status.next_offset == 2 * MIB:
            break
        await asyncio.sleep(0.02)
    call.cancel()
    assert status.next_offset == 2 * MIB and not status.complete
    assert status.size_bytes == len(data) and status.chunk_size_bytes == MIB

    err = await _error(
        media.stub.Download(
            M.DownloadRequest(media_id=created.media_id), metadata=media.auth(alice)
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND  # nothing partial is served

    # Starting over at offset 0 is refused with the offset to resume from.
    err = await _error(
        media.stub.UploadChunks(requests(created.media_id, data, MIB), metadata=media.auth(alice))
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert trailers(err)["conclave-error-reason"] == "WRONG_OFFSET"
    assert str(2 * MIB) in str(err.details())

    reply = await media.stub.UploadChunks(
        requests(created.media_id, data, MIB, start=status.next_offset),
        metadata=media.auth(alice),
    )
    assert reply.complete and reply.next_offset == len(data)
    assert await media.download(alice, created.media_id) == data

    err = await _error(
        media.stub.UploadChunks(
            requests(created.media_id, data, MIB, start=3 * MIB), metadata=media.auth(alice)
        )
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert trailers(err)["conclave-error-reason"] == "ALREADY_COMPLETE"


async def test_corrupted_chunk_or_wrong_digest_is_rejected_and_never_served(
    media: MediaHarness,
) -> None:
    """A chunk failing its chunk_sha256 is not stored; a blob failing the whole digest is
    discarded (row and chunks), and Download never serves any of it."""
    alice = User()
    data = ciphertext(2 * MIB + 5)
    created = await media.create(alice, data)
    good = list(requests(created.media_id, data, MIB))
    corrupted = M.UploadChunksRequest()
    corrupted.CopyFrom(good[0])
    corrupted.chunk_sha256 = sha256(good[0].data)
    corrupted.data = b"\x00" + good[0].data[1:]
    err = await _error(media.stub.UploadChunks(iter([corrupted]), metadata=media.auth(alice)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailers(err)["conclave-error-reason"] == "CHUNK_DIGEST_MISMATCH"
    status = await media.stub.GetUploadStatus(
        M.GetUploadStatusRequest(media_id=created.media_id), metadata=media.auth(alice)
    )
    assert status.next_offset == 0  # not stored; may be resent

    # Corruption the client did not catch (no chunk digest) fails the whole-blob check.
    tampered = [
        good[0],
        M.UploadChunksRequest(media_id=created.media_id, offset=MIB, data=bytes(MIB)),
        good[2],
    ]
    err = await _error(media.stub.UploadChunks(iter(tampered), metadata=media.auth(alice)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert trailers(err)["conclave-error-reason"] == "DIGEST_MISMATCH"
    await _assert_gone(media, created.media_id, 3)
    for call in (
        media.stub.Download(
            M.DownloadRequest(media_id=created.media_id), metadata=media.auth(alice)
        ),
        media.stub.GetUploadStatus(
            M.GetUploadStatusRequest(media_id=created.media_id), metadata=media.auth(alice)
        ),
    ):
        assert (await _error(call)).code() == grpc.StatusCode.NOT_FOUND

    # A declared digest that does not match the data: discarded the same way.
    wrong = await media.create(alice, data, digest=sha256(b"something else"))
    err = await _error(
        media.stub.UploadChunks(requests(wrong.media_id, data, MIB), metadata=media.auth(alice))
    )
    assert trailers(err)["conclave-error-reason"] == "DIGEST_MISMATCH"
    await _assert_gone(media, wrong.media_id, 3)


async def test_requests_outside_the_limits_are_invalid(start_media: StartMedia) -> None:
    """Size, chunk size, digest, chunk lengths, stream shape: INVALID_ARGUMENT, clearly."""
    media = await start_media(MediaConfig(max_file_bytes=4 * MIB))
    alice = User()
    digest = sha256(b"x")

    async def create_error(size: int, chunk: int, digest: bytes) -> tuple[str, str]:
        err = await _error(
            media.stub.CreateUpload(
                M.CreateUploadRequest(
                    size_bytes=size, chunk_size_bytes=chunk, ciphertext_sha256=digest
                ),
                metadata=media.auth(alice),
            )
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        return trailers(err)["conclave-error-reason"], str(err.details())

    reason, details = await create_error(4 * MIB + 1, 0, digest)
    assert reason == "FILE_TOO_LARGE" and str(4 * MIB) in details
    assert (await create_error(0, 0, digest))[0] == "INVALID_SIZE"
    assert (await create_error(10, 3000, digest))[0] == "INVALID_CHUNK_SIZE"
    assert (await create_error(10, 2 * MIB, digest))[0] == "INVALID_CHUNK_SIZE"
    assert (await create_error(10, 96 * KIB, digest))[0] == "INVALID_CHUNK_SIZE"
    assert (await create_error(10, 0, b"short"))[0] == "INVALID_DIGEST"

    data = ciphertext(200 * KIB)
    created = await media.create(alice, data, chunk_size=64 * KIB)
    assert created.chunk_size_bytes == 64 * KIB
    mid = created.media_id

    async def upload_error(chunks: list[M.UploadChunksRequest]) -> str:
        err = await _error(media.stub.UploadChunks(iter(chunks), metadata=media.auth(alice)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        return trailers(err)["conclave-error-reason"]

    assert await upload_error([]) == "EMPTY_STREAM"
    assert (
        await upload_error([M.UploadChunksRequest(media_id=mid, offset=0, data=data[:1000])])
        == "WRONG_CHUNK_LENGTH"
    )
    other = await media.create(alice, data, chunk_size=64 * KIB)
    assert (
        await upload_error(
            [
                M.UploadChunksRequest(media_id=mid, offset=0, data=data[: 64 * KIB]),
                M.UploadChunksRequest(media_id=other.media_id, offset=0, data=data[: 64 * KIB]),
            ]
        )
        == "MIXED_MEDIA_IDS"
    )
    # The first chunk of that stream was stored; a last chunk longer than what is left is
    # data beyond the declared size.
    assert (
        await upload_error(
            [
                M.UploadChunksRequest(
                    media_id=mid, offset=64 * KIB, data=data[64 * KIB : 128 * KIB]
                ),
                M.UploadChunksRequest(
                    media_id=mid, offset=128 * KIB, data=data[128 * KIB : 192 * KIB]
                ),
                M.UploadChunksRequest(media_id=mid, offset=192 * KIB, data=bytes(64 * KIB)),
            ]
        )
        == "BEYOND_SIZE"
    )
    reply = await media.stub.UploadChunks(
        requests(mid, data, 64 * KIB, start=192 * KIB), metadata=media.auth(alice)
    )
    assert reply.complete
    err = await _error(
        media.stub.Download(
            M.DownloadRequest(media_id=mid, start_offset=len(data)), metadata=media.auth(alice)
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = await _error(
        media.stub.Download(
            M.DownloadRequest(media_id=mid, start_offset=-1), metadata=media.auth(alice)
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_quota_is_reserved_enforced_and_released(start_media: StartMedia) -> None:
    """Incomplete uploads reserve quota; over it is RESOURCE_EXHAUSTED / QUOTA_EXCEEDED;
    deleting releases it; GetQuota reports use and limits."""
    media = await start_media(MediaConfig(quota_bytes=3 * MIB))
    alice, bob = User(), User()
    first = await media.create(alice, ciphertext(2 * MIB))
    err = await _error(
        media.stub.CreateUpload(
            M.CreateUploadRequest(size_bytes=2 * MIB, ciphertext_sha256=sha256(b"")),
            metadata=media.auth(alice),
        )
    )
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert trailers(err)["conclave-error-reason"] == "QUOTA_EXCEEDED"
    assert "quota" in str(err.details())
    # Another account's quota is its own.
    await media.create(bob, ciphertext(2 * MIB))

    quota = await media.stub.GetQuota(M.GetQuotaRequest(), metadata=media.auth(alice))
    assert (quota.used_bytes, quota.limit_bytes, quota.blob_count) == (2 * MIB, 3 * MIB, 1)
    assert quota.max_blob_bytes == 100 * MIB
    assert quota.blob_ttl.ToSeconds() == 30 * 24 * 3600

    await media.stub.DeleteMedia(
        M.DeleteMediaRequest(media_id=first.media_id), metadata=media.auth(alice)
    )
    # Idempotent for the uploader.
    await media.stub.DeleteMedia(
        M.DeleteMediaRequest(media_id=first.media_id), metadata=media.auth(alice)
    )
    quota = await media.stub.GetQuota(M.GetQuotaRequest(), metadata=media.auth(alice))
    assert (quota.used_bytes, quota.blob_count) == (0, 0)
    await media.upload(alice, ciphertext(3 * MIB))
    err = await _error(
        media.stub.CreateUpload(
            M.CreateUploadRequest(size_bytes=1, ciphertext_sha256=sha256(b"")),
            metadata=media.auth(alice),
        )
    )
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_the_media_id_is_the_capability(media: MediaHarness) -> None:
    """Without the id a blob is unreachable (NOT_FOUND, like a malformed id); with it any
    session downloads; uploader-only RPCs are NOT_FOUND for everyone else."""
    alice, mallory = User(), User()
    data = ciphertext(100 * KIB)
    mid = await media.upload(alice, data, chunk_size=64 * KIB)
    for guess in (new_media_id(), "", "not-an-id", mid[:-1] + ("A" if mid[-1] != "A" else "E")):
        err = await _error(
            media.stub.Download(M.DownloadRequest(media_id=guess), metadata=media.auth(mallory))
        )
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert err.details() == "media not found"
    assert await media.download(mallory, mid) == data

    for call in (
        media.stub.GetUploadStatus(
            M.GetUploadStatusRequest(media_id=mid), metadata=media.auth(mallory)
        ),
        media.stub.DeleteMedia(M.DeleteMediaRequest(media_id=mid), metadata=media.auth(mallory)),
    ):
        assert (await _error(call)).code() == grpc.StatusCode.NOT_FOUND
    pending = await media.create(alice, data, chunk_size=64 * KIB)
    err = await _error(
        media.stub.UploadChunks(
            requests(pending.media_id, data, 64 * KIB), metadata=media.auth(mallory)
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert await media.download(alice, mid) == data  # untouched

    await media.stub.DeleteMedia(M.DeleteMediaRequest(media_id=mid), metadata=media.auth(alice))
    err = await _error(
        media.stub.Download(M.DownloadRequest(media_id=mid), metadata=media.auth(alice))
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    key = blob_key(id_hash(mid))
    with pytest.raises(ChunkMissing):
        await media.storage.get_chunk(key, 0)


async def test_expired_blobs_are_not_served_and_purged_everywhere(media: MediaHarness) -> None:
    """Past its TTL a blob is NOT_FOUND; one purge run removes its row and its objects, and
    incomplete uploads past their window go too. A second run finds nothing."""
    alice = User()
    data = ciphertext(300 * KIB)
    done = await media.upload(alice, data, chunk_size=64 * KIB)
    stalled = await media.create(alice, data, chunk_size=64 * KIB)
    await media.stub.UploadChunks(
        requests(stalled.media_id, data, 64 * KIB, stop=128 * KIB), metadata=media.auth(alice)
    )
    fresh = await media.upload(alice, data, chunk_size=64 * KIB)

    media.clock.advance(24 * 3600 + 1)  # the incomplete upload's window is over
    err = await _error(
        media.stub.UploadChunks(
            requests(stalled.media_id, data, 64 * KIB, start=128 * KIB), metadata=media.auth(alice)
        )
    )
    assert trailers(err)["conclave-error-reason"] == "UPLOAD_EXPIRED"
    assert await media.download(alice, done) == data  # complete blobs live 30 days

    media.clock.advance(30 * 24 * 3600)
    for mid in (done, fresh):
        err = await _error(
            media.stub.Download(M.DownloadRequest(media_id=mid), metadata=media.auth(alice))
        )
        assert err.code() == grpc.StatusCode.NOT_FOUND
    quota = await media.stub.GetQuota(M.GetQuotaRequest(), metadata=media.auth(alice))
    assert quota.used_bytes == 0

    messages_before = await media.storage.count_messages()
    # At least ours (rows earlier tests left in the shared database expire with them).
    assert await media.manager.purge_expired(batch=2) >= 3
    for mid in (done, stalled.media_id, fresh):
        await _assert_gone(media, mid, 5)
    assert await media.storage.count_messages() < messages_before
    assert await media.manager.purge_expired() == 0


async def test_creating_uploads_is_rate_limited_per_account(start_media: StartMedia) -> None:
    """Past the burst, CreateUpload is RESOURCE_EXHAUSTED with a retry-after trailer; other
    accounts are unaffected."""
    media = await start_media(MediaConfig(upload_limit=Limit("media uploads", 2.0, 0.01)))
    alice, bob = User(), User()
    data = ciphertext(10)
    await media.create(alice, data, chunk_size=64 * KIB)
    await media.create(alice, data, chunk_size=64 * KIB)
    err = await _error(media.create(alice, data, chunk_size=64 * KIB))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert trailers(err)["conclave-error-reason"] == "RATE_LIMITED"
    assert int(trailers(err)["retry-after"]) >= 1
    await media.create(bob, data, chunk_size=64 * KIB)


async def test_racing_streams_on_one_upload_store_each_chunk_once(media: MediaHarness) -> None:
    """Two streams sending the same upload at once (a client retrying too early, or two
    replicas): chunks are written in order under the row lock, the loser is told the
    offset, and the blob that completes is exactly the data."""
    alice = User()
    data = ciphertext(8 * 64 * KIB)
    created = await media.create(alice, data, chunk_size=64 * KIB)

    async def send() -> M.UploadChunksResponse | grpc.aio.AioRpcError:
        try:
            return await media.stub.UploadChunks(
                requests(created.media_id, data, 64 * KIB), metadata=media.auth(alice)
            )
        except grpc.aio.AioRpcError as err:
            return err

    results = await asyncio.gather(send(), send())
    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(errors) >= 1
    assert {trailers(e)["conclave-error-reason"] for e in errors} <= {
        "WRONG_OFFSET",
        "ALREADY_COMPLETE",
    }
    status = await media.stub.GetUploadStatus(
        M.GetUploadStatusRequest(media_id=created.media_id), metadata=media.auth(alice)
    )
    if not status.complete:  # the winner was itself pushed off: finish from the status
        await media.stub.UploadChunks(
            requests(created.media_id, data, 64 * KIB, start=status.next_offset),
            metadata=media.auth(alice),
        )
    assert await media.download(alice, created.media_id) == data


async def test_purges_on_several_replicas_at_once_delete_each_blob_once(
    start_media: StartMedia,
) -> None:
    """Two replicas purging together split the expired blobs between them (SKIP LOCKED)
    and together remove all of them."""
    first = await start_media(MediaConfig())
    second = await start_media(MediaConfig())
    alice = User()
    data = ciphertext(130 * KIB)
    ids = [await first.upload(alice, data, chunk_size=64 * KIB) for _ in range(6)]
    for replica in (first, second):
        replica.clock.advance(31 * 24 * 3600)
    counts = await asyncio.gather(
        first.manager.purge_expired(batch=1), second.manager.purge_expired(batch=1)
    )
    assert sum(counts) >= len(ids)
    for mid in ids:
        await _assert_gone(first, mid, 3)


async def test_erasing_an_account_deletes_its_blobs_only(media: MediaHarness) -> None:
    """``erase_account`` (for issue #7's erasure) removes every blob and upload of the
    account, rows and objects, and nothing of anyone else; running it again is a no-op."""
    alice, bob = User(), User()
    data = ciphertext(70 * KIB)
    mine = [await media.upload(alice, data, chunk_size=64 * KIB) for _ in range(2)]
    pending = await media.create(alice, data, chunk_size=64 * KIB)
    theirs = await media.upload(bob, data, chunk_size=64 * KIB)
    assert await media.manager.erase_account(alice.account_id) == 3
    for mid in (*mine, pending.media_id):
        await _assert_gone(media, mid, 2)
    assert await media.download(bob, theirs) == data
    assert await media.manager.erase_account(alice.account_id) == 0


async def test_logs_and_metrics_name_no_media_id(media: MediaHarness) -> None:
    """Debug logs of a whole lifecycle (create, upload, digest mismatch, download, delete,
    purge) contain neither media ids nor their full hashes; media metrics carry no ids."""
    logs = io.StringIO()
    saved = (structlog.get_config(), logging.root.handlers[:], logging.root.level)
    configure_logging("media", "debug", stream=logs)
    alice = User()
    data = ciphertext(70 * KIB)
    try:
        mid = await media.upload(alice, data, chunk_size=64 * KIB)
        await media.download(alice, mid)
        bad = await media.create(alice, data, chunk_size=64 * KIB, digest=sha256(b"no"))
        await _error(
            media.stub.UploadChunks(
                requests(bad.media_id, data, 64 * KIB), metadata=media.auth(alice)
            )
        )
        await media.stub.DeleteMedia(M.DeleteMediaRequest(media_id=mid), metadata=media.auth(alice))
        media.clock.advance(31 * 24 * 3600)
        await media.manager.purge_expired()
    finally:
        structlog.configure(**saved[0])
        logging.root.handlers[:] = saved[1]
        logging.root.setLevel(saved[2])
    text = logs.getvalue()
    assert "upload_completed" in text and "upload_digest_mismatch" in text
    for media_id in (mid, bad.media_id):
        assert media_id not in text
        assert id_hash(media_id).hex() not in text
        assert base64.b64encode(id_hash(media_id)).decode() not in text
    for family in REGISTRY.collect():
        if family.name.startswith("conclave_media_"):
            for sample in family.samples:
                assert set(sample.labels) <= {"outcome", "kind", "le"}, sample


async def test_concurrent_uploads_of_small_chunks_round_trip(media: MediaHarness) -> None:
    """Several uploads at once, each of many 64 KiB chunks (written in batches while the
    stream is still arriving): every blob downloads exactly as sent."""
    alice = User()
    blobs = [ciphertext(40 * 64 * KIB + n) for n in (1, 4095, 65535)]
    ids = await asyncio.gather(*(media.upload(alice, b, chunk_size=64 * KIB) for b in blobs))
    downloaded = await asyncio.gather(*(media.download(User(), mid) for mid in ids))
    assert downloaded == blobs


async def test_status_completes_an_upload_whose_check_never_ran(media: MediaHarness) -> None:
    """A process dying between the last chunk and the digest check leaves every chunk
    stored but the blob incomplete; GetUploadStatus runs the check (complete, or discarded
    on a mismatch) instead of leaving the client stuck."""
    alice = User()
    pool = media.runtime.resources.pool
    outcomes: list[bool | str] = []
    for stored_right in (True, False):
        data = ciphertext(2 * 64 * KIB + 10)
        created = await media.create(alice, data, chunk_size=64 * KIB)
        key = blob_key(id_hash(created.media_id))
        for index in range(3):
            piece = data[index * 64 * KIB : (index + 1) * 64 * KIB]
            await media.storage.put_chunk(key, index, piece if stored_right else bytes(len(piece)))
        await pool.execute(
            "UPDATE blobs SET chunks_received = 3 WHERE id_hash = $1", id_hash(created.media_id)
        )
        request = M.GetUploadStatusRequest(media_id=created.media_id)
        try:
            status = await media.stub.GetUploadStatus(request, metadata=media.auth(alice))
            outcomes.append(status.complete and status.next_offset == len(data))
            assert await media.download(alice, created.media_id) == data
        except grpc.aio.AioRpcError as err:
            outcomes.append(trailers(err)["conclave-error-reason"])
            await _assert_gone(media, created.media_id, 3)
    assert outcomes == [True, "DIGEST_MISMATCH"]


async def test_upload_resumes_on_another_replica(start_media: StartMedia) -> None:
    """Half an upload through one replica, the rest through another (a load balancer
    switching after a reconnect): the blob completes and serves from either."""
    first, second = await start_media(MediaConfig()), await start_media(MediaConfig())
    alice = User()
    data = ciphertext(5 * 64 * KIB + 99)
    created = await first.create(alice, data, chunk_size=64 * KIB)
    await first.stub.UploadChunks(
        requests(created.media_id, data, 64 * KIB, stop=3 * 64 * KIB), metadata=first.auth(alice)
    )
    status = await second.stub.GetUploadStatus(
        M.GetUploadStatusRequest(media_id=created.media_id), metadata=second.auth(alice)
    )
    assert status.next_offset == 3 * 64 * KIB
    reply = await second.stub.UploadChunks(
        requests(created.media_id, data, 64 * KIB, start=status.next_offset),
        metadata=second.auth(alice),
    )
    assert reply.complete
    assert await first.download(User(), created.media_id) == data
    assert await second.download(User(), created.media_id) == data
