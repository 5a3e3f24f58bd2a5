"""gRPC layer of the media service: thin, translating requests to the domain and back.

Auth modes are declared in media.proto (every RPC: SESSION) and enforced by the kit
before a handler runs; handlers only read the verified caller
(:func:`conclave_kit.auth.current_claims`). The manager is set once Postgres and NATS are
connected; until then the kit answers ``UNAVAILABLE`` anyway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from conclave.media.v1 import media_pb2 as M
from conclave.media.v1 import media_pb2_grpc
from conclave_kit.auth import current_claims
from conclave_kit.errors import Unavailable
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from conclave_media.manager import Chunk, MediaManager, UploadStatus


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


async def _chunks(requests: AsyncIterator[M.UploadChunksRequest]) -> AsyncIterator[Chunk]:
    async for request in requests:
        yield Chunk(
            media_id=request.media_id,
            offset=request.offset,
            data=bytes(request.data),
            chunk_sha256=bytes(request.chunk_sha256),
        )


def _upload_response(status: UploadStatus) -> M.UploadChunksResponse:
    response = M.UploadChunksResponse(next_offset=status.next_offset, complete=status.complete)
    if status.complete:
        response.expire_time.CopyFrom(_timestamp(status.expires_at))
    return response


class MediaServiceServicer(media_pb2_grpc.MediaServiceServicer):
    """Implements conclave.media.v1.MediaService (see media.proto for each RPC)."""

    def __init__(self) -> None:
        self.manager: MediaManager | None = None

    @property
    def _m(self) -> MediaManager:
        if self.manager is None:
            raise Unavailable("media is starting")
        return self.manager

    async def CreateUpload(  # noqa: D102 - documented in media.proto
        self, request: M.CreateUploadRequest, context: Any
    ) -> M.CreateUploadResponse:
        upload = await self._m.create_upload(
            current_claims().account_id,
            request.size_bytes,
            request.chunk_size_bytes,
            bytes(request.ciphertext_sha256),
        )
        return M.CreateUploadResponse(
            media_id=upload.media_id,
            chunk_size_bytes=upload.chunk_size,
            upload_expire_time=_timestamp(upload.upload_expires_at),
        )

    async def UploadChunks(  # noqa: D102
        self, request_iterator: AsyncIterator[M.UploadChunksRequest], context: Any
    ) -> M.UploadChunksResponse:
        status = await self._m.upload_chunks(current_claims().account_id, _chunks(request_iterator))
        return _upload_response(status)

    async def GetUploadStatus(  # noqa: D102
        self, request: M.GetUploadStatusRequest, context: Any
    ) -> M.GetUploadStatusResponse:
        status = await self._m.upload_status(current_claims().account_id, request.media_id)
        return M.GetUploadStatusResponse(
            next_offset=status.next_offset,
            size_bytes=status.size_bytes,
            chunk_size_bytes=status.chunk_size,
            complete=status.complete,
            expire_time=_timestamp(status.expires_at),
        )

    async def Download(  # noqa: D102
        self, request: M.DownloadRequest, context: Any
    ) -> AsyncIterator[M.DownloadResponse]:
        current_claims()  # SESSION is enforced by the kit; the id is the capability
        pieces = await self._m.download(request.media_id, request.start_offset)
        async for piece in pieces:
            yield M.DownloadResponse(
                offset=piece.offset,
                data=piece.data,
                size_bytes=piece.size_bytes,
                ciphertext_sha256=piece.ciphertext_sha256,
            )

    async def DeleteMedia(  # noqa: D102
        self, request: M.DeleteMediaRequest, context: Any
    ) -> M.DeleteMediaResponse:
        await self._m.delete(current_claims().account_id, request.media_id)
        return M.DeleteMediaResponse()

    async def GetQuota(  # noqa: D102
        self, request: M.GetQuotaRequest, context: Any
    ) -> M.GetQuotaResponse:
        quota = await self._m.quota(current_claims().account_id)
        ttl = Duration()
        ttl.FromTimedelta(timedelta(seconds=quota.blob_ttl_seconds))
        return M.GetQuotaResponse(
            used_bytes=quota.used_bytes,
            limit_bytes=quota.limit_bytes,
            blob_count=quota.blob_count,
            max_blob_bytes=quota.max_blob_bytes,
            blob_ttl=ttl,
        )
