"""RunPurge and ExportMyData: one call to every server, assembled into one answer.

Both call the five servers concurrently (retention's own share in-process, the other four
over gRPC with the caller's token, see :mod:`conclave_retention.peers`) within the call's
deadline, or 60 s when the caller set none.

- **RunPurge** reports every server: one that fails or runs out of time is a result
  (``completed`` false, a short reason), never an error of the whole run; totals count
  completed servers only.
- **ExportMyData** is all or nothing: if any server cannot contribute its section the
  RPC fails with UNAVAILABLE before a single byte is sent, so nobody mistakes a partial
  export for a complete one. The per-account rate (one export per
  ``CONCLAVE_RETENTION_EXPORT_INTERVAL_SECONDS``) is checked before the servers are asked
  and spent only once every section arrived: a failed export does not cost the user
  their hourly export.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import grpc
from conclave.common.v1 import account_data_pb2 as D
from conclave.common.v1 import types_pb2
from conclave.retention.v1 import retention_pb2 as R
from conclave_kit.account_data import AccountDataProvider, run_purge
from conclave_kit.errors import InvalidArgument, ResourceExhausted, Unavailable
from conclave_kit.logs import get_logger
from conclave_kit.ratelimit import Limit, RateLimiter
from conclave_kit.tokens import Claims
from google.protobuf.timestamp_pb2 import Timestamp

from conclave_retention.metrics import (
    EXPORT_BYTES,
    EXPORTS,
    PURGE_SERVER_RESULTS,
    RUN_PURGE_SECONDS,
)
from conclave_retention.peers import Metadata, Peers, failure_reason, outcome_label, translate

SERVERS = ("auth", "keys", "messaging", "media", "retention")
SERVICE_NAMES = {
    "auth": types_pb2.SERVICE_NAME_AUTH,
    "keys": types_pb2.SERVICE_NAME_KEYS,
    "messaging": types_pb2.SERVICE_NAME_MESSAGING,
    "media": types_pb2.SERVICE_NAME_MEDIA,
    "retention": types_pb2.SERVICE_NAME_RETENTION,
}
DEFAULT_BUDGET_SECONDS = 60.0
# Answer this much before the caller's deadline, so the report reaches it in time.
_DEADLINE_MARGIN_SECONDS = 0.25
EXPORT_FORMAT = "conclave-export-v1"
EXPORT_CHUNK_BYTES = 1024 * 1024
_log = get_logger("conclave.retention.operations")

Clock = Callable[[], datetime]


def budget(context: grpc.aio.ServicerContext[object, object]) -> float:
    """Seconds the servers may take: the caller's deadline less a margin, or 60 s."""
    remaining = context.time_remaining()
    if remaining is None:
        return DEFAULT_BUDGET_SECONDS
    return max(0.05, min(float(remaining) - _DEADLINE_MARGIN_SECONDS, DEFAULT_BUDGET_SECONDS))


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def check_kinds(kinds: list[int]) -> list[int]:
    """The requested purge kinds, validated.

    Raises:
        InvalidArgument: PURGE_KIND_UNSPECIFIED or a value the contract does not define.
    """
    for kind in kinds:
        if kind == D.PURGE_KIND_UNSPECIFIED:
            raise InvalidArgument(
                "kinds: PURGE_KIND_UNSPECIFIED is not a kind (leave kinds empty for all)",
                reason="UNSPECIFIED_KIND",
            )
        if kind not in D.PurgeKind.values():
            raise InvalidArgument(f"kinds: unknown purge kind {kind}", reason="UNKNOWN_KIND")
    return list(dict.fromkeys(kinds))


@dataclass
class _Outcome:
    server: str
    counts: dict[int, int] | None
    error: str = ""


class Operations:
    """RunPurge and ExportMyData over the five servers.

    Args:
        peers: Channels to the other four servers.
        provider: Retention's own account data (served in-process).
        pool: Pool on the ``retention`` schema (export rate limit).
        export_interval_seconds: One export per account per this many seconds.
        clock: Current time.
    """

    def __init__(
        self,
        peers: Peers,
        provider: AccountDataProvider,
        pool: asyncpg.Pool,
        export_interval_seconds: float,
        clock: Clock = lambda: datetime.now(UTC),
    ) -> None:
        self._peers = peers
        self._provider = provider
        self._limiter = RateLimiter(pool)
        self._export_limit = Limit("exports", 1, 1.0 / export_interval_seconds)
        self._clock = clock

    async def run_purge(
        self, kinds: list[int], metadata: Metadata, seconds: float
    ) -> R.RunPurgeResponse:
        """PurgeExpired on every server at once, reported per server (see module doc)."""
        kinds = check_kinds(kinds)
        run_id = str(uuid.uuid4())
        start = self._clock()
        started = time.monotonic()

        async def one(server: str) -> _Outcome:
            try:
                if server == "retention":
                    counts = await asyncio.wait_for(
                        run_purge(self._provider, frozenset(kinds), "on_demand"), seconds
                    )
                else:
                    reply = await self._peers.account_data(server).PurgeExpired(
                        D.PurgeExpiredRequest(kinds=kinds),  # type: ignore[arg-type]
                        metadata=metadata,
                        timeout=seconds,
                    )
                    counts = {int(c.kind): int(c.items) for c in reply.counts}
            except asyncio.CancelledError:
                raise
            except Exception as err:  # reported per server, never fails the run
                reason = failure_reason(err)
                PURGE_SERVER_RESULTS.labels(server, outcome_label(reason)).inc()
                if not isinstance(err, TimeoutError | grpc.aio.AioRpcError):
                    _log.error("run_purge_local_failed", run_id=run_id, exc_info=True)
                return _Outcome(server, None, reason)
            PURGE_SERVER_RESULTS.labels(server, "completed").inc()
            return _Outcome(server, counts)

        outcomes = await asyncio.gather(*(one(server) for server in SERVERS))
        end = self._clock()
        RUN_PURGE_SECONDS.observe(time.monotonic() - started)
        totals: dict[int, int] = {}
        response = R.RunPurgeResponse(run_id=run_id, start_time=_stamp(start), end_time=_stamp(end))
        for outcome in outcomes:
            result = response.services.add(
                service=SERVICE_NAMES[outcome.server],
                completed=outcome.counts is not None,
                error=outcome.error,
            )
            for kind, items in sorted((outcome.counts or {}).items()):
                result.counts.add(kind=kind, items=items)
                totals[kind] = totals.get(kind, 0) + items
        for kind, items in sorted(totals.items()):
            response.totals.add(kind=kind, items=items)
        _log.info(
            "run_purge",
            run_id=run_id,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
            incomplete=[o.server for o in outcomes if o.counts is None],
            totals={D.PurgeKind.Name(k): n for k, n in sorted(totals.items())},  # type: ignore[arg-type]
        )
        return response

    async def _section(
        self, server: str, claims: Claims, metadata: Metadata, seconds: float
    ) -> bytes:
        if server == "retention":
            section = await asyncio.wait_for(self._provider.export(claims), seconds)
            return json.dumps(section, ensure_ascii=False, sort_keys=True).encode()
        call = self._peers.account_data(server).ExportAccountData(
            D.ExportAccountDataRequest(), metadata=metadata, timeout=seconds
        )
        parts = [bytes(chunk.json_chunk) async for chunk in call]
        return b"".join(parts)

    async def export(self, claims: Claims, metadata: Metadata, seconds: float) -> Iterator[bytes]:
        """The caller's export as chunks of at most 1 MiB (see module docstring).

        Raises:
            ResourceExhausted: The account exported within the export interval.
            Unavailable: A server could not contribute its section.
            Unauthenticated: A server rejected the caller's token (revoked meanwhile).
        """
        account_id = claims.account_id
        tokens = await self._limiter.available(self._export_limit, account_id)
        if tokens < 1.0:
            EXPORTS.labels("rate_limited").inc()
            wait = (1.0 - tokens) / self._export_limit.refill_per_second
            raise ResourceExhausted(
                f"one export per {_human(1.0 / self._export_limit.refill_per_second)}; "
                f"retry in {math.ceil(wait)} s",
                retry_after_seconds=wait,
                reason="RATE_LIMITED",
            )
        tasks = {
            server: asyncio.create_task(self._section(server, claims, metadata, seconds))
            for server in SERVERS
        }
        try:
            await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks.values():
                task.cancel()  # no-op for finished ones; a failure stops the others
        # Retrieving every exception also keeps asyncio from warning about unread ones.
        errors = [
            (server, task.exception())
            for server, task in tasks.items()
            if task.done() and not task.cancelled() and task.exception() is not None
        ]
        if errors:
            server, err = errors[0]
            EXPORTS.labels("unavailable").inc()
            if isinstance(err, grpc.aio.AioRpcError):
                raise translate(err, server) from None
            if isinstance(err, TimeoutError):
                raise Unavailable(f"the {server} server could not answer (deadline exceeded)")
            raise err  # type: ignore[misc]  # our own failure: INTERNAL, logged
        sections = {server: _checked_section(server, t.result()) for server, t in tasks.items()}
        try:
            await self._limiter.take(self._export_limit, account_id)
        except ResourceExhausted:
            EXPORTS.labels("rate_limited").inc()  # a concurrent export of the account won
            raise
        generated = self._clock().astimezone(UTC).isoformat().replace("+00:00", "Z")
        document = assemble(account_id, generated, sections)
        EXPORTS.labels("delivered").inc()
        EXPORT_BYTES.observe(len(document))
        return (
            document[start : start + EXPORT_CHUNK_BYTES]
            for start in range(0, len(document), EXPORT_CHUNK_BYTES)
        )


def _human(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        hours = int(seconds // 3600)
        return "hour" if hours == 1 else f"{hours} hours"
    return f"{seconds:g} s"


def _checked_section(server: str, raw: bytes) -> bytes:
    """A server's section, which must be one JSON object.

    Raises:
        Unavailable: It is not (truncated or corrupt): the export is not delivered.
    """
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise Unavailable(f"the {server} server returned an unreadable export section")
    return raw


def assemble(account_id: str, generated_at: str, sections: dict[str, bytes]) -> bytes:
    """The export document: the documented envelope around each server's section bytes.

    The sections are embedded byte for byte (each was checked to be a JSON object), so
    the document is exactly what the servers said, without a second serialisation.
    """
    head = json.dumps(
        {"format": EXPORT_FORMAT, "account_id": account_id, "generated_at": generated_at}
    ).encode()
    parts = [head[:-1], b', "services": {']
    for index, server in enumerate(SERVERS):
        if index:
            parts.append(b", ")
        parts.append(json.dumps(server).encode() + b": ")
        parts.append(sections[server])
    parts.append(b"}}")
    return b"".join(parts)
