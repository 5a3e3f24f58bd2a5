"""Auth's half of ``conclave.common.v1.AccountDataService``: export and purge.

Export returns, as JSON, everything auth holds about the caller's account except secrets
(password hash, TOTP secret, code and token hashes): for those only the fact and the date.
Purge deletes what has outlived its purpose; it is safe on several replicas at once (plain
``DELETE ... WHERE`` statements) and idempotent.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from conclave.auth.v1 import auth_pb2 as A
from conclave.common.v1 import account_data_pb2 as D
from conclave_kit.account_data import iso, rate_limit_buckets
from conclave_kit.ratelimit import RateLimiter
from conclave_kit.tokens import Claims

from conclave_auth import store
from conclave_auth.manager import AuthManager

ALL_KINDS = (
    D.PURGE_KIND_SESSIONS,
    D.PURGE_KIND_UNCONFIRMED_ACCOUNTS,
    D.PURGE_KIND_AUDIT_EVENTS,
    D.PURGE_KIND_BOOKKEEPING,
)


async def export_account(manager: AuthManager, account_id: str) -> dict[str, Any]:
    """The auth section of a GDPR export for ``account_id``.

    Every field docs/data-map.md lists for the auth schema appears for the account; a
    secret (password hash, TOTP secrets, token and code hashes) appears only as the fact
    that it is set and its dates.
    """
    pool = manager.pool
    key = uuid.UUID(account_id)
    async with pool.acquire() as conn:
        account = await store.account_by_id(conn, account_id)
        assert account is not None
        devices = await conn.fetch(
            "SELECT * FROM devices WHERE account_id = $1 ORDER BY created_at", key
        )
        sessions = await conn.fetch(
            "SELECT * FROM sessions WHERE account_id = $1 ORDER BY created_at", key
        )
        tokens = await conn.fetch(
            "SELECT t.session_id, t.issued_at, t.used_at FROM refresh_tokens t "
            "JOIN sessions s USING (session_id) WHERE s.account_id = $1 ORDER BY t.issued_at",
            key,
        )
        codes = await conn.fetch(
            "SELECT used_at FROM recovery_codes WHERE account_id = $1 ORDER BY used_at", key
        )
        audit = await conn.fetch(
            "SELECT * FROM audit_events WHERE account_id = $1 ORDER BY occurred_at", key
        )
        buckets = await rate_limit_buckets(conn, [account_id])
    tokens_by_session: dict[str, list[dict[str, Any]]] = {}
    for t in tokens:
        tokens_by_session.setdefault(str(t["session_id"]), []).append(
            {"issued_at": iso(t["issued_at"]), "used_at": iso(t["used_at"])}
        )
    return {
        "account": {
            "account_id": account_id,
            "username": account["username"],
            "created_at": iso(account["created_at"]),
            "password": {"set": True, "changed_at": iso(account["password_changed_at"])},
            "totp": {
                "enrolled": True,
                "confirmed_at": iso(account["totp_confirmed_at"]),
                "last_used_time_step": account["totp_last_step"],
                "change_pending": account["pending_totp_secret"] is not None,
                "change_expires_at": iso(account["pending_totp_expires_at"]),
            },
            "enrollment": {
                "token_outstanding": account["enrollment_token_hash"] is not None,
                "expires_at": iso(account["enrollment_expires_at"]),
            },
            "recovery_codes": [{"used_at": iso(c["used_at"])} for c in codes],
            "device_approval_required": account["device_approval_required"],
            "audit_log_ttl_seconds": account["audit_log_ttl_seconds"],
        },
        "devices": [
            {
                "device_id": str(d["device_id"]),
                "name": d["name"],
                "platform": A.Platform.Name(d["platform"]),
                "approval_state": A.DeviceApprovalState.Name(d["approval_state"]),
                "created_at": iso(d["created_at"]),
                "last_seen_at": iso(d["last_seen_at"]),
            }
            for d in devices
        ],
        "sessions": [
            {
                "session_id": str(s["session_id"]),
                "device_id": str(s["device_id"]),
                "auth_time": iso(s["auth_time"]),
                "created_at": iso(s["created_at"]),
                "last_used_at": iso(s["last_used_at"]),
                "absolute_expires_at": iso(s["absolute_expires_at"]),
                "access_expires_at": iso(s["access_expires_at"]),
                "ended_at": iso(s["ended_at"]),
                "end_reason": None
                if s["end_reason"] is None
                else A.SessionEndReason.Name(s["end_reason"]),
                "refresh_tokens": tokens_by_session.get(str(s["session_id"]), []),
            }
            for s in sessions
        ],
        "audit_log": [
            {
                "event_id": str(e["event_id"]),
                "kind": A.AuditEventKind.Name(e["kind"]),
                "occurred_at": iso(e["occurred_at"]),
                "session_id": None if e["session_id"] is None else str(e["session_id"]),
                "device_id": None if e["device_id"] is None else str(e["device_id"]),
                "device_name": e["device_name"],
                "detail": e["detail"],
            }
            for e in audit
        ],
        "rate_limit_buckets": buckets,
    }


async def purge(
    manager: AuthManager, kinds: list[int], now: datetime, audit_ttl_seconds: float
) -> dict[int, int]:
    """Deletes expired auth data of the given kinds; returns items deleted per kind."""
    wanted = set(kinds)
    counts: dict[int, int] = {}
    pool = manager.pool
    if D.PURGE_KIND_SESSIONS in wanted:
        counts[D.PURGE_KIND_SESSIONS] = await manager.expire_and_delete_sessions(now)
    if D.PURGE_KIND_UNCONFIRMED_ACCOUNTS in wanted:
        result = await pool.execute(
            "DELETE FROM accounts WHERE totp_confirmed_at IS NULL AND enrollment_expires_at < $1",
            now,
        )
        counts[D.PURGE_KIND_UNCONFIRMED_ACCOUNTS] = int(result.rsplit(" ", 1)[-1])
    if D.PURGE_KIND_AUDIT_EVENTS in wanted:
        # The account's policy TTL when it set one (conclave_auth.policies), else the
        # deployment's.
        result = await pool.execute(
            "DELETE FROM audit_events e USING accounts a WHERE e.account_id = a.account_id "
            "AND e.occurred_at < $1::timestamptz - make_interval(secs => "
            "coalesce(a.audit_log_ttl_seconds, $2::float8))",
            now,
            float(audit_ttl_seconds),
        )
        counts[D.PURGE_KIND_AUDIT_EVENTS] = int(result.rsplit(" ", 1)[-1])
    if D.PURGE_KIND_BOOKKEEPING in wanted:
        # A bucket idle for an hour is full again for every auth limit: it carries nothing.
        counts[D.PURGE_KIND_BOOKKEEPING] = await RateLimiter(pool).purge_idle(3600)
    return counts


class AuthAccountData:
    """Auth's :class:`conclave_kit.account_data.AccountDataProvider`.

    Args:
        manager: The auth manager (pool, clock, session ending).
        audit_ttl_seconds: Deployment audit-log TTL.
    """

    service: str = "auth"
    kinds: tuple[int, ...] = ALL_KINDS

    def __init__(self, manager: AuthManager, audit_ttl_seconds: float) -> None:
        self._m = manager
        self._audit_ttl = audit_ttl_seconds

    async def export(self, claims: Claims) -> dict[str, Any]:
        """The auth section of the caller's export (the session must still be live)."""
        await self._m.require_live_session(claims)
        return await export_account(self._m, claims.account_id)

    async def purge(self, kinds: frozenset[int]) -> dict[int, int]:
        """See :func:`purge`."""
        return await purge(self._m, list(kinds), self._m.now(), self._audit_ttl)

    async def purge_lag(self) -> dict[int, float]:
        """How overdue the oldest expired session, unconfirmed account and audit entry are."""
        now = self._m.now()
        async with self._m.pool.acquire() as conn:
            # Purge deletes ended sessions a minute after their last token expired.
            session = await conn.fetchval(
                "SELECT min(access_expires_at) + interval '1 minute' FROM sessions "
                "WHERE ended_at IS NOT NULL"
            )
            unconfirmed = await conn.fetchval(
                "SELECT min(enrollment_expires_at) FROM accounts WHERE totp_confirmed_at IS NULL"
            )
            audit_due = await conn.fetchval(
                "SELECT min(e.occurred_at + make_interval(secs => "
                "coalesce(a.audit_log_ttl_seconds, $1::float8))) "
                "FROM audit_events e JOIN accounts a USING (account_id)",
                float(self._audit_ttl),
            )
        return {
            D.PURGE_KIND_SESSIONS: _overdue(now, session),
            D.PURGE_KIND_UNCONFIRMED_ACCOUNTS: _overdue(now, unconfirmed),
            D.PURGE_KIND_AUDIT_EVENTS: _overdue(now, audit_due),
            D.PURGE_KIND_BOOKKEEPING: 0.0,
        }

    async def erase(self, account_id: str) -> int:
        """Ends every session (revocations published first), then deletes the account."""
        return await self._m.erase_account(account_id)


def _overdue(now: datetime, due: datetime | None) -> float:
    return 0.0 if due is None else max(0.0, (now - due).total_seconds())
