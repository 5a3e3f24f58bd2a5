"""PostgreSQL access for the media schema (blob metadata; chunks live in object storage).

Every function takes the connection it runs on, so the manager decides transaction
boundaries (a row lock held while a chunk is written, quota check and reservation together).
"""

from __future__ import annotations

from datetime import datetime

import asyncpg
from conclave_kit.database import Connection

Record = asyncpg.Record
UPLOADING = 1
COMPLETE = 2
DELETED = 3


async def lock_account(conn: Connection, account_id: str) -> None:
    """Serialises quota decisions of one account until the transaction ends.

    Without it two concurrent CreateUploads could each see room for themselves and
    together exceed the quota.
    """
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('conclave-media-quota:' || $1, 0))",
        account_id,
    )


async def usage(conn: Connection, account_id: str, now: datetime) -> tuple[int, int]:
    """Bytes and blob count the account holds (complete blobs and live reservations).

    Expired rows awaiting the purge and tombstones of deleted blobs do not count: they
    are no longer served.
    """
    row = await conn.fetchrow(
        "SELECT coalesce(sum(size_bytes), 0) AS used, count(*) AS blobs FROM blobs "
        "WHERE account_id = $1 AND expires_at > $2 AND state <> $3",
        account_id,
        now,
        DELETED,
    )
    assert row is not None
    return int(row["used"]), int(row["blobs"])


async def insert_blob(
    conn: Connection,
    *,
    id_hash: bytes,
    account_id: str,
    size_bytes: int,
    chunk_size: int,
    ciphertext_sha256: bytes,
    now: datetime,
    expires_at: datetime,
) -> None:
    """Declares an upload (state uploading, nothing received)."""
    await conn.execute(
        "INSERT INTO blobs (id_hash, account_id, size_bytes, chunk_size, ciphertext_sha256, "
        "state, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        id_hash,
        account_id,
        size_bytes,
        chunk_size,
        ciphertext_sha256,
        UPLOADING,
        now,
        expires_at,
    )


async def blob(conn: Connection, id_hash: bytes, *, for_update: bool = False) -> Record | None:
    """The blob row, optionally locked until the transaction ends."""
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(
        f"SELECT * FROM blobs WHERE id_hash = $1{lock}",  # noqa: S608 - constant suffix
        id_hash,
    )


async def set_chunks_received(conn: Connection, id_hash: bytes, chunks: int) -> Record | None:
    """Records that chunks ``0 .. chunks-1`` are stored; returns the updated row."""
    return await conn.fetchrow(
        "UPDATE blobs SET chunks_received = $2 WHERE id_hash = $1 RETURNING *", id_hash, chunks
    )


async def mark_complete(
    conn: Connection, id_hash: bytes, now: datetime, expires_at: datetime
) -> None:
    """Makes a verified blob downloadable until ``expires_at``."""
    await conn.execute(
        "UPDATE blobs SET state = $2, completed_at = $3, expires_at = $4 WHERE id_hash = $1",
        id_hash,
        COMPLETE,
        now,
        expires_at,
    )


async def mark_deleted(conn: Connection, id_hash: bytes) -> None:
    """Turns the row into a tombstone (its chunks are gone) until its expiry."""
    await conn.execute(
        "UPDATE blobs SET state = $2, chunks_received = 0 WHERE id_hash = $1", id_hash, DELETED
    )


async def delete_blob(conn: Connection, id_hash: bytes) -> None:
    """Deletes the metadata row (after its chunks are gone)."""
    await conn.execute("DELETE FROM blobs WHERE id_hash = $1", id_hash)


async def lock_expired(conn: Connection, now: datetime, limit: int) -> list[Record]:
    """Up to ``limit`` expired rows, oldest first, locked for this transaction.

    ``SKIP LOCKED`` lets several replicas purge at once without waiting on (or deleting
    twice) the same rows.
    """
    return list(
        await conn.fetch(
            "SELECT id_hash, size_bytes, chunk_size, state FROM blobs WHERE expires_at <= $1 "
            "ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED",
            now,
            limit,
        )
    )


async def lock_account_blobs(conn: Connection, account_id: str, limit: int) -> list[Record]:
    """Up to ``limit`` rows of one account, locked for this transaction (erasure)."""
    return list(
        await conn.fetch(
            "SELECT id_hash, size_bytes, chunk_size, state FROM blobs WHERE account_id = $1 "
            "LIMIT $2 FOR UPDATE SKIP LOCKED",
            account_id,
            limit,
        )
    )
