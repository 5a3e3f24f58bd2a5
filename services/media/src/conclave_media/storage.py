"""Where ciphertext chunks live: a small interface and its JetStream object-store backend.

The manager only needs three operations on chunks of one blob (put, get, delete), so an
S3-compatible store can be added later by implementing :class:`ChunkStorage` (objects named
``<blob key>/<index>``, the same layout).

Layout choice for JetStream: **one object per chunk** in the object-store bucket
``conclave_media``, named ``<blob key>/<chunk index>``, rather than one object per blob or a
plain stream with per-chunk subjects:

* nats-py's object store writes an object in one call and cannot append, so a resumable
  upload (chunks arriving over several streams, possibly on different replicas) needs the
  unit of writing to be the chunk;
* the object store already splits each chunk into 128 KiB messages (below NATS'
  ``max_payload`` of 1 MiB, which a 1 MiB chunk plus headers would exceed as a single
  message) and records a SHA-256 of each object, checked on every read, so a corrupted
  stored chunk is detected instead of served;
* rewriting a chunk (a client retrying after a crash between store and commit) replaces
  the object atomically through the object store's meta roll-up.

The blob key is the hex SHA-256 of the media id, never the id itself: the id is the
download capability, and neither a Postgres dump nor a NATS store directory may hand it
out. Deleting purges the chunk messages *and* the object's meta message, so no tombstone
naming the blob stays behind (nats-py's own ``delete`` leaves one).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Protocol

from conclave_kit.nats_bus import ensure_stream
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.object_store import (
    OBJ_ALL_CHUNKS_PRE_TEMPLATE,
    OBJ_ALL_META_PRE_TEMPLATE,
    OBJ_CHUNKS_PRE_TEMPLATE,
    OBJ_DIGEST_TYPE,
    OBJ_META_PRE_TEMPLATE,
    OBJ_STREAM_TEMPLATE,
    ObjectStore,
)

BUCKET = "conclave_media"


class ChunkMissing(Exception):
    """A chunk that should exist is not in the store (deleted concurrently, or lost)."""


class ChunkStorage(Protocol):
    """Ciphertext chunk store. Chunks are opaque bytes of at most 1 MiB."""

    async def put_chunk(self, blob_key: str, index: int, data: bytes) -> None:
        """Stores (or replaces) chunk ``index`` of blob ``blob_key``."""

    async def get_chunk(self, blob_key: str, index: int) -> bytes:
        """Returns chunk ``index`` of ``blob_key``.

        Raises:
            ChunkMissing: The chunk does not exist or failed its integrity check.
        """

    async def delete_chunks(self, blob_key: str, count: int) -> int:
        """Deletes chunks ``0 .. count-1`` of ``blob_key``; missing ones are skipped.

        Returns:
            How many chunks existed and were deleted.
        """


def object_name(blob_key: str, index: int) -> str:
    """Object name of one chunk."""
    return f"{blob_key}/{index}"


def bucket_stream_config(
    replicas: int, max_age_seconds: float, bucket: str = BUCKET
) -> api.StreamConfig:
    """The stream behind the object-store bucket, as ``create_object_store`` declares it.

    Same subjects and options as nats-py's, plus an age limit and a description.
    The age limit is a backstop only: the purge job deletes expired blobs long before it.
    It must be at least the upload window plus the blob TTL, since a chunk is written at
    the earliest at CreateUpload time and its blob expires at the latest that long after.
    """
    return api.StreamConfig(
        name=OBJ_STREAM_TEMPLATE.format(bucket=bucket),
        description="Conclave media: encrypted attachment chunks (ciphertext only)",
        subjects=[
            OBJ_ALL_CHUNKS_PRE_TEMPLATE.format(bucket=bucket),
            OBJ_ALL_META_PRE_TEMPLATE.format(bucket=bucket),
        ],
        max_age=max_age_seconds,
        storage=api.StorageType.FILE,
        num_replicas=replicas,
        discard=api.DiscardPolicy.NEW,
        allow_rollup_hdrs=True,
        allow_direct=True,
        # The server's default, spelled out: nats-py's dataclass defaults to 0, which would
        # make every start-up see a "changed" configuration and update the stream.
        duplicate_window=120,
    )


class JetStreamObjectStorage:
    """:class:`ChunkStorage` on a JetStream object-store bucket (one object per chunk).

    Args:
        js: JetStream context.
        bucket: Object-store bucket name.
    """

    def __init__(self, js: JetStreamContext, bucket: str = BUCKET) -> None:
        self._js = js
        self._bucket = bucket
        self._stream = OBJ_STREAM_TEMPLATE.format(bucket=bucket)
        self._store = ObjectStore(name=bucket, stream=self._stream, js=js)

    @classmethod
    async def open(
        cls, js: JetStreamContext, *, replicas: int, max_age_seconds: float, bucket: str = BUCKET
    ) -> JetStreamObjectStorage:
        """Creates the bucket if missing (or updates its limits), idempotently.

        Several replicas starting at once may all call this; the kit's ``ensure_stream``
        settles the race.
        """
        await ensure_stream(js, bucket_stream_config(replicas, max_age_seconds, bucket))
        return cls(js, bucket)

    async def put_chunk(self, blob_key: str, index: int, data: bytes) -> None:
        """See :class:`ChunkStorage`."""
        await self._store.put(object_name(blob_key, index), data)

    async def get_chunk(self, blob_key: str, index: int) -> bytes:
        """See :class:`ChunkStorage`.

        Reads with JetStream *direct gets* (meta by subject, then each 128 KiB piece as the
        next message on the object's chunk subject), not nats-py's ``ObjectStore.get``:
        that creates an ordered consumer per object, and consumers linger on the server
        after use, so a download of 1,000 chunks (or 10 concurrent 100-chunk downloads)
        hit the server's consumer limit. The object's size and SHA-256 are checked here.
        """
        try:
            info = await self._store.get_info(object_name(blob_key, index))
        except (ObjectNotFoundError, NotFoundError) as err:
            raise ChunkMissing(f"chunk {index} missing") from err
        except Exception as err:  # BadObjectMetaError: not servable
            raise ChunkMissing(f"chunk {index} unreadable ({type(err).__name__})") from err
        if not info.nuid or info.chunks is None or info.size is None or not info.digest:
            raise ChunkMissing(f"chunk {index} has incomplete metadata")
        subject = OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=self._bucket, obj=info.nuid)
        parts: list[bytes] = []
        seq = 1
        try:
            for _ in range(info.chunks):
                msg = await self._js.get_msg(
                    self._stream, seq=seq, subject=subject, direct=True, next=True
                )
                if msg.subject != subject or msg.seq is None:
                    raise ChunkMissing(f"chunk {index} is incomplete")
                parts.append(msg.data or b"")
                seq = msg.seq + 1
        except NotFoundError as err:  # purged while being read
            raise ChunkMissing(f"chunk {index} missing") from err
        data = b"".join(parts)
        expected = info.digest.removeprefix(OBJ_DIGEST_TYPE).removeprefix(OBJ_DIGEST_TYPE.upper())
        actual = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
        if len(data) != info.size or expected.rstrip("=") != actual.rstrip("="):
            raise ChunkMissing(f"chunk {index} failed its integrity check")
        return data

    async def delete_chunks(self, blob_key: str, count: int) -> int:
        """See :class:`ChunkStorage`."""
        deleted = 0
        for index in range(count):
            name = object_name(blob_key, index)
            meta_subject = OBJ_META_PRE_TEMPLATE.format(
                bucket=self._bucket, obj=base64.urlsafe_b64encode(name.encode()).decode()
            )
            try:
                info = await self._store.get_info(name, show_deleted=True)
            except (ObjectNotFoundError, NotFoundError):
                continue
            if info.nuid:
                await self._js.purge_stream(
                    self._stream,
                    subject=OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=self._bucket, obj=info.nuid),
                )
            await self._js.purge_stream(self._stream, subject=meta_subject)
            deleted += 1
        return deleted

    async def count_messages(self) -> int:
        """Messages in the bucket's stream (tests check that deletes leave nothing)."""
        info = await self._js.stream_info(self._stream)
        return int(info.state.messages)
