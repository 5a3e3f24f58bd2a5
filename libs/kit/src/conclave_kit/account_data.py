"""Every server's account data: GDPR export, retention purge and account erasure.

Each service implements :class:`AccountDataProvider` for the data it owns; the kit does
the rest the same way everywhere:

- serves ``conclave.common.v1.AccountDataService`` (``ExportAccountData`` streams the
  provider's JSON section, ``PurgeExpired`` runs an on-demand purge for the operator);
- runs the **scheduled purge** (:class:`PurgeScheduler`): every
  ``CONCLAVE_PURGE_INTERVAL_SECONDS`` one replica at a time (a PostgreSQL advisory lock per
  service; providers are also safe to run concurrently, the lock only saves duplicate
  work) deletes what has expired and refreshes the purge-lag gauges;
- consumes ``conclave.events.account.deleted`` (durable consumer ``<service>-account-deleted``
  shared by the replicas): calls :meth:`AccountDataProvider.erase` and publishes
  ``conclave.events.erasure.completed``; the event is acknowledged only after that
  publish, so a failure is retried by redelivery (erasure is idempotent).

Metrics (labels never carry ids): ``conclave_retention_purge_lag_seconds{data}`` (how
overdue the oldest expired item still stored is), ``conclave_retention_purged_items_total
{data}``, ``conclave_retention_purge_runs_total{trigger,outcome}`` and
``conclave_retention_erasures_total{outcome}``. ``data`` is the purge kind in lower case
(``direct_messages``, ``media_blobs``, ``sessions``, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from conclave.common.v1 import account_data_pb2 as D
from conclave.common.v1 import types_pb2
from conclave.events.v1 import events_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import Counter, Gauge

from conclave_kit.auth import current_claims
from conclave_kit.errors import InvalidArgument, Unavailable
from conclave_kit.logs import get_logger
from conclave_kit.nats_bus import EVENTS_STREAM, subscribe_events
from conclave_kit.tokens import Claims

ACCOUNT_DELETED = "conclave.events.account.deleted"
ERASURE_COMPLETED = "conclave.events.erasure.completed"
EXPORT_CHUNK_BYTES = 64 * 1024

_log = get_logger("conclave.account_data")

PURGE_LAG = Gauge(
    "conclave_retention_purge_lag_seconds",
    "How long the oldest expired item still stored is overdue, by kind of data (0: none).",
    ("data",),
)
PURGED_ITEMS = Counter(
    "conclave_retention_purged_items_total",
    "Expired items deleted by purges (scheduled and on demand), by kind of data.",
    ("data",),
)
PURGE_RUNS = Counter(
    "conclave_retention_purge_runs_total",
    "Purge runs of this server, by trigger (scheduled, on_demand) and outcome.",
    ("trigger", "outcome"),
)
ERASURES = Counter(
    "conclave_retention_erasures_total",
    "conclave.events.account.deleted events handled by this server, by outcome.",
    ("outcome",),
)

_SERVICE_NAMES = {
    "auth": types_pb2.SERVICE_NAME_AUTH,
    "keys": types_pb2.SERVICE_NAME_KEYS,
    "messaging": types_pb2.SERVICE_NAME_MESSAGING,
    "media": types_pb2.SERVICE_NAME_MEDIA,
    "retention": types_pb2.SERVICE_NAME_RETENTION,
}


def kind_label(kind: int) -> str:
    """The metrics label of a purge kind (``PURGE_KIND_MEDIA_BLOBS`` -> ``media_blobs``)."""
    return D.PurgeKind.Name(kind).removeprefix("PURGE_KIND_").lower()  # type: ignore[arg-type]


def iso(moment: datetime | None) -> str | None:
    """An export timestamp: RFC 3339 (ISO 8601 with offset), or None."""
    return None if moment is None else moment.isoformat()


async def rate_limit_buckets(db: Any, keys: Sequence[str]) -> list[dict[str, Any]]:
    """The export of the rate-limit buckets keyed by any of ``keys`` (account, devices).

    Bucket names are ``<limit name>:<key>`` (:mod:`conclave_kit.ratelimit`); ``db`` is a
    pool or connection on the service's schema.
    """
    rows = await db.fetch(
        "SELECT bucket, tokens, updated_at FROM rate_limit_buckets "
        "WHERE bucket LIKE ANY($1::text[]) ORDER BY bucket",
        [f"%:{key}" for key in keys],
    )
    out = []
    for row in rows:
        limit, _, key = str(row["bucket"]).rpartition(":")
        out.append(
            {
                "limit": limit,
                "key": key,
                "tokens": row["tokens"],
                "updated_at": iso(row["updated_at"]),
            }
        )
    return out


class AccountDataProvider(Protocol):
    """What one service implements for the data it owns.

    Attributes:
        service: Short service name (``auth``, ``keys``, ``messaging``, ``media``,
            ``retention``).
        kinds: The ``PurgeKind`` values this service holds.
    """

    service: str
    kinds: tuple[int, ...]

    async def export(self, claims: Claims) -> dict[str, Any]:
        """This service's JSON section of the export of ``claims.account_id``."""
        ...

    async def purge(self, kinds: frozenset[int]) -> dict[int, int]:
        """Deletes what has expired now (the provider's clock); items deleted per kind.

        Must be idempotent and safe to run on several replicas at the same time.
        """
        ...

    async def purge_lag(self) -> dict[int, float]:
        """Per kind: seconds the oldest expired item still stored is overdue (0.0: none)."""
        ...

    async def erase(self, account_id: str) -> int:
        """Erases everything this service holds about the account; items deleted.

        Must be idempotent: it may run again after a partial or complete erasure.
        """
        ...


async def refresh_lag(provider: AccountDataProvider) -> None:
    """Sets the purge-lag gauges from the provider."""
    for kind, lag in (await provider.purge_lag()).items():
        PURGE_LAG.labels(kind_label(kind)).set(max(0.0, lag))


async def run_purge(
    provider: AccountDataProvider, kinds: frozenset[int], trigger: str
) -> dict[int, int]:
    """Runs one purge of ``kinds`` (all held kinds when empty) and records its metrics."""
    wanted = frozenset(k for k in (kinds or provider.kinds) if k in provider.kinds)
    if not wanted:  # asked only for kinds this server does not hold
        return {}
    started = time.monotonic()
    try:
        counts = await provider.purge(wanted)
    except Exception:
        PURGE_RUNS.labels(trigger, "error").inc()
        raise
    for kind, items in counts.items():
        PURGED_ITEMS.labels(kind_label(kind)).inc(items)
    PURGE_RUNS.labels(trigger, "ok").inc()
    await refresh_lag(provider)
    _log.info(
        "purge_run",
        trigger=trigger,
        duration_ms=round((time.monotonic() - started) * 1000, 1),
        purged={kind_label(k): n for k, n in sorted(counts.items())},
    )
    return counts


class AccountDataServicer:
    """Serves AccountDataService from the provider set during start-up."""

    def __init__(self) -> None:
        self.provider: AccountDataProvider | None = None

    @property
    def _p(self) -> AccountDataProvider:
        if self.provider is None:
            raise Unavailable("account data is not available yet")
        return self.provider

    async def ExportAccountData(
        self, request: D.ExportAccountDataRequest, context: Any
    ) -> AsyncIterator[D.ExportAccountDataResponse]:
        """See account_data.proto."""
        section = await self._p.export(current_claims())
        document = json.dumps(section, ensure_ascii=False, sort_keys=True).encode()
        for start in range(0, len(document), EXPORT_CHUNK_BYTES):
            yield D.ExportAccountDataResponse(
                json_chunk=document[start : start + EXPORT_CHUNK_BYTES]
            )

    async def PurgeExpired(
        self, request: D.PurgeExpiredRequest, context: Any
    ) -> D.PurgeExpiredResponse:
        """See account_data.proto (operator only, enforced by the auth mode)."""
        kinds = [int(k) for k in request.kinds]
        for kind in kinds:
            if kind not in D.PurgeKind.values():
                raise InvalidArgument(f"kinds: unknown purge kind {kind}")
            if kind == D.PURGE_KIND_UNSPECIFIED:
                raise InvalidArgument("kinds: PURGE_KIND_UNSPECIFIED is not a kind")
        counts = await run_purge(self._p, frozenset(kinds), "on_demand")
        return D.PurgeExpiredResponse(
            counts=[D.PurgeCount(kind=k, items=n) for k, n in sorted(counts.items())]  # type: ignore[arg-type]
        )


class PurgeScheduler:
    """Runs the provider's purge every ``interval_seconds`` (one replica at a time).

    Args:
        provider: The service's provider.
        pool: Its PostgreSQL pool (for the advisory lock).
        interval_seconds: Seconds between runs; the first run comes after a random part of
            one interval so replicas started together do not collide.
    """

    def __init__(self, provider: AccountDataProvider, pool: Any, interval_seconds: float) -> None:
        self._provider = provider
        self._pool = pool
        self._interval = interval_seconds
        self._task: asyncio.Task[None] | None = None
        # One lock id per service: replicas of one service exclude each other only.
        self._lock_key = f"conclave-purge-{provider.service}"

    def start(self) -> None:
        """Starts the background loop."""
        self._task = asyncio.create_task(self._loop(), name=f"purge-{self._provider.service}")

    async def stop(self) -> None:
        """Stops the loop (waits for a run in progress to be cancelled)."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def run_once(self) -> dict[int, int] | None:
        """One scheduled run; None when another replica holds the lock."""
        async with self._pool.acquire() as conn:
            got = await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", self._lock_key)
            if not got:
                await refresh_lag(self._provider)
                return None
            try:
                return await run_purge(self._provider, frozenset(), "scheduled")
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", self._lock_key)

    async def _loop(self) -> None:
        # Spreads replicas started together; not security relevant.
        await asyncio.sleep(random.uniform(0.1, 1.0) * self._interval)  # noqa: S311
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # keep the schedule; the next run retries
                _log.error("purge_failed", error_type=type(err).__name__, exc_info=True)
            await asyncio.sleep(self._interval)


def erasure_completed(
    service: str, account_id: str, erasure_id: str, items: int
) -> tuple[str, bytes]:
    """A serialized ErasureCompleted event of ``service`` and its id.

    The id is derived from the erasure id and the service, so a redelivered AccountDeleted
    re-publishes with the same Nats-Msg-Id and JetStream stores it once.
    """
    event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"conclave:erasure:{erasure_id}:{service}"))
    stamp = Timestamp()
    stamp.GetCurrentTime()
    event = events_pb2.ErasureCompleted(
        event_id=event_id,
        occur_time=stamp,
        erasure_id=erasure_id,
        account_id=account_id,
        service=_SERVICE_NAMES[service],
        items_deleted=items,
    )
    return event_id, event.SerializeToString()


async def consume_erasures(js: JetStreamContext, provider: AccountDataProvider) -> None:
    """Subscribes the service to ``conclave.events.account.deleted`` (start-up step)."""
    durable = f"{provider.service}-account-deleted"

    async def handle(msg: Msg) -> None:
        try:
            event = events_pb2.AccountDeleted.FromString(msg.data)
            uuid.UUID(event.account_id)
        except Exception:  # malformed: drop it, retrying cannot help
            ERASURES.labels("malformed").inc()
            _log.warning("account_deleted_malformed")
            await msg.term()
            return
        try:
            items = await provider.erase(event.account_id)
            event_id, payload = erasure_completed(
                provider.service, event.account_id, event.erasure_id, items
            )
            await js.publish(
                ERASURE_COMPLETED, payload, stream=EVENTS_STREAM, headers={"Nats-Msg-Id": event_id}
            )
        except Exception as err:  # unacked: JetStream redelivers after ack_wait
            ERASURES.labels("retry").inc()
            _log.error("erasure_failed", error_type=type(err).__name__, exc_info=True)
            await msg.nak(delay=5)
            return
        ERASURES.labels("complete").inc()
        _log.info("account_erased", items=items)
        await msg.ack()

    await subscribe_events(js, ACCOUNT_DELETED, durable, handle, ack_wait=120, max_deliver=50)


def init_series(provider: AccountDataProvider) -> None:
    """Creates the provider's labelled series at 0 so alerts have data from start-up."""
    for kind in provider.kinds:
        PURGE_LAG.labels(kind_label(kind)).set(0)
        PURGED_ITEMS.labels(kind_label(kind))


def counts_by_label(counts: Mapping[int, int]) -> dict[str, int]:
    """``{kind: n}`` with readable keys (logs, benchmarks)."""
    return {kind_label(k): n for k, n in sorted(counts.items())}
