"""PostgreSQL access for the auth schema.

Every function takes the connection it runs on, so the manager decides transaction
boundaries (state change + audit + outbox together).
"""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg
from conclave.auth.v1 import auth_pb2
from conclave_kit.database import Connection

from conclave_auth import events

Record = asyncpg.Record


async def delete_expired_enrollment(conn: Connection, username: str, now: datetime) -> None:
    """Frees a username whose registration was never confirmed in time."""
    await conn.execute(
        "DELETE FROM accounts WHERE username = $1 AND totp_confirmed_at IS NULL "
        "AND enrollment_expires_at < $2",
        username,
        now,
    )


async def insert_account(
    conn: Connection,
    *,
    account_id: str,
    username: str,
    password_hash: str,
    totp_secret: str,
    enrollment_token_hash: bytes,
    enrollment_expires_at: datetime,
    now: datetime,
) -> None:
    """Creates an unconfirmed account (raises UniqueViolationError if the name is taken)."""
    await conn.execute(
        "INSERT INTO accounts (account_id, username, password_hash, password_changed_at, "
        "totp_secret, enrollment_token_hash, enrollment_expires_at, created_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $4)",
        uuid.UUID(account_id),
        username,
        password_hash,
        now,
        totp_secret,
        enrollment_token_hash,
        enrollment_expires_at,
    )


async def replace_recovery_codes(conn: Connection, account_id: str, hashes: list[bytes]) -> None:
    """Stores a new set of recovery-code hashes, dropping the old set."""
    await conn.execute("DELETE FROM recovery_codes WHERE account_id = $1", uuid.UUID(account_id))
    await conn.executemany(
        "INSERT INTO recovery_codes (account_id, code_hash) VALUES ($1, $2)",
        [(uuid.UUID(account_id), h) for h in hashes],
    )


async def account_by_username(conn: Connection, username: str) -> Record | None:
    """The account row for a normalised username."""
    return await conn.fetchrow("SELECT * FROM accounts WHERE username = $1", username)


async def account_by_id(
    conn: Connection, account_id: str, *, for_update: bool = False
) -> Record | None:
    """The account row for an id."""
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(
        f"SELECT * FROM accounts WHERE account_id = $1{lock}",  # noqa: S608 - constant
        uuid.UUID(account_id),
    )


async def account_by_enrollment(
    conn: Connection, token_hash: bytes, now: datetime
) -> Record | None:
    """The unconfirmed account whose enrollment token hashes to ``token_hash``."""
    return await conn.fetchrow(
        "SELECT * FROM accounts WHERE enrollment_token_hash = $1 AND enrollment_expires_at > $2",
        token_hash,
        now,
    )


async def consume_totp_step(
    conn: Connection, account_id: str, step: int, now: datetime
) -> bool | None:
    """Records ``step`` as used, atomically.

    Returns:
        None if the step (or a later one) was already used: a replay; otherwise whether this
        use confirmed a pending enrollment.
    """
    row = await conn.fetchrow(
        "UPDATE accounts a SET totp_last_step = $2, "
        "totp_confirmed_at = COALESCE(a.totp_confirmed_at, $3), "
        "enrollment_token_hash = NULL, enrollment_expires_at = NULL "
        "FROM (SELECT totp_confirmed_at AS before FROM accounts WHERE account_id = $1) prev "
        "WHERE a.account_id = $1 AND a.totp_last_step < $2 "
        "RETURNING prev.before IS NULL AS confirmed_now",
        uuid.UUID(account_id),
        step,
        now,
    )
    return None if row is None else bool(row["confirmed_now"])


async def use_recovery_code(
    conn: Connection, account_id: str, code_hash: bytes, now: datetime
) -> int | None:
    """Marks a recovery code used; returns how many remain, or None if it was not valid."""
    used = await conn.fetchval(
        "UPDATE recovery_codes SET used_at = $3 "
        "WHERE account_id = $1 AND code_hash = $2 AND used_at IS NULL RETURNING 1",
        uuid.UUID(account_id),
        code_hash,
        now,
    )
    if used is None:
        return None
    return await recovery_codes_remaining(conn, account_id)


async def recovery_codes_remaining(conn: Connection, account_id: str) -> int:
    """Unused recovery codes of the account."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM recovery_codes WHERE account_id = $1 AND used_at IS NULL",
            uuid.UUID(account_id),
        )
    )


async def set_password_hash(
    conn: Connection, account_id: str, password_hash: str, now: datetime | None
) -> None:
    """Stores a new hash (``now`` set: a password change; None: a parameter upgrade)."""
    await conn.execute(
        "UPDATE accounts SET password_hash = $2, "
        "password_changed_at = COALESCE($3, password_changed_at) WHERE account_id = $1",
        uuid.UUID(account_id),
        password_hash,
        now,
    )


async def device(conn: Connection, device_id: str) -> Record | None:
    """A device row."""
    return await conn.fetchrow("SELECT * FROM devices WHERE device_id = $1", uuid.UUID(device_id))


async def count_devices(conn: Connection, account_id: str) -> int:
    """Devices of the account."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM devices WHERE account_id = $1", uuid.UUID(account_id)
        )
    )


async def insert_device(
    conn: Connection,
    *,
    account_id: str,
    name: str,
    platform: int,
    approval_state: int,
    now: datetime,
) -> str:
    """Creates a device; returns its id."""
    device_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO devices (device_id, account_id, name, platform, approval_state, "
        "created_at, last_seen_at) VALUES ($1, $2, $3, $4, $5, $6, $6)",
        device_id,
        uuid.UUID(account_id),
        name,
        platform,
        approval_state,
        now,
    )
    return str(device_id)


async def touch_device(
    conn: Connection, device_id: str, now: datetime, name: str | None = None
) -> None:
    """Updates last-seen (and the name when given)."""
    await conn.execute(
        "UPDATE devices SET last_seen_at = $2, name = COALESCE($3, name) WHERE device_id = $1",
        uuid.UUID(device_id),
        now,
        name,
    )


async def rename_device(
    conn: Connection, account_id: str, device_id: str, name: str
) -> Record | None:
    """Renames one of the account's devices; None if it is not the account's."""
    return await conn.fetchrow(
        "UPDATE devices SET name = $3 WHERE device_id = $2 AND account_id = $1 RETURNING *",
        uuid.UUID(account_id),
        uuid.UUID(device_id),
        name,
    )


async def delete_device(conn: Connection, device_id: str) -> None:
    """Removes a device (its sessions and tokens cascade)."""
    await conn.execute("DELETE FROM devices WHERE device_id = $1", uuid.UUID(device_id))


async def insert_session(
    conn: Connection,
    *,
    account_id: str,
    device_id: str,
    now: datetime,
    absolute_expires_at: datetime,
    access_expires_at: datetime,
) -> str:
    """Opens a session; returns its id."""
    session_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO sessions (session_id, account_id, device_id, auth_time, created_at, "
        "last_used_at, absolute_expires_at, access_expires_at) "
        "VALUES ($1, $2, $3, $4, $4, $4, $5, $6)",
        session_id,
        uuid.UUID(account_id),
        uuid.UUID(device_id),
        now,
        absolute_expires_at,
        access_expires_at,
    )
    return str(session_id)


async def session(conn: Connection, session_id: str, *, for_update: bool = False) -> Record | None:
    """A session row."""
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(
        f"SELECT * FROM sessions WHERE session_id = $1{lock}",  # noqa: S608 - constant
        uuid.UUID(session_id),
    )


async def live_session_of_device(conn: Connection, device_id: str) -> Record | None:
    """The device's live session, if any."""
    return await conn.fetchrow(
        "SELECT * FROM sessions WHERE device_id = $1 AND ended_at IS NULL",
        uuid.UUID(device_id),
    )


async def live_sessions(conn: Connection, account_id: str) -> list[Record]:
    """Live sessions of the account with their devices, most recently used first."""
    return list(
        await conn.fetch(
            "SELECT s.*, d.name AS device_name, d.platform, d.created_at AS device_created_at, "
            "d.last_seen_at, d.approval_state FROM sessions s JOIN devices d USING (device_id) "
            "WHERE s.account_id = $1 AND s.ended_at IS NULL ORDER BY s.last_used_at DESC",
            uuid.UUID(account_id),
        )
    )


async def end_session(
    conn: Connection, session_id: str, reason: int, now: datetime
) -> Record | None:
    """Ends a live session and queues its revocation event.

    Returns:
        The ended session, or None if it had already ended (idempotent).
    """
    row = await conn.fetchrow(
        "UPDATE sessions SET ended_at = $2, end_reason = $3 "
        "WHERE session_id = $1 AND ended_at IS NULL RETURNING *",
        uuid.UUID(session_id),
        now,
        reason,
    )
    if row is not None:
        await events.session_revoked(
            conn,
            now=now,
            account_id=str(row["account_id"]),
            session_id=session_id,
            device_id=str(row["device_id"]),
            reason=reason,
            access_expires_at=row["access_expires_at"],
        )
    return row


async def insert_refresh_token(
    conn: Connection, session_id: str, token_hash: bytes, now: datetime
) -> None:
    """Stores the hash of a newly issued refresh token."""
    await conn.execute(
        "INSERT INTO refresh_tokens (token_hash, session_id, issued_at) VALUES ($1, $2, $3)",
        token_hash,
        uuid.UUID(session_id),
        now,
    )


async def refresh_token(conn: Connection, token_hash: bytes) -> Record | None:
    """The refresh token row, locked: concurrent refreshes of one token serialise here."""
    return await conn.fetchrow(
        "SELECT * FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE", token_hash
    )


async def mark_refresh_used(conn: Connection, token_hash: bytes, now: datetime) -> None:
    """Marks a refresh token used (it must never work again)."""
    await conn.execute(
        "UPDATE refresh_tokens SET used_at = $2 WHERE token_hash = $1", token_hash, now
    )


async def session_used(
    conn: Connection,
    session_id: str,
    now: datetime,
    access_expires_at: datetime,
    *,
    reauthenticated: bool = False,
) -> None:
    """Records a use of the session (refresh or step-up)."""
    await conn.execute(
        "UPDATE sessions SET last_used_at = $2, "
        "access_expires_at = GREATEST(access_expires_at, $3), "
        "auth_time = CASE WHEN $4 THEN $2 ELSE auth_time END WHERE session_id = $1",
        uuid.UUID(session_id),
        now,
        access_expires_at,
        reauthenticated,
    )


async def insert_audit(
    conn: Connection,
    *,
    account_id: str,
    kind: int,
    now: datetime,
    session_id: str | None = None,
    device_id: str | None = None,
    device_name: str = "",
    detail: str = "",
) -> None:
    """Appends to the account's audit log and queues ``conclave.events.audit.recorded``."""
    event_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO audit_events (event_id, account_id, kind, occurred_at, session_id, "
        "device_id, device_name, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        event_id,
        uuid.UUID(account_id),
        kind,
        now,
        uuid.UUID(session_id) if session_id else None,
        uuid.UUID(device_id) if device_id else None,
        device_name,
        detail[:256],
    )
    await events.audit_recorded(
        conn,
        account_id=account_id,
        event=auth_pb2.AuditEvent(
            event_id=str(event_id),
            kind=kind,  # type: ignore[arg-type]
            event_time=events.timestamp(now),
            session_id=session_id or "",
            device_id=device_id or "",
            device_name=device_name,
            detail=detail[:256],
        ),
    )


async def audit_page(
    conn: Connection,
    account_id: str,
    *,
    kinds: list[int],
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[Record]:
    """One page of the audit log, newest first, keyset-paginated."""
    return list(
        await conn.fetch(
            "SELECT * FROM audit_events WHERE account_id = $1 "
            "AND (cardinality($2::smallint[]) = 0 OR kind = ANY($2::smallint[])) "
            "AND ($3::timestamptz IS NULL OR (occurred_at, event_id) < ($3, $4::uuid)) "
            "ORDER BY occurred_at DESC, event_id DESC LIMIT $5",
            uuid.UUID(account_id),
            kinds,
            after[0] if after else None,
            uuid.UUID(after[1]) if after else None,
            limit,
        )
    )


async def set_pending_totp(
    conn: Connection, account_id: str, secret: str | None, expires_at: datetime | None
) -> None:
    """Stores (or clears) a pending TOTP secret change."""
    await conn.execute(
        "UPDATE accounts SET pending_totp_secret = $2, pending_totp_expires_at = $3 "
        "WHERE account_id = $1",
        uuid.UUID(account_id),
        secret,
        expires_at,
    )


async def activate_pending_totp(conn: Connection, account_id: str, step: int) -> None:
    """Makes the pending secret the account's secret; its first code's step is now used."""
    await conn.execute(
        "UPDATE accounts SET totp_secret = pending_totp_secret, totp_last_step = $2, "
        "pending_totp_secret = NULL, pending_totp_expires_at = NULL WHERE account_id = $1",
        uuid.UUID(account_id),
        step,
    )


async def lookup_accounts(
    conn: Connection, usernames: list[str], account_ids: list[uuid.UUID]
) -> list[Record]:
    """Confirmed accounts matching any of the names or ids."""
    return list(
        await conn.fetch(
            "SELECT account_id, username FROM accounts WHERE totp_confirmed_at IS NOT NULL "
            "AND (username = ANY($1::text[]) OR account_id = ANY($2::uuid[]))",
            usernames,
            account_ids,
        )
    )


async def count_approved_devices(conn: Connection, account_id: str) -> int:
    """Devices of the account that are approved (could approve a new one)."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM devices WHERE account_id = $1 AND approval_state = $2",
            uuid.UUID(account_id),
            auth_pb2.DEVICE_APPROVAL_STATE_APPROVED,
        )
    )


async def pending_devices(conn: Connection, account_id: str) -> list[Record]:
    """Devices waiting for approval, oldest first."""
    return list(
        await conn.fetch(
            "SELECT * FROM devices WHERE account_id = $1 AND approval_state = $2 "
            "ORDER BY created_at",
            uuid.UUID(account_id),
            auth_pb2.DEVICE_APPROVAL_STATE_PENDING,
        )
    )


async def approve_device(conn: Connection, device_id: str) -> Record | None:
    """Marks a device approved."""
    return await conn.fetchrow(
        "UPDATE devices SET approval_state = $2 WHERE device_id = $1 RETURNING *",
        uuid.UUID(device_id),
        auth_pb2.DEVICE_APPROVAL_STATE_APPROVED,
    )


async def set_approval_policy(conn: Connection, account_id: str, required: bool) -> None:
    """Sets whether new devices of the account need approval."""
    await conn.execute(
        "UPDATE accounts SET device_approval_required = $2 WHERE account_id = $1",
        uuid.UUID(account_id),
        required,
    )
