"""A synchronous client of ``conclave.media.v1.MediaService``: resumable upload, download.

Only ciphertext passes through here: :mod:`conclave_client.files` encrypts on the device
and keeps the key. Uploads survive interruptions: after a transport failure or a
``WRONG_OFFSET`` answer, :meth:`MediaClient.upload` asks ``GetUploadStatus`` where the
server stands and continues from its last stored chunk (the server keeps stored chunks for
24 hours). Downloads resume from the last byte received (``start_offset``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import grpc
from conclave.media.v1 import media_pb2, media_pb2_grpc

from conclave_client.auth_client import DEFAULT_TIMEOUT, AuthClient, ClientError, error_from_rpc

UPLOAD_CHUNK_SIZE = 1024 * 1024
"""The largest chunk the server accepts: fewest round trips and object-store writes."""
MAX_ATTEMPTS = 6
"""Consecutive transfer attempts without progress before giving up."""
_TRANSIENT = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "INTERNAL", "UNKNOWN", None}
_SECONDS_PER_MIB = 10.0
"""Deadline allowance per MiB of a transfer stream (on top of the unary timeout)."""

Progress = Callable[[int], None]
"""Called with the number of bytes confirmed (upload) or received (download) so far."""


@dataclass(frozen=True)
class UploadStatus:
    """Where an upload stands (``GetUploadStatus``)."""

    next_offset: int
    size: int
    chunk_size: int
    complete: bool


@dataclass(frozen=True)
class Quota:
    """The caller's storage use and the server's limits (``GetQuota``)."""

    used_bytes: int
    limit_bytes: int
    blob_count: int
    max_blob_bytes: int


class MediaClient:
    """MediaService calls made with a session.

    Args:
        address: ``host:port`` of the media service.
        auth: The session (its tokens are refreshed as needed).
        timeout: Seconds per unary RPC.
        sleep: Pause between retries (injectable for tests).
    """

    def __init__(
        self,
        address: str,
        auth: AuthClient,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.address = address
        self._auth = auth
        self._timeout = timeout
        self._sleep = sleep
        self._channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", 4 * 1024 * 1024),
                ("grpc.max_send_message_length", 4 * 1024 * 1024),
            ],
        )
        self._stub = media_pb2_grpc.MediaServiceStub(self._channel)

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def __enter__(self) -> MediaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rpc(self, call: Callable[[tuple[tuple[str, str], ...]], object]) -> object:
        return self._auth.authorized(call, service="media", address=self.address)

    def quota(self) -> Quota:
        """The caller's quota and the per-blob limit."""
        request = media_pb2.GetQuotaRequest()
        reply = self._rpc(
            lambda md: self._stub.GetQuota(request, metadata=md, timeout=self._timeout)
        )
        assert isinstance(reply, media_pb2.GetQuotaResponse)
        return Quota(reply.used_bytes, reply.limit_bytes, reply.blob_count, reply.max_blob_bytes)

    def create_upload(
        self, size: int, digest: bytes, chunk_size: int = UPLOAD_CHUNK_SIZE
    ) -> tuple[str, int]:
        """Declares a ciphertext blob; returns (media id, chunk size the server enforces).

        Raises:
            ClientError: e.g. ``RESOURCE_EXHAUSTED`` / ``QUOTA_EXCEEDED``, ``INVALID_ARGUMENT``.
        """
        request = media_pb2.CreateUploadRequest(
            size_bytes=size, chunk_size_bytes=chunk_size, ciphertext_sha256=digest
        )
        reply = self._rpc(
            lambda md: self._stub.CreateUpload(request, metadata=md, timeout=self._timeout)
        )
        assert isinstance(reply, media_pb2.CreateUploadResponse)
        return reply.media_id, int(reply.chunk_size_bytes)

    def status(self, media_id: str) -> UploadStatus:
        """Where the upload stands.

        Raises:
            ClientError: ``NOT_FOUND`` when the upload is unknown or expired.
        """
        request = media_pb2.GetUploadStatusRequest(media_id=media_id)
        reply = self._rpc(
            lambda md: self._stub.GetUploadStatus(request, metadata=md, timeout=self._timeout)
        )
        assert isinstance(reply, media_pb2.GetUploadStatusResponse)
        return UploadStatus(
            int(reply.next_offset),
            int(reply.size_bytes),
            int(reply.chunk_size_bytes),
            reply.complete,
        )

    def delete(self, media_id: str) -> None:
        """Deletes a blob of ours (idempotent)."""
        request = media_pb2.DeleteMediaRequest(media_id=media_id)
        self._rpc(lambda md: self._stub.DeleteMedia(request, metadata=md, timeout=self._timeout))

    def upload(
        self,
        media_id: str,
        source: BinaryIO,
        *,
        progress: Progress | None = None,
        max_chunks_per_stream: int | None = None,
    ) -> UploadStatus:
        """Uploads the ciphertext in ``source`` from where the server stands to the end.

        Each stream starts at the server's next offset (``GetUploadStatus``), so a rerun
        after any interruption, in this process or another, only sends what is missing.
        Transport failures and ``WRONG_OFFSET`` are retried with back-off as long as an
        attempt makes progress (at most :data:`MAX_ATTEMPTS` in a row without).

        Args:
            media_id: From :meth:`create_upload`.
            source: The whole ciphertext, seekable.
            progress: Called with the bytes the server has confirmed or been sent.
            max_chunks_per_stream: End each stream after this many chunks (tests use it
                to exercise resumption); None sends everything in one stream.

        Returns:
            The final status (``complete`` True).

        Raises:
            ClientError: A permanent failure (``DIGEST_MISMATCH``: the upload was discarded
                by the server; ``NOT_FOUND``: expired), or no progress after retries.
        """
        failures = 0
        backoff = 0.5
        while True:
            status = self.status(media_id)
            if progress is not None:
                progress(status.next_offset)
            if status.complete:
                return status
            start = status.next_offset
            stream_bytes = status.size - start
            deadline = self._timeout + _SECONDS_PER_MIB * stream_bytes / (1024 * 1024)

            def call(
                md: tuple[tuple[str, str], ...],
                start: int = start,
                deadline: float = deadline,
                status: UploadStatus = status,
            ) -> media_pb2.UploadChunksResponse:
                # A fresh generator per attempt: a retried call must not reuse a spent one.
                chunks = self._chunks(
                    media_id, source, start, status.size, status.chunk_size,
                    progress, max_chunks_per_stream,
                )  # fmt: skip
                reply: media_pb2.UploadChunksResponse = self._stub.UploadChunks(
                    chunks, metadata=md, timeout=deadline
                )
                return reply

            try:
                reply = self._auth.authorized(call, service="media", address=self.address)
            except ClientError as err:
                retryable = err.code in _TRANSIENT or err.reason == "WRONG_OFFSET"
                if not retryable:
                    raise
                # Whatever the failure, the server's stored chunks are the truth: ask again.
                try:
                    after = self.status(media_id).next_offset
                except ClientError as status_err:
                    if status_err.code not in _TRANSIENT:
                        raise
                    after = start
                failures = 0 if after > start else failures + 1
                if failures >= MAX_ATTEMPTS:
                    raise ClientError(
                        f"upload stopped making progress at byte {after} of {status.size}: "
                        f"{err} (run the same command again to resume)",
                        reason=err.reason,
                        code=err.code,
                    ) from None
                self._sleep(backoff if failures else 0.0)
                backoff = min(backoff * 2, 8.0) if failures else 0.5
                continue
            if reply.complete:
                if progress is not None:
                    progress(int(reply.next_offset))
                return UploadStatus(int(reply.next_offset), status.size, status.chunk_size, True)
            failures = 0  # a stream that ended early on purpose: continue from the status

    @staticmethod
    def _chunks(
        media_id: str,
        source: BinaryIO,
        start: int,
        size: int,
        chunk_size: int,
        progress: Progress | None,
        limit: int | None,
    ) -> Iterator[media_pb2.UploadChunksRequest]:
        offset = start
        sent = 0
        source.seek(offset)
        while offset < size and (limit is None or sent < limit):
            data = source.read(min(chunk_size, size - offset))
            if not data:
                raise ClientError("the local ciphertext file is shorter than declared")
            yield media_pb2.UploadChunksRequest(
                media_id=media_id,
                offset=offset,
                data=data,
                chunk_sha256=hashlib.sha256(data).digest(),
            )
            offset += len(data)
            sent += 1
            if progress is not None:
                progress(offset)

    def download(
        self,
        media_id: str,
        sink: Callable[[bytes], None],
        *,
        expected_digest: bytes,
        progress: Progress | None = None,
    ) -> int:
        """Streams a blob's ciphertext into ``sink``; resumes after transport failures.

        Args:
            media_id: The blob.
            sink: Receives the ciphertext in order, each byte once.
            expected_digest: SHA-256 the sender announced end to end; a server announcing
                another digest is refused before any data is accepted.
            progress: Called with the bytes received so far.

        Returns:
            The ciphertext size.

        Raises:
            ClientError: ``NOT_FOUND`` (unknown, expired or deleted), a digest the sender
                did not announce, or no progress after retries.
        """
        received = 0
        size = -1
        failures = 0
        while size < 0 or received < size:
            metadata = self._auth.authorized_metadata()
            remaining = max(size - received, 1024 * 1024)
            deadline = self._timeout + _SECONDS_PER_MIB * remaining / (1024 * 1024)
            request = media_pb2.DownloadRequest(media_id=media_id, start_offset=received)
            call = self._stub.Download(request, metadata=metadata, timeout=deadline)
            before = received
            try:
                for item in call:
                    if item.size_bytes:
                        if size >= 0 and item.size_bytes != size:
                            raise ClientError("the media server changed the blob's size")
                        size = int(item.size_bytes)
                    if item.ciphertext_sha256 and bytes(item.ciphertext_sha256) != expected_digest:
                        raise ClientError("the media server offers a different file (digest)")
                    if item.offset != received:
                        raise ClientError("the media server sent data out of order")
                    if size < 0 or received + len(item.data) > size:
                        raise ClientError("the media server sent more data than it announced")
                    sink(bytes(item.data))
                    received += len(item.data)
                    if progress is not None:
                        progress(received)
                if size < 0:
                    raise ClientError("the media server sent an empty download")
                if received != size:
                    raise ClientError("the download ended early", code="UNAVAILABLE")
            except grpc.RpcError as rpc_err:
                err = error_from_rpc(rpc_err, self.address, "media")
                if err.code == "UNAUTHENTICATED" and err.reason != "FRESH_AUTH_REQUIRED":
                    self._auth.refresh(force=True)
                elif err.code not in _TRANSIENT:
                    raise err from None
                failures = 0 if received > before else failures + 1
                if failures >= MAX_ATTEMPTS:
                    raise err from None
                self._sleep(min(0.5 * 2**failures, 8.0))
            except ClientError as err:
                if err.code != "UNAVAILABLE":
                    raise
                failures = 0 if received > before else failures + 1
                if failures >= MAX_ATTEMPTS:
                    raise
            finally:
                call.cancel()  # type: ignore[no-untyped-call]
        return size
