"""SQL of the retention schema (policies, learned group membership)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import asyncpg
from conclave_kit.database import Connection

from conclave_retention.config import FIELDS

_COLUMNS = {
    "undelivered_message_ttl": "undelivered_message_ttl_seconds",
    "disappearing_message_timer": "disappearing_timer_seconds",
    "media_ttl": "media_ttl_seconds",
    "audit_log_ttl": "audit_log_ttl_seconds",
}


def _level(row: asyncpg.Record | None) -> dict[str, int] | None:
    if row is None:
        return None
    return {
        name: int(row[column]) for name, column in _COLUMNS.items() if row.get(column) is not None
    }


def level_columns(row: asyncpg.Record) -> dict[str, int | None]:
    """Every policy field of a row in seconds, None where it inherits (exports)."""
    present = set(row.keys())
    return {
        f"{name}_seconds": None if row[column] is None else int(row[column])
        for name, column in _COLUMNS.items()
        if column in present
    }


async def policies_for(
    conn: Connection, account_id: str, conversation_key: str | None
) -> tuple[dict[str, int] | None, dict[str, int] | None]:
    """The account's level and a conversation's level, in one round trip."""
    rows = await conn.fetch(
        "SELECT 'a' AS level, undelivered_message_ttl_seconds, disappearing_timer_seconds, "
        "media_ttl_seconds, audit_log_ttl_seconds FROM account_policies WHERE account_id = $1 "
        "UNION ALL SELECT 'c', undelivered_message_ttl_seconds, disappearing_timer_seconds, "
        "media_ttl_seconds, NULL FROM conversation_policies WHERE conversation_key = $2",
        account_id,
        conversation_key,
    )
    account = next((_level(r) for r in rows if r["level"] == "a"), None)
    conversation = next((_level(r) for r in rows if r["level"] == "c"), None)
    return account, conversation


async def account_policy(conn: Connection, account_id: str) -> dict[str, int] | None:
    """The account's level, or None when it never set one."""
    row = await conn.fetchrow("SELECT * FROM account_policies WHERE account_id = $1", account_id)
    return _level(row)


async def set_account_policy(
    conn: Connection, account_id: str, level: Mapping[str, int], now: datetime
) -> None:
    """Replaces the account's level (an empty level deletes the row)."""
    if not level:
        await conn.execute("DELETE FROM account_policies WHERE account_id = $1", account_id)
        return
    values = [level.get(name) for name in FIELDS]
    await conn.execute(
        "INSERT INTO account_policies (account_id, undelivered_message_ttl_seconds, "
        "disappearing_timer_seconds, media_ttl_seconds, audit_log_ttl_seconds, updated_at) "
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (account_id) DO UPDATE SET "
        "undelivered_message_ttl_seconds = $2, disappearing_timer_seconds = $3, "
        "media_ttl_seconds = $4, audit_log_ttl_seconds = $5, updated_at = $6",
        account_id,
        *values,
        now,
    )


async def conversation_policy(conn: Connection, key: str) -> dict[str, int] | None:
    """The conversation's level, or None when never set."""
    row = await conn.fetchrow(
        "SELECT * FROM conversation_policies WHERE conversation_key = $1", key
    )
    return _level(row)


async def set_conversation_policy(
    conn: Connection,
    *,
    key: str,
    group_id: str | None,
    accounts: Sequence[str],
    level: Mapping[str, int],
    updated_by: str,
    now: datetime,
) -> None:
    """Replaces a conversation's level (an empty level deletes the row)."""
    if not level:
        await conn.execute("DELETE FROM conversation_policies WHERE conversation_key = $1", key)
        return
    low, high = (accounts[0], accounts[1]) if accounts else (None, None)
    await conn.execute(
        "INSERT INTO conversation_policies (conversation_key, group_id, account_low, "
        "account_high, undelivered_message_ttl_seconds, disappearing_timer_seconds, "
        "media_ttl_seconds, updated_by, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
        "ON CONFLICT (conversation_key) DO UPDATE SET undelivered_message_ttl_seconds = $5, "
        "disappearing_timer_seconds = $6, media_ttl_seconds = $7, updated_by = $8, "
        "updated_at = $9",
        key,
        group_id,
        low,
        high,
        level.get("undelivered_message_ttl"),
        level.get("disappearing_message_timer"),
        level.get("media_ttl"),
        updated_by,
        now,
    )


async def group_role(conn: Connection, group_id: str, account_id: str) -> bool | None:
    """None when not a member; else whether the account is an admin."""
    row = await conn.fetchrow(
        "SELECT is_admin FROM group_members WHERE group_id = $1 AND account_id = $2 AND is_member",
        group_id,
        account_id,
    )
    return None if row is None else bool(row["is_admin"])


async def apply_membership(
    conn: Connection,
    group_id: str,
    version: int,
    states: Mapping[str, tuple[bool, bool]],
) -> None:
    """Sets (is_member, is_admin) per account unless a newer version was applied."""
    if not states:
        return
    accounts = list(states)
    await conn.execute(
        "INSERT INTO group_members (group_id, account_id, is_member, is_admin, "
        "membership_version) SELECT $1, a, m, ad, $5 "
        "FROM unnest($2::uuid[], $3::boolean[], $4::boolean[]) AS t(a, m, ad) "
        "ON CONFLICT (group_id, account_id) DO UPDATE SET is_member = EXCLUDED.is_member, "
        "is_admin = EXCLUDED.is_admin, membership_version = EXCLUDED.membership_version "
        "WHERE group_members.membership_version < EXCLUDED.membership_version",
        group_id,
        accounts,
        [states[a][0] for a in accounts],
        [states[a][1] for a in accounts],
        version,
    )


async def delete_group(conn: Connection, group_id: str) -> None:
    """Forgets a deleted group: its members and its conversation policy."""
    await conn.execute("DELETE FROM group_members WHERE group_id = $1", group_id)
    await conn.execute("DELETE FROM conversation_policies WHERE group_id = $1", group_id)
