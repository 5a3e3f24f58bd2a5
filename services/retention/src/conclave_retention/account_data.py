"""Retention's own share of exports, purges and erasures (an ``AccountDataProvider``).

- Export: the account's policy, the conversation policies it set or is a party to, the
  group memberships retention learned, its export rate-limit bucket, its pending
  erasure requests (normally none: an account being erased has no session left to ask),
  and every ``CONCLAVE_EVENTS`` message naming the account, decoded (one read of the
  stream, at most 7 days; exports are rate limited).
  Erasure ids are never exported (they are credentials).
- Purge (``PURGE_KIND_BOOKKEEPING``): erasure records 30 days after completion, and
  rate-limit buckets idle long enough to be full again.
- Erase: the account policy, the direct conversation policies it is a party to (the
  policy is shared by both parties and names both; the other party falls back to their
  account policy), its ``group_members`` rows, and its authorship of group policies that
  stay in force for the other members (``updated_by`` set to NULL), its rate-limit
  buckets. Its erasure request itself is not touched: that is the erasure's bookkeeping
  and drops the account id on completion.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from conclave.common.v1 import account_data_pb2 as D
from conclave_kit.account_data import iso, rate_limit_buckets
from conclave_kit.ratelimit import RateLimiter
from conclave_kit.tokens import Claims
from nats.js import JetStreamContext

from conclave_retention import store
from conclave_retention.manager import caller_account
from conclave_retention.scrub import events_naming

ERASURE_RECORD_DAYS = 30
# The export bucket (capacity 1) is full again one export interval after its last use;
# buckets idle for longer carry no information.
Clock = Callable[[], datetime]


def _rows(result: str) -> int:
    return int(str(result).rsplit(" ", 1)[-1])


class RetentionAccountData:
    """Retention's account data (see module docstring).

    Args:
        pool: Pool on the ``retention`` schema.
        clock: Current time.
        export_interval_seconds: The export rate (an idle bucket is full after it).
    """

    service: str = "retention"
    kinds: tuple[int, ...] = (D.PURGE_KIND_BOOKKEEPING,)

    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        export_interval_seconds: float,
        js: JetStreamContext | None = None,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._idle_bucket_seconds = export_interval_seconds
        self._js = js

    async def export(self, claims: Claims) -> dict[str, Any]:
        """Retention's section of the caller's export.

        Raises:
            Unauthenticated: The token does not name an account (an operator's, say).
        """
        account = caller_account(claims)
        async with self._pool.acquire() as conn:
            policy = await conn.fetchrow(
                "SELECT * FROM account_policies WHERE account_id = $1", account
            )
            conversations = await conn.fetch(
                "SELECT * FROM conversation_policies WHERE account_low = $1 "
                "OR account_high = $1 OR updated_by = $1 "
                "OR group_id IN (SELECT group_id FROM group_members WHERE account_id = $1) "
                "ORDER BY conversation_key",
                account,
            )
            groups = await conn.fetch(
                "SELECT * FROM group_members WHERE account_id = $1 ORDER BY group_id", account
            )
            buckets = await rate_limit_buckets(conn, [account])
            erasures = await conn.fetch(
                "SELECT e.requested_at, e.servers_done_at, array_agg(p.service) AS done "
                "FROM erasure_requests e LEFT JOIN erasure_progress p USING (id_hash) "
                "WHERE e.account_id = $1 GROUP BY e.id_hash",
                account,
            )
        # The events naming the account (CONCLAVE_EVENTS keeps 7 days): read here because
        # retention is the server that scrubs them at erasure.
        events = [] if self._js is None else await events_naming(self._js, account)
        return {
            "events": events,
            "account_policy": None
            if policy is None
            else {
                **{name: value for name, value in store.level_columns(policy).items()},
                "updated_at": iso(policy["updated_at"]),
            },
            "conversation_policies": [
                {
                    "conversation": _conversation(row, account),
                    **store.level_columns(row),
                    "set_by_me": row["updated_by"] is not None
                    and str(row["updated_by"]) == account,
                    "updated_at": iso(row["updated_at"]),
                }
                for row in conversations
            ],
            "group_memberships": [
                {
                    "group_id": str(row["group_id"]),
                    "is_member": row["is_member"],
                    "is_admin": row["is_admin"],
                    "membership_version": row["membership_version"],
                }
                for row in groups
            ],
            "rate_limit_buckets": buckets,
            "erasure_requests": [
                {
                    "requested_at": iso(row["requested_at"]),
                    "servers_complete": sorted(int(s) for s in row["done"] if s is not None),
                }
                for row in erasures
            ],
        }

    async def purge(self, kinds: frozenset[int]) -> dict[int, int]:
        """Deletes completed erasure records past 30 days and idle rate-limit buckets."""
        if D.PURGE_KIND_BOOKKEEPING not in kinds:
            return {}
        cutoff = self._clock() - timedelta(days=ERASURE_RECORD_DAYS)
        records = await self._pool.execute(
            "DELETE FROM erasure_requests WHERE completed_at < $1", cutoff
        )
        buckets = await RateLimiter(self._pool).purge_idle(self._idle_bucket_seconds)
        return {D.PURGE_KIND_BOOKKEEPING: _rows(records) + buckets}

    async def purge_lag(self) -> dict[int, float]:
        """How overdue the oldest expired erasure record or idle bucket is."""
        now = self._clock()
        async with self._pool.acquire() as conn:
            oldest_record = await conn.fetchval(
                "SELECT min(completed_at) FROM erasure_requests WHERE completed_at IS NOT NULL"
            )
            oldest_bucket = await conn.fetchval(
                "SELECT EXTRACT(EPOCH FROM clock_timestamp() - min(updated_at))::float8 "
                "FROM rate_limit_buckets"
            )
        lag = 0.0
        if oldest_record is not None:
            due = oldest_record + timedelta(days=ERASURE_RECORD_DAYS)
            lag = max(lag, (now - due).total_seconds())
        if oldest_bucket is not None:
            lag = max(lag, float(oldest_bucket) - self._idle_bucket_seconds)
        return {D.PURGE_KIND_BOOKKEEPING: max(0.0, lag)}

    async def erase(self, account_id: str) -> int:
        """Erases the account's policies, memberships and buckets (idempotent)."""
        account = str(uuid.UUID(account_id))
        async with self._pool.acquire() as conn, conn.transaction():
            items = _rows(
                await conn.execute("DELETE FROM account_policies WHERE account_id = $1", account)
            )
            items += _rows(
                await conn.execute(
                    "DELETE FROM conversation_policies WHERE account_low = $1 OR account_high = $1",
                    account,
                )
            )
            items += _rows(
                await conn.execute(
                    "UPDATE conversation_policies SET updated_by = NULL WHERE updated_by = $1",
                    account,
                )
            )
            items += _rows(
                await conn.execute("DELETE FROM group_members WHERE account_id = $1", account)
            )
            items += _rows(
                await conn.execute(
                    "DELETE FROM rate_limit_buckets WHERE bucket LIKE '%:' || $1", account
                )
            )
        return items


def _conversation(row: asyncpg.Record, account: str) -> dict[str, str]:
    if row["group_id"] is not None:
        return {"group_id": str(row["group_id"])}
    low, high = str(row["account_low"]), str(row["account_high"])
    if account in (low, high):
        return {"peer_account_id": high if account == low else low}
    return {"account_low": low, "account_high": high}
