"""PostgreSQL index of the items stored in the message streams (``messaging.stored_messages``).

JetStream deletes by sequence (``STREAM.MSG.DELETE``) or by subject, but cannot answer
"which messages expired" or "which messages name this account". Every stored item (a 1:1
copy, a group message, a membership change in a group log) therefore gets a row here
with its stream position, routing ids and expiry, and no content. The purge claims
expired rows with ``FOR UPDATE SKIP LOCKED`` so concurrent replicas never work on the
same item; erasure finds an account's items through ``named_account_ids``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from conclave_kit.database import Connection


@dataclass(frozen=True)
class Item:
    """One stored item's row (what the sending replica knows after JetStream's ack)."""

    stream: str
    seq: int
    subject: str
    sender_account_id: str | None
    recipient_account_id: str | None
    named_account_ids: Sequence[str] | None
    message_id: str | None
    size_bytes: int
    expires_at: datetime


async def insert(conn: Connection, items: Sequence[Item]) -> None:
    """Indexes stored items (one statement whatever their number; repeats are ignored).

    ``ON CONFLICT DO NOTHING``: a retried send whose first index write failed re-indexes
    the original copy through its duplicate ack without an error.
    """
    if not items:
        return
    # Arrays of uuid[] cannot be unnested row-wise, so the names travel as text and are
    # split back; a NULL entry stays NULL.
    await conn.execute(
        "INSERT INTO stored_messages (stream, seq, subject, sender_account_id,"
        " recipient_account_id, named_account_ids, message_id, size_bytes, expires_at)"
        " SELECT s, q, j, snd, rcp, string_to_array(nm, ',')::uuid[], mid, sz, exp"
        " FROM unnest($1::text[], $2::bigint[], $3::text[], $4::uuid[], $5::uuid[],"
        "  $6::text[], $7::uuid[], $8::int[], $9::timestamptz[])"
        "  AS t(s, q, j, snd, rcp, nm, mid, sz, exp)"
        " ON CONFLICT (stream, seq) DO NOTHING",
        [i.stream for i in items],
        [i.seq for i in items],
        [i.subject for i in items],
        [i.sender_account_id for i in items],
        [i.recipient_account_id for i in items],
        [",".join(i.named_account_ids) if i.named_account_ids else None for i in items],
        [i.message_id for i in items],
        [i.size_bytes for i in items],
        [i.expires_at for i in items],
    )


async def claim_expired(
    conn: Connection, stream: str, now: datetime, limit: int, skip: Sequence[int] = ()
) -> list[asyncpg.Record]:
    """Up to ``limit`` expired rows of ``stream``, oldest expiry first, locked.

    ``SKIP LOCKED``: rows another replica's purge holds are left to it, so two purges
    never delete (or count) the same item. ``skip``: sequences whose delete failed
    earlier in this run.
    """
    return list(
        await conn.fetch(
            "SELECT stream, seq, subject FROM stored_messages"
            " WHERE stream = $1 AND expires_at <= $2 AND NOT (seq = ANY($4::bigint[]))"
            " ORDER BY expires_at LIMIT $3 FOR UPDATE SKIP LOCKED",
            stream,
            now,
            limit,
            list(skip),
        )
    )


async def delete(conn: Connection, stream: str, seqs: Sequence[int]) -> int:
    """Deletes rows by sequence; returns how many went."""
    status = await conn.execute(
        "DELETE FROM stored_messages WHERE stream = $1 AND seq = ANY($2::bigint[])",
        stream,
        list(seqs),
    )
    return int(status.split()[-1])


async def delete_subject(conn: Connection, subject: str, *, below: int | None = None) -> int:
    """Deletes the rows of a subject (those with ``seq < below`` when given).

    Called when JetStream purged the subject (acknowledged mailbox copies, a removed
    device, a deleted group): the index must not point at messages that are gone.
    """
    if below is None:
        status = await conn.execute("DELETE FROM stored_messages WHERE subject = $1", subject)
    else:
        status = await conn.execute(
            "DELETE FROM stored_messages WHERE subject = $1 AND seq < $2", subject, below
        )
    return int(status.split()[-1])


async def oldest_expired(conn: Connection, stream: str, now: datetime) -> datetime | None:
    """Expiry of the longest-overdue row of ``stream`` still stored (None: none)."""
    value = await conn.fetchval(
        "SELECT min(expires_at) FROM stored_messages WHERE stream = $1 AND expires_at <= $2",
        stream,
        now,
    )
    return value if isinstance(value, datetime) else None


async def claim_naming(
    conn: Connection, account_id: str, limit: int, skip: Sequence[int] = ()
) -> list[asyncpg.Record]:
    """Up to ``limit`` rows of items that name ``account_id`` in clear, locked (erasure)."""
    return list(
        await conn.fetch(
            "SELECT stream, seq, subject FROM stored_messages"
            " WHERE named_account_ids @> ARRAY[$1::uuid] AND NOT (seq = ANY($3::bigint[]))"
            " LIMIT $2 FOR UPDATE SKIP LOCKED",
            account_id,
            limit,
            list(skip),
        )
    )


async def count_naming(conn: Connection, account_id: str) -> int:
    """How many rows still name ``account_id`` (locked ones included)."""
    value = await conn.fetchval(
        "SELECT count(*) FROM stored_messages WHERE named_account_ids @> ARRAY[$1::uuid]",
        account_id,
    )
    return int(value)


async def mailbox_subjects(conn: Connection, account_id: str) -> list[str]:
    """Mailbox subjects that hold (or held) 1:1 copies for the account's devices."""
    rows = await conn.fetch(
        "SELECT DISTINCT subject FROM stored_messages WHERE recipient_account_id = $1",
        account_id,
    )
    return [str(r["subject"]) for r in rows]


async def for_recipient(conn: Connection, account_id: str) -> list[asyncpg.Record]:
    """Rows of 1:1 copies waiting in the account's devices' mailboxes (export)."""
    return list(
        await conn.fetch(
            "SELECT * FROM stored_messages WHERE recipient_account_id = $1 ORDER BY stream, seq",
            account_id,
        )
    )


async def sent_by(conn: Connection, account_id: str) -> list[asyncpg.Record]:
    """Rows of items the account sent that are still stored (export)."""
    return list(
        await conn.fetch(
            "SELECT * FROM stored_messages WHERE named_account_ids @> ARRAY[$1::uuid]"
            " AND sender_account_id = $1 ORDER BY stream, seq",
            account_id,
        )
    )


async def in_subject_after(conn: Connection, subject: str, after: int) -> list[asyncpg.Record]:
    """Rows of a subject above sequence ``after`` (a device's pending group items)."""
    return list(
        await conn.fetch(
            "SELECT * FROM stored_messages WHERE subject = $1 AND seq > $2 ORDER BY seq",
            subject,
            after,
        )
    )
