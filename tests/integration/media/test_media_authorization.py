"""Authorization of every MediaService RPC: no token, a revoked session, another user;
and no RPC answers INTERNAL to an empty request from a token with odd ids."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from conclave.media.v1 import media_pb2 as M
from google.protobuf import message_factory

from tests.integration.media.conftest import MediaHarness, User, ciphertext

pytestmark = pytest.mark.integration
MEDIA = M.DESCRIPTOR.services_by_name["MediaService"]


async def _invoke(
    media: MediaHarness, name: str, metadata: tuple[tuple[str, str], ...], request: Any = None
) -> grpc.StatusCode:
    """Calls any RPC (streaming or not) with ``request`` (default: empty); returns the code."""
    method = MEDIA.methods_by_name[name]
    if request is None:
        request = message_factory.GetMessageClass(method.input_type)()
    call = getattr(media.stub, name)
    try:
        if method.client_streaming:
            await call(iter([request]), metadata=metadata, timeout=5)
        elif method.server_streaming:
            async for _ in call(request, metadata=metadata, timeout=5):
                pass
        else:
            await call(request, metadata=metadata, timeout=5)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def test_every_rpc_needs_a_live_session(media: MediaHarness) -> None:
    """Without a token, with a forged one, and with a revoked session: UNAUTHENTICATED,
    even for a caller that holds a valid media id."""
    alice = User()
    mid = await media.upload(alice, ciphertext(70_000), chunk_size=65536)
    valid = {
        "CreateUpload": M.CreateUploadRequest(size_bytes=10, ciphertext_sha256=bytes(32)),
        "UploadChunks": M.UploadChunksRequest(media_id=mid, offset=0, data=b"x"),
        "GetUploadStatus": M.GetUploadStatusRequest(media_id=mid),
        "Download": M.DownloadRequest(media_id=mid),
        "DeleteMedia": M.DeleteMediaRequest(media_id=mid),
        "GetQuota": M.GetQuotaRequest(),
    }
    assert set(valid) == {m.name for m in MEDIA.methods}
    forged = (("authorization", "Bearer eyJhbGciOiJub25lIn0.e30."),)
    for name, request in valid.items():
        assert await _invoke(media, name, (), request) == grpc.StatusCode.UNAUTHENTICATED, name
        assert await _invoke(media, name, forged, request) == grpc.StatusCode.UNAUTHENTICATED

    # Revocation (fed by conclave.events.session.revoked) applies to every RPC at once.
    metadata = media.auth(alice)
    media.runtime.resources.revocations.revoke(alice.session_id, time.time() + 600)
    for name, request in valid.items():
        code = await _invoke(media, name, metadata, request)
        assert code == grpc.StatusCode.UNAUTHENTICATED, name
    # Another session of the same account still works, and the blob was not touched.
    other_session = User(account_id=alice.account_id)
    assert len(await media.download(other_session, mid)) == 70_000


async def test_uploader_only_rpcs_hide_other_accounts_blobs(media: MediaHarness) -> None:
    """Status, chunks and delete of another account's upload are NOT_FOUND (so ids of
    others' uploads cannot even be confirmed); download works for any holder of the id."""
    alice, mallory = User(), User()
    pending = await media.create(alice, ciphertext(70_000), chunk_size=65536)
    done = await media.upload(alice, ciphertext(70_000), chunk_size=65536)
    attempts = {
        "UploadChunks": M.UploadChunksRequest(
            media_id=pending.media_id, offset=0, data=bytes(65536)
        ),
        "GetUploadStatus": M.GetUploadStatusRequest(media_id=pending.media_id),
        "DeleteMedia": M.DeleteMediaRequest(media_id=done),
    }
    for name, request in attempts.items():
        assert (
            await _invoke(media, name, media.auth(mallory), request) == grpc.StatusCode.NOT_FOUND
        ), name
    quota = await media.stub.GetQuota(M.GetQuotaRequest(), metadata=media.auth(mallory))
    assert quota.used_bytes == 0 and quota.blob_count == 0
    assert await _invoke(
        media, "Download", media.auth(mallory), M.DownloadRequest(media_id=done)
    ) == (grpc.StatusCode.OK)
    status = await media.stub.GetUploadStatus(
        M.GetUploadStatusRequest(media_id=pending.media_id), metadata=media.auth(alice)
    )
    assert status.next_offset == 0


async def test_empty_requests_never_answer_internal(media: MediaHarness) -> None:
    """The stack test's probe: empty requests from a token whose ids are not UUIDs get a
    precise status (never INTERNAL), and streaming calls end promptly."""
    token = media.signer.mint(account_id="acc-1", device_id="dev-1", session_id="ses-1")
    metadata = (("authorization", f"Bearer {token}"),)
    codes = {m.name: await _invoke(media, m.name, metadata) for m in MEDIA.methods}
    assert codes == {
        "CreateUpload": grpc.StatusCode.INVALID_ARGUMENT,
        "UploadChunks": grpc.StatusCode.NOT_FOUND,
        "GetUploadStatus": grpc.StatusCode.NOT_FOUND,
        "Download": grpc.StatusCode.NOT_FOUND,
        "DeleteMedia": grpc.StatusCode.NOT_FOUND,
        "GetQuota": grpc.StatusCode.OK,
    }
