"""Media domain logic: declare, upload (resumable), verify, download, delete, expire.

Invariants this module enforces (each has a test):

* The server handles ciphertext only; it never receives a media key and stores the media
  id only as its SHA-256 (the id is the download capability).
* Nothing is served before every byte is stored and the SHA-256 of the whole ciphertext
  equals the digest declared at CreateUpload; a mismatch deletes the upload.
* Chunks are written in order: a chunk is stored and ``chunks_received`` advanced while the
  blob's row is locked, so two streams racing on one upload (even on different replicas)
  cannot interleave, and an interrupted upload resumes exactly after its last stored chunk.
* Unknown, expired, deleted, incomplete and malformed ids are indistinguishable to
  Download (``NOT_FOUND``), and another account's upload is ``NOT_FOUND`` to the
  uploader-only RPCs.
* Quota is checked and reserved in one transaction under a per-account lock.
* A batch of chunk writes is shielded from cancellation: a client vanishing mid-write
  cannot leave half an object (orphaned messages no row points to) in the store; and
  deletion tries every index a blob can have, so a batch stored without its commit is
  not left behind either.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from conclave_kit.database import Connection
from conclave_kit.errors import (
    ConclaveError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from conclave_kit.logs import get_logger
from conclave_kit.ratelimit import RateLimiter

from conclave_media import metrics, store
from conclave_media.config import MediaConfig
from conclave_media.storage import ChunkMissing, ChunkStorage

Clock = Callable[[], datetime]
MediaTtl = Callable[[str], Awaitable[float | None]]
_log = get_logger("conclave.media")

MIN_CHUNK = 64 * 1024
MAX_CHUNK = 1024 * 1024
_MEDIA_ID = re.compile(r"^[A-Za-z0-9_-]{43}$")
NOT_FOUND = "media not found"
PURGE_BATCH = 100


def new_media_id() -> str:
    """32 random bytes (256 bits) as unpadded base64url: 43 characters."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def id_hash(media_id: str) -> bytes:
    """SHA-256 of a well-formed media id's 32 bytes; the only form the server keeps.

    Raises:
        NotFound: Not a media id this server could have issued (so malformed ids cannot
            be told apart from unknown ones).
    """
    if not _MEDIA_ID.match(media_id):
        raise NotFound(NOT_FOUND)
    raw = base64.urlsafe_b64decode(media_id + "=")
    # 43 characters carry 258 bits; a non-canonical last character would decode to the
    # same 32 bytes, giving one blob several ids. Only the canonical spelling is accepted.
    if base64.urlsafe_b64encode(raw).decode().rstrip("=") != media_id:
        raise NotFound(NOT_FOUND)
    return hashlib.sha256(raw).digest()


def blob_key(hashed: bytes) -> str:
    """Object-store key of a blob (hex of the id hash)."""
    return hashed.hex()


def _short(hashed: bytes) -> str:
    """A log-safe handle of a blob: 12 hex characters of the id *hash*, never the id."""
    return hashed.hex()[:12]


def _chunk_count(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size)


def _chunk_count_of(row: asyncpg.Record) -> int:
    return _chunk_count(int(row["size_bytes"]), int(row["chunk_size"]))


@dataclass(frozen=True)
class Upload:
    """A declared upload."""

    media_id: str
    chunk_size: int
    upload_expires_at: datetime


@dataclass(frozen=True)
class UploadStatus:
    """How far an upload got."""

    next_offset: int
    size_bytes: int
    chunk_size: int
    complete: bool
    expires_at: datetime


@dataclass(frozen=True)
class Chunk:
    """One chunk of an UploadChunks stream, as the client sent it."""

    media_id: str
    offset: int
    data: bytes
    chunk_sha256: bytes = b""


@dataclass(frozen=True)
class DownloadPiece:
    """One message of a Download stream (size and digest only in the first)."""

    offset: int
    data: bytes
    size_bytes: int = 0
    ciphertext_sha256: bytes = b""


@dataclass(frozen=True)
class Quota:
    """An account's storage use and limits."""

    used_bytes: int
    limit_bytes: int
    blob_count: int
    max_blob_bytes: int
    blob_ttl_seconds: float


class MediaManager:
    """The media service's domain operations.

    Args:
        config: Media settings (limits, TTLs).
        pool: Pool on the ``media`` schema.
        storage: Where ciphertext chunks are kept.
        clock: Current time (injectable so tests move time instead of sleeping).
        media_ttl: The uploader's retention media TTL in seconds, or None for the
            configured default (see :mod:`conclave_media.policy`).
    """

    def __init__(
        self,
        config: MediaConfig,
        pool: asyncpg.Pool,
        storage: ChunkStorage,
        clock: Clock = lambda: datetime.now(UTC),
        media_ttl: MediaTtl | None = None,
    ) -> None:
        self._cfg = config
        self._pool = pool
        self._storage = storage
        self._clock = clock
        self._media_ttl = media_ttl
        self._limits = RateLimiter(pool)

    @property
    def storage(self) -> ChunkStorage:
        """The chunk store (tests inspect it)."""
        return self._storage

    async def create_upload(
        self, account_id: str, size_bytes: int, chunk_size: int, ciphertext_sha256: bytes
    ) -> Upload:
        """Declares a blob and reserves quota for it.

        Raises:
            InvalidArgument: Size 0 or over the limit, bad chunk size, digest not 32 bytes.
            ResourceExhausted: The account's quota would be exceeded (QUOTA_EXCEEDED), or
                it creates uploads too fast (RATE_LIMITED, with retry-after).
        """
        limit = self._cfg.max_file_bytes
        if size_bytes <= 0:
            raise InvalidArgument("size_bytes must be at least 1", reason="INVALID_SIZE")
        if size_bytes > limit:
            raise InvalidArgument(
                f"size_bytes {size_bytes} exceeds the per-file limit of {limit} bytes",
                reason="FILE_TOO_LARGE",
            )
        chunk = chunk_size or MAX_CHUNK
        if not MIN_CHUNK <= chunk <= MAX_CHUNK or chunk & (chunk - 1):
            raise InvalidArgument(
                "chunk_size_bytes must be a power of two from 65536 to 1048576 (0 = 1048576)",
                reason="INVALID_CHUNK_SIZE",
            )
        if len(ciphertext_sha256) != 32:
            raise InvalidArgument(
                "ciphertext_sha256 must be the 32-byte SHA-256 of the ciphertext",
                reason="INVALID_DIGEST",
            )
        await self._limits.take(self._cfg.upload_limit, account_id)
        media_id = new_media_id()
        hashed = id_hash(media_id)
        now = self._clock()
        expires = now + timedelta(seconds=self._cfg.upload_ttl_seconds)
        async with self._pool.acquire() as conn, conn.transaction():
            if self._cfg.quota_bytes:
                await store.lock_account(conn, account_id)
                used, _ = await store.usage(conn, account_id, now)
                if used + size_bytes > self._cfg.quota_bytes:
                    raise ResourceExhausted(
                        f"storage quota exceeded: {used} of {self._cfg.quota_bytes} bytes in "
                        f"use, this upload needs {size_bytes} more; delete media or wait "
                        "for it to expire",
                        reason="QUOTA_EXCEEDED",
                    )
            await store.insert_blob(
                conn,
                id_hash=hashed,
                account_id=account_id,
                size_bytes=size_bytes,
                chunk_size=chunk,
                ciphertext_sha256=ciphertext_sha256,
                now=now,
                expires_at=expires,
            )
        _log.info("upload_created", blob=_short(hashed), size_bytes=size_bytes)
        return Upload(media_id, chunk, expires)

    async def upload_status(self, account_id: str, media_id: str) -> UploadStatus:
        """How far the caller's upload got.

        An upload whose every chunk is stored but whose completion check never ran (the
        process died in between) is verified here, so the client is not left stuck.

        Raises:
            NotFound: Unknown, expired or another account's upload.
            FailedPrecondition: DIGEST_MISMATCH found by that late check (upload discarded).
        """
        hashed = id_hash(media_id)
        async with self._pool.acquire() as conn:
            row = await store.blob(conn, hashed)
        if (
            row is None
            or row["account_id"] != account_id
            or row["state"] == store.DELETED
            or row["expires_at"] <= self._clock()
        ):
            raise NotFound(NOT_FOUND)
        if row["state"] == store.UPLOADING and row["chunks_received"] >= _chunk_count(
            row["size_bytes"], row["chunk_size"]
        ):
            return await self._finish(hashed, None)
        return _status(row)

    async def upload_chunks(self, account_id: str, chunks: AsyncIterator[Chunk]) -> UploadStatus:
        """Stores a stream of chunks of one upload; verifies the blob when it is whole.

        Chunks stored before an error stay stored (the client resumes after the last one).

        Raises:
            InvalidArgument: Empty stream, mixed media ids, wrong chunk length, data beyond
                the declared size, or a chunk whose ``chunk_sha256`` does not match (that
                chunk is not stored).
            NotFound: Unknown id or not the caller's upload.
            FailedPrecondition: Wrong offset (WRONG_OFFSET), upload complete
                (ALREADY_COMPLETE) or expired (UPLOAD_EXPIRED), or the whole-blob digest
                did not match (DIGEST_MISMATCH; the upload is discarded).
        """
        started = time.perf_counter()
        outcome = "failed"
        try:
            status = await self._upload_chunks(account_id, chunks)
            outcome = "complete" if status.complete else "partial"
            return status
        finally:
            metrics.UPLOAD_SECONDS.labels(outcome).observe(time.perf_counter() - started)

    async def _upload_chunks(self, account_id: str, chunks: AsyncIterator[Chunk]) -> UploadStatus:
        iterator = aiter(chunks)
        first = await anext(iterator, None)
        if first is None:
            raise InvalidArgument("the stream carried no chunk", reason="EMPTY_STREAM")
        media_id = first.media_id
        hashed = id_hash(media_id)
        # A reader task receives and checks chunks while the previous batch is being
        # written, so gRPC receive, Postgres and NATS round trips overlap. The queue holds
        # about 2 MiB, bounding memory per stream whatever the chunk size.
        slots = max(2, min(32, 2 * MAX_CHUNK // max(1, len(first.data))))
        queue: asyncio.Queue[Chunk | BaseException | None] = asyncio.Queue(maxsize=slots)
        reader = asyncio.create_task(self._read_chunks(media_id, first, iterator, queue))
        # Running SHA-256 of this stream's chunks; valid for the whole blob only when the
        # stream started at offset 0 (a resumed upload is re-read from storage instead,
        # since hash states cannot be persisted between streams or replicas).
        hasher = hashlib.sha256()
        first_index: int | None = None
        row: asyncpg.Record | None = None
        try:
            done = False
            while not done:
                batch: list[Chunk] = []
                failure: BaseException | None = None
                item = await queue.get()
                while True:
                    if item is None:
                        done = True
                        break
                    if isinstance(item, BaseException):
                        failure = item
                        break
                    batch.append(item)
                    if queue.empty() or sum(len(c.data) for c in batch) >= MAX_CHUNK:
                        break
                    item = queue.get_nowait()
                if batch:
                    # Shielded: if the client goes away, the batch being written still
                    # finishes (or fails) as a whole.
                    row, start, stored, error = await asyncio.shield(
                        self._store_batch(account_id, hashed, batch)
                    )
                    for chunk in batch[:stored]:
                        hasher.update(chunk.data)
                        metrics.UPLOADED_BYTES.inc(len(chunk.data))
                    if first_index is None and stored:
                        first_index = start
                    if error is not None:
                        raise error
                if failure is not None:
                    raise failure
        finally:
            if not reader.done():
                reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        assert row is not None
        if row["chunks_received"] < _chunk_count(row["size_bytes"], row["chunk_size"]):
            return _status(row)
        digest = hasher.digest() if first_index == 0 else None
        return await asyncio.shield(self._finish(hashed, digest))

    @staticmethod
    async def _read_chunks(
        media_id: str,
        first: Chunk,
        rest: AsyncIterator[Chunk],
        queue: asyncio.Queue[Chunk | BaseException | None],
    ) -> None:
        """Feeds checked chunks to ``queue``, then None or the error that ended the stream.

        The error is queued after the chunks that preceded it, so those are stored first.
        """
        chunk: Chunk | None = first
        try:
            while chunk is not None:
                if chunk.media_id != media_id:
                    raise InvalidArgument(
                        "all chunks of one stream must carry the same media_id",
                        reason="MIXED_MEDIA_IDS",
                    )
                if chunk.chunk_sha256 and hashlib.sha256(chunk.data).digest() != chunk.chunk_sha256:
                    raise InvalidArgument(
                        f"chunk at offset {chunk.offset} does not match its chunk_sha256; it "
                        "was not stored, send it again",
                        reason="CHUNK_DIGEST_MISMATCH",
                    )
                await queue.put(chunk)
                chunk = await anext(rest, None)
        except Exception as err:  # client-side errors included: stored chunks stay stored
            await queue.put(err)
            return
        await queue.put(None)

    async def _store_batch(
        self, account_id: str, hashed: bytes, batch: list[Chunk]
    ) -> tuple[asyncpg.Record, int, int, ConclaveError | None]:
        """Writes consecutive chunks under the blob's row lock.

        The chunks that are valid in order are written (concurrently: they are distinct
        objects) and ``chunks_received`` advanced past them in one transaction; the first
        invalid chunk stops the batch and its error is returned (raised by the caller after
        the commit, so what was stored stays stored).

        Returns:
            The updated row, the index of the batch's first chunk, how many chunks were
            stored, and the error of the first rejected chunk (or None).
        """
        error: ConclaveError | None = None
        async with self._pool.acquire() as conn, conn.transaction():
            row = await store.blob(conn, hashed, for_update=True)
            if row is None or row["account_id"] != account_id or row["state"] == store.DELETED:
                raise NotFound(NOT_FOUND)
            if row["state"] == store.COMPLETE:
                raise FailedPrecondition("upload is already complete", reason="ALREADY_COMPLETE")
            if row["expires_at"] <= self._clock():
                raise FailedPrecondition("upload expired; create it again", reason="UPLOAD_EXPIRED")
            size, chunk_size = int(row["size_bytes"]), int(row["chunk_size"])
            start = int(row["chunks_received"])
            accepted: list[Chunk] = []
            for chunk in batch:
                error = _check_chunk(chunk, start + len(accepted), size, chunk_size)
                if error is not None:
                    break
                accepted.append(chunk)
            if accepted:
                key = blob_key(hashed)
                await asyncio.gather(
                    *(
                        self._storage.put_chunk(key, start + i, c.data)
                        for i, c in enumerate(accepted)
                    )
                )
                updated = await store.set_chunks_received(conn, hashed, start + len(accepted))
                assert updated is not None
                row = updated
        return row, start, len(accepted), error

    async def _finish(self, hashed: bytes, digest: bytes | None) -> UploadStatus:
        """Verifies a whole blob and makes it downloadable, or discards it."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await store.blob(conn, hashed, for_update=True)
            if row is None or row["state"] == store.DELETED:
                raise NotFound(NOT_FOUND)
            if row["state"] == store.COMPLETE:
                return _status(row)
            count = _chunk_count(row["size_bytes"], row["chunk_size"])
            if digest is None:
                digest = await self._digest_from_storage(hashed, count)
            matched = digest == bytes(row["ciphertext_sha256"])
            if matched:
                now = self._clock()
                expires = now + timedelta(seconds=await self._ttl(str(row["account_id"])))
                await store.mark_complete(conn, hashed, now, expires)
            else:
                await self._storage.delete_chunks(blob_key(hashed), count)
                await store.delete_blob(conn, hashed)
            done = await store.blob(conn, hashed)
        # Raised after the commit: the discard must stick.
        if done is None:
            _log.info("upload_digest_mismatch", blob=_short(hashed))
            raise FailedPrecondition(
                "the SHA-256 of the uploaded ciphertext does not match the declared "
                "digest; the upload was discarded, create it again",
                reason="DIGEST_MISMATCH",
            )
        _log.info("upload_completed", blob=_short(hashed), size_bytes=row["size_bytes"])
        return _status(done)

    async def _ttl(self, account_id: str) -> float:
        """The blob TTL for the uploader: its retention policy, capped by the config.

        The configured TTL is also the ceiling, because the bucket's age limit (the
        backstop behind the purge) is derived from it.
        """
        policy = None if self._media_ttl is None else await self._media_ttl(account_id)
        if policy is None:
            return self._cfg.blob_ttl_seconds
        return min(policy, self._cfg.blob_ttl_seconds)

    async def _digest_from_storage(self, hashed: bytes, count: int) -> bytes | None:
        """SHA-256 of the stored chunks; None if one is missing (treated as a mismatch)."""
        hasher = hashlib.sha256()
        try:
            for index in range(count):
                hasher.update(await self._storage.get_chunk(blob_key(hashed), index))
        except ChunkMissing:
            return None
        return hasher.digest()

    async def download(self, media_id: str, start_offset: int) -> AsyncIterator[DownloadPiece]:
        """Streams a complete blob's ciphertext from ``start_offset``.

        Validation happens before the first piece, so errors surface as the stream's status.

        Raises:
            NotFound: Unknown, expired, deleted, incomplete or malformed id.
            InvalidArgument: ``start_offset`` negative or not below the size.
        """
        hashed = id_hash(media_id)
        async with self._pool.acquire() as conn:
            row = await store.blob(conn, hashed)
        if row is None or row["state"] != store.COMPLETE or row["expires_at"] <= self._clock():
            raise NotFound(NOT_FOUND)
        size, chunk_size = int(row["size_bytes"]), int(row["chunk_size"])
        if not 0 <= start_offset < size:
            raise InvalidArgument(
                f"start_offset must be from 0 to {size - 1}", reason="INVALID_OFFSET"
            )
        return self._pieces(hashed, size, chunk_size, start_offset, bytes(row["ciphertext_sha256"]))

    async def _pieces(
        self, hashed: bytes, size: int, chunk_size: int, start: int, digest: bytes
    ) -> AsyncIterator[DownloadPiece]:
        started = time.perf_counter()
        outcome = "failed"
        key = blob_key(hashed)
        first = start // chunk_size
        count = _chunk_count(size, chunk_size)
        # Fetch the next chunks from storage while the current one is being sent: storage
        # round trips and gRPC flow control then overlap instead of adding up. The window
        # holds about 2 MiB (two 1 MiB chunks, or 32 of 64 KiB), bounding memory per stream.
        window = max(2, min(32, 2 * MAX_CHUNK // chunk_size))
        pending: deque[asyncio.Task[bytes]] = deque()
        following = first
        try:
            for index in range(first, count):
                while following < count and len(pending) < window:
                    pending.append(asyncio.create_task(self._storage.get_chunk(key, following)))
                    following += 1
                try:
                    data = await pending.popleft()
                except ChunkMissing:
                    # Deleted (or expired and purged) while being downloaded.
                    raise NotFound(NOT_FOUND) from None
                offset = index * chunk_size
                if index == first:
                    data = data[start - offset :]
                    offset = start
                    piece = DownloadPiece(offset, data, size, digest)
                else:
                    piece = DownloadPiece(offset, data)
                metrics.DOWNLOADED_BYTES.inc(len(data))
                yield piece
            outcome = "complete"
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            metrics.DOWNLOAD_SECONDS.labels(outcome).observe(time.perf_counter() - started)

    async def delete(self, account_id: str, media_id: str) -> None:
        """Deletes the caller's blob (complete or not) and releases its quota.

        Idempotent for the uploader: the row stays as a tombstone (no chunks, no quota)
        until the blob would have expired, so deleting again succeeds.

        Raises:
            NotFound: Unknown id or another account's blob.
        """
        hashed = id_hash(media_id)
        async with self._pool.acquire() as conn, conn.transaction():
            row = await store.blob(conn, hashed, for_update=True)
            if row is None or row["account_id"] != account_id:
                raise NotFound(NOT_FOUND)
            if row["state"] == store.DELETED:
                return
            await self._storage.delete_chunks(blob_key(hashed), _chunk_count_of(row))
            await store.mark_deleted(conn, hashed)
        _log.info("media_deleted", blob=_short(hashed))

    async def _delete_locked(self, conn: Connection, row: asyncpg.Record) -> None:
        """Deletes a locked row's chunks, then the row.

        Chunks go first: if the process dies in between, the row (not served once expired
        or deleted) is found again by the next purge and nothing is left unreferenced.
        Every index the blob can have is tried, not only those below ``chunks_received``:
        a batch may have landed in storage without its commit.
        """
        hashed = bytes(row["id_hash"])
        await self._storage.delete_chunks(blob_key(hashed), _chunk_count_of(row))
        await store.delete_blob(conn, hashed)

    async def quota(self, account_id: str) -> Quota:
        """The caller's storage use and limits."""
        async with self._pool.acquire() as conn:
            used, count = await store.usage(conn, account_id, self._clock())
        return Quota(
            used_bytes=used,
            limit_bytes=self._cfg.quota_bytes,
            blob_count=count,
            max_blob_bytes=self._cfg.max_file_bytes,
            blob_ttl_seconds=self._cfg.blob_ttl_seconds,
        )

    async def purge_expired(self, batch: int = PURGE_BATCH) -> int:
        """Deletes every expired blob and discarded upload from Postgres and storage.

        Safe to run on several replicas at once (rows are claimed with SKIP LOCKED) and
        idempotent. The retention purge job calls it.

        Also drops idle rate-limit buckets (full again, so they carry no information).

        Returns:
            How many blobs were deleted.
        """
        return sum((await self.purge_expired_by_state(batch)).values())

    async def purge_expired_by_state(self, batch: int = PURGE_BATCH) -> dict[int, int]:
        """As :meth:`purge_expired`, counted by the state the rows were in.

        Returns:
            Blobs deleted per ``store`` state (UPLOADING, COMPLETE, DELETED).
        """
        await self._limits.purge_idle(self._cfg.upload_limit.seconds_to_full)
        now = self._clock()
        by_state: dict[int, int] = {}
        await self._delete_batches(
            lambda conn: store.lock_expired(conn, now, batch), "expired", by_state
        )
        return by_state

    async def oldest_expired(self) -> dict[int, datetime]:
        """Earliest ``expires_at`` in the past per state (purge lag)."""
        rows = await self._pool.fetch(
            "SELECT state, min(expires_at) AS due FROM blobs WHERE expires_at <= $1 GROUP BY state",
            self._clock(),
        )
        return {int(r["state"]): r["due"] for r in rows}

    def now(self) -> datetime:
        """The manager's clock."""
        return self._clock()

    async def erase_account(self, account_id: str, batch: int = PURGE_BATCH) -> int:
        """Deletes every blob an account uploaded (account erasure). Idempotent.

        Returns:
            How many blobs were deleted.
        """
        return await self._delete_batches(
            lambda conn: store.lock_account_blobs(conn, account_id, batch), "erasure"
        )

    async def _delete_batches(
        self,
        select: Callable[[Connection], Awaitable[list[asyncpg.Record]]],
        kind: str,
        by_state: dict[int, int] | None = None,
    ) -> int:
        total = 0
        while True:
            async with self._pool.acquire() as conn, conn.transaction():
                rows = await select(conn)
                for row in rows:
                    await self._delete_locked(conn, row)
            if by_state is not None:
                for row in rows:
                    by_state[int(row["state"])] = by_state.get(int(row["state"]), 0) + 1
            total += len(rows)
            metrics.PURGED_BLOBS.labels(kind).inc(len(rows))
            if not rows:
                break
        if total:
            _log.info("media_purged", kind=kind, blobs=total)
        return total


def _check_chunk(chunk: Chunk, index: int, size: int, chunk_size: int) -> ConclaveError | None:
    """Why ``chunk`` cannot be chunk ``index`` of a blob (None if it can)."""
    expected = index * chunk_size
    if chunk.offset != expected:
        return FailedPrecondition(
            f"offset {chunk.offset} is not the next expected offset {expected}",
            reason="WRONG_OFFSET",
        )
    if expected >= size:
        # Every chunk is stored (and the completion check is running, or did not run
        # because of a crash; GetUploadStatus then runs it).
        return InvalidArgument(
            f"data beyond the declared size of {size} bytes", reason="BEYOND_SIZE"
        )
    if len(chunk.data) > size - expected:
        return InvalidArgument(
            f"data beyond the declared size of {size} bytes", reason="BEYOND_SIZE"
        )
    want = min(chunk_size, size - expected)
    if len(chunk.data) != want:
        return InvalidArgument(
            f"chunk at offset {expected} must be {want} bytes, got {len(chunk.data)}",
            reason="WRONG_CHUNK_LENGTH",
        )
    return None


def _status(row: asyncpg.Record) -> UploadStatus:
    size, chunk_size = int(row["size_bytes"]), int(row["chunk_size"])
    complete = row["state"] == store.COMPLETE
    return UploadStatus(
        next_offset=size if complete else min(size, int(row["chunks_received"]) * chunk_size),
        size_bytes=size,
        chunk_size=chunk_size,
        complete=complete,
        expires_at=row["expires_at"],
    )
