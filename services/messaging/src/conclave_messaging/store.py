"""PostgreSQL access of the messaging service (schema ``messaging``).

Functions take a connection so the manager decides the transaction boundaries; membership
changes lock the group row (``FOR UPDATE``) so concurrent changes of one group serialise
and ``membership_version`` increases by exactly one per change.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg
from conclave_kit.database import Connection

DIRECT = "direct"  # conversation key of a device's 1:1 mailbox in `cursors`


async def insert_group(
    conn: Connection,
    *,
    group_id: str,
    created_by: str,
    metadata: bytes,
    max_members: int,
    now: datetime,
) -> bool:
    """Inserts a group (version 1, no members yet); False if the id exists."""
    row = await conn.fetchrow(
        "INSERT INTO groups (group_id, created_by, encrypted_metadata, membership_version,"
        " member_count, max_members, created_at, updated_at)"
        " VALUES ($1, $2, $3, 1, 0, $4, $5, $5) ON CONFLICT (group_id) DO NOTHING"
        " RETURNING group_id",
        group_id,
        created_by,
        metadata,
        max_members,
        now,
    )
    return row is not None


async def group(conn: Connection, group_id: str, *, lock: bool = False) -> asyncpg.Record | None:
    """The group row, optionally locked for a membership change."""
    if lock:
        return await conn.fetchrow("SELECT * FROM groups WHERE group_id = $1 FOR UPDATE", group_id)
    return await conn.fetchrow("SELECT * FROM groups WHERE group_id = $1", group_id)


async def member(conn: Connection, group_id: str, account_id: str) -> asyncpg.Record | None:
    """One member row, or None."""
    return await conn.fetchrow(
        "SELECT * FROM members WHERE group_id = $1 AND account_id = $2", group_id, account_id
    )


async def group_for_member(
    conn: Connection, group_id: str, account_id: str
) -> asyncpg.Record | None:
    """The group joined with the caller's role; None when it is not a member."""
    return await conn.fetchrow(
        "SELECT g.*, m.role AS my_role, m.join_seq FROM groups g"
        " JOIN members m ON m.group_id = g.group_id AND m.account_id = $2"
        " WHERE g.group_id = $1",
        group_id,
        account_id,
    )


async def existing_members(conn: Connection, group_id: str, account_ids: Sequence[str]) -> set[str]:
    """Which of ``account_ids`` are members."""
    rows = await conn.fetch(
        "SELECT account_id FROM members WHERE group_id = $1 AND account_id = ANY($2::uuid[])",
        group_id,
        list(account_ids),
    )
    return {str(r["account_id"]) for r in rows}


async def insert_members(
    conn: Connection,
    *,
    group_id: str,
    account_ids: Sequence[str],
    role: int,
    added_by: str | None,
    join_seq: int,
    now: datetime,
) -> None:
    """Adds members (the caller checked they are not members yet)."""
    await conn.executemany(
        "INSERT INTO members (group_id, account_id, role, joined_at, join_seq, added_by)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        [(group_id, a, role, now, join_seq, added_by) for a in account_ids],
    )


async def delete_members(conn: Connection, group_id: str, account_ids: Sequence[str]) -> None:
    """Removes members and their devices' cursors in the group."""
    await conn.execute(
        "DELETE FROM members WHERE group_id = $1 AND account_id = ANY($2::uuid[])",
        group_id,
        list(account_ids),
    )
    await conn.execute(
        "DELETE FROM cursors WHERE conversation = $1 AND account_id = ANY($2::uuid[])",
        group_id,
        list(account_ids),
    )


async def set_role(conn: Connection, group_id: str, account_id: str, role: int) -> None:
    """Changes one member's role."""
    await conn.execute(
        "UPDATE members SET role = $3 WHERE group_id = $1 AND account_id = $2",
        group_id,
        account_id,
        role,
    )


async def admin_count(conn: Connection, group_id: str) -> int:
    """Number of admins of the group."""
    value = await conn.fetchval(
        "SELECT count(*) FROM members WHERE group_id = $1 AND role = 2", group_id
    )
    return int(value)


async def bump_group(
    conn: Connection, group_id: str, *, member_delta: int, now: datetime, version: bool = True
) -> asyncpg.Record:
    """Applies a membership change to the group row; returns the updated row."""
    row = await conn.fetchrow(
        "UPDATE groups SET member_count = member_count + $2,"
        " membership_version = membership_version + $3, updated_at = $4"
        " WHERE group_id = $1 RETURNING *",
        group_id,
        member_delta,
        1 if version else 0,
        now,
    )
    assert row is not None
    return row


async def set_metadata(
    conn: Connection, group_id: str, metadata: bytes, now: datetime
) -> asyncpg.Record:
    """Replaces the encrypted metadata; returns the updated row."""
    row = await conn.fetchrow(
        "UPDATE groups SET encrypted_metadata = $2, updated_at = $3 WHERE group_id = $1"
        " RETURNING *",
        group_id,
        metadata,
        now,
    )
    assert row is not None
    return row


async def delete_group(conn: Connection, group_id: str) -> None:
    """Deletes the group, its members (cascade) and all cursors into it."""
    await conn.execute("DELETE FROM cursors WHERE conversation = $1", group_id)
    await conn.execute("DELETE FROM groups WHERE group_id = $1", group_id)


async def my_groups(
    conn: Connection, account_id: str, *, after: str | None, limit: int
) -> list[asyncpg.Record]:
    """The account's groups ordered by id, after ``after``."""
    return await conn.fetch(
        "SELECT g.*, m.role AS my_role FROM members m JOIN groups g USING (group_id)"
        " WHERE m.account_id = $1 AND ($2::uuid IS NULL OR m.group_id > $2::uuid)"
        " ORDER BY m.group_id LIMIT $3",
        account_id,
        after,
        limit,
    )


async def members_page(
    conn: Connection, group_id: str, *, after: tuple[datetime, str] | None, limit: int
) -> list[asyncpg.Record]:
    """Members ordered by join time then account id, after ``after``."""
    if after is None:
        return await conn.fetch(
            "SELECT * FROM members WHERE group_id = $1 ORDER BY joined_at, account_id LIMIT $2",
            group_id,
            limit,
        )
    return await conn.fetch(
        "SELECT * FROM members WHERE group_id = $1 AND (joined_at, account_id) > ($2, $3::uuid)"
        " ORDER BY joined_at, account_id LIMIT $4",
        group_id,
        after[0],
        after[1],
        limit,
    )


async def subscriptions(conn: Connection, account_id: str, device_id: str) -> list[asyncpg.Record]:
    """Where a device resumes: its direct mailbox and every group of its account.

    Rows have ``conversation``, ``floor`` (never deliver at or below: the join sequence
    for groups) and the device's ``acked_seq`` / ``delivered_seq``.
    """
    return await conn.fetch(
        "SELECT $3::text AS conversation, 0::bigint AS floor,"
        "  coalesce(c.acked_seq, 0) AS acked_seq, coalesce(c.delivered_seq, 0) AS delivered_seq"
        " FROM (SELECT 1) one"
        " LEFT JOIN cursors c ON c.device_id = $2 AND c.conversation = $3"
        " UNION ALL"
        " SELECT m.group_id::text, m.join_seq, coalesce(c.acked_seq, 0),"
        "  coalesce(c.delivered_seq, 0)"
        " FROM members m LEFT JOIN cursors c"
        "  ON c.device_id = $2 AND c.conversation = m.group_id::text"
        " WHERE m.account_id = $1",
        account_id,
        device_id,
        DIRECT,
    )


async def cursor(conn: Connection, device_id: str, conversation: str) -> asyncpg.Record | None:
    """One cursor row."""
    return await conn.fetchrow(
        "SELECT * FROM cursors WHERE device_id = $1 AND conversation = $2",
        device_id,
        conversation,
    )


async def acked_seqs(
    conn: Connection, device_id: str, conversations: Sequence[str]
) -> dict[str, int]:
    """Current acknowledged sequence per conversation (missing: 0)."""
    rows = await conn.fetch(
        "SELECT conversation, acked_seq FROM cursors"
        " WHERE device_id = $1 AND conversation = ANY($2::text[])",
        device_id,
        list(conversations),
    )
    return {r["conversation"]: int(r["acked_seq"]) for r in rows}


async def advance_acked(
    conn: Connection,
    *,
    device_id: str,
    account_id: str,
    positions: dict[str, int],
    now: datetime,
) -> None:
    """Moves acknowledged cursors forward (never back)."""
    await conn.executemany(
        "INSERT INTO cursors (device_id, conversation, account_id, acked_seq, updated_at)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device_id, conversation) DO UPDATE SET"
        " acked_seq = greatest(cursors.acked_seq, EXCLUDED.acked_seq),"
        " updated_at = EXCLUDED.updated_at",
        [(device_id, conv, account_id, seq, now) for conv, seq in positions.items()],
    )


async def advance_delivered(
    conn: Connection,
    *,
    device_id: str,
    account_id: str,
    positions: dict[str, int],
    now: datetime,
) -> None:
    """Records how far a stream delivered (to flag redeliveries after a reconnect)."""
    await conn.executemany(
        "INSERT INTO cursors (device_id, conversation, account_id, delivered_seq, updated_at)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device_id, conversation) DO UPDATE SET"
        " delivered_seq = greatest(cursors.delivered_seq, EXCLUDED.delivered_seq),"
        " updated_at = EXCLUDED.updated_at",
        [(device_id, conv, account_id, seq, now) for conv, seq in positions.items()],
    )


async def delete_device_cursors(conn: Connection, device_id: str) -> int:
    """Forgets a removed device's positions; returns how many rows went."""
    status = await conn.execute("DELETE FROM cursors WHERE device_id = $1", device_id)
    return int(status.split()[-1])


async def join_seq(conn: Connection, group_id: str, account_id: str) -> int | None:
    """The member's join sequence, or None when it is not a member."""
    value = await conn.fetchval(
        "SELECT join_seq FROM members WHERE group_id = $1 AND account_id = $2",
        group_id,
        account_id,
    )
    return None if value is None else int(value)


async def longest_member(conn: Connection, group_id: str, *, besides: str) -> str | None:
    """The member who joined first (ties: lowest account id), other than ``besides``."""
    value = await conn.fetchval(
        "SELECT account_id FROM members WHERE group_id = $1 AND account_id <> $2"
        " ORDER BY joined_at, account_id LIMIT 1",
        group_id,
        besides,
    )
    return None if value is None else str(value)


async def groups_of(conn: Connection, account_id: str, limit: int) -> list[str]:
    """Up to ``limit`` ids of the groups the account is a member of."""
    rows = await conn.fetch(
        "SELECT group_id FROM members WHERE account_id = $1 ORDER BY group_id LIMIT $2",
        account_id,
        limit,
    )
    return [str(r["group_id"]) for r in rows]


async def forget_account_references(conn: Connection, account_id: str) -> int:
    """Clears an erased account from other accounts' rows (creator, adder); rows changed.

    The groups and memberships stay (they are the other members'), only the id goes:
    ``created_by`` NULL turns a CreateGroup retry with that id into ALREADY_EXISTS, and
    ``added_by`` NULL reads as "added by an account that no longer exists".
    """
    a = await conn.execute("UPDATE groups SET created_by = NULL WHERE created_by = $1", account_id)
    b = await conn.execute("UPDATE members SET added_by = NULL WHERE added_by = $1", account_id)
    return int(a.split()[-1]) + int(b.split()[-1])


async def account_devices(conn: Connection, account_id: str) -> list[str]:
    """Devices of the account messaging knows (those with a cursor)."""
    rows = await conn.fetch(
        "SELECT DISTINCT device_id FROM cursors WHERE account_id = $1", account_id
    )
    return [str(r["device_id"]) for r in rows]


async def delete_account_cursors(conn: Connection, account_id: str) -> int:
    """Deletes every cursor of the account's devices; returns how many rows went."""
    status = await conn.execute("DELETE FROM cursors WHERE account_id = $1", account_id)
    return int(status.split()[-1])


async def account_cursors(conn: Connection, account_id: str) -> list[asyncpg.Record]:
    """The account's devices' cursors (export)."""
    return list(
        await conn.fetch(
            "SELECT * FROM cursors WHERE account_id = $1 ORDER BY device_id, conversation",
            account_id,
        )
    )


async def account_groups(conn: Connection, account_id: str) -> list[asyncpg.Record]:
    """The account's memberships with their groups (export)."""
    return list(
        await conn.fetch(
            "SELECT g.group_id, g.membership_version, g.member_count, g.max_members,"
            " g.created_by, g.encrypted_metadata, g.created_at, g.updated_at,"
            " m.role, m.joined_at, m.join_seq, m.added_by"
            " FROM members m JOIN groups g USING (group_id)"
            " WHERE m.account_id = $1 ORDER BY m.group_id",
            account_id,
        )
    )


async def groups_created_not_member(conn: Connection, account_id: str) -> list[asyncpg.Record]:
    """Groups the account created and has since left (they still name it; export)."""
    return list(
        await conn.fetch(
            "SELECT g.group_id, g.created_at FROM groups g WHERE g.created_by = $1"
            " AND NOT EXISTS (SELECT 1 FROM members m"
            " WHERE m.group_id = g.group_id AND m.account_id = $1) ORDER BY g.group_id",
            account_id,
        )
    )
