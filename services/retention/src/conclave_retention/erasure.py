"""Account erasure: DeleteAccount, per-server progress, and GetErasureStatus.

Flow (docs/api.md, docs/data-map.md):

1. ``DeleteAccount`` checks the request (INVALID_ARGUMENT), that ``confirm_username`` is
   exactly the caller's username (``AuthService.GetAccount`` with the caller's token;
   INVALID_ARGUMENT otherwise, before any credential is spent), and password + TOTP code
   (``AuthService.Reauthenticate`` on the caller's token; PERMISSION_DENIED when wrong).
   Only then, in **one** PostgreSQL transaction, it inserts the erasure request and the
   outbox event ``conclave.events.account.deleted``; the relay publishes it.
2. Every server (retention too, through the kit) erases the account and publishes
   ``conclave.events.erasure.completed``; the durable consumer
   ``retention-erasure-completed`` records each server's completion.
3. When all five have reported, and after a short settle time (outbox relays publish
   what the servers wrote while erasing), the scrubber deletes every CONCLAVE_EVENTS
   message naming the account (:mod:`conclave_retention.scrub`); then the record turns
   COMPLETE and forgets the account id and the erasure id (only its SHA-256 stays).
4. Completed records are purged 30 days later (retention's BOOKKEEPING purge).

Erasure ids are 32 random bytes, unpadded base64url. Rows are found by SHA-256 of the id;
the id itself is stored only while the erasure is pending, because a repeated
DeleteAccount must answer the same id and a hash cannot be turned back into it. A
repeat is a full request (credentials checked again) that finds the pending row by
account (a partial unique index makes concurrent requests meet one row).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
from conclave.auth.v1 import auth_pb2 as A
from conclave.events.v1 import events_pb2
from conclave.retention.v1 import retention_pb2 as R
from conclave_kit.errors import InvalidArgument, NotFound, PermissionDenied
from conclave_kit.logs import get_logger
from conclave_kit.nats_bus import EVENTS_STREAM
from conclave_kit.outbox import OutboxRelay, enqueue
from conclave_kit.tokens import Claims
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext, api

from conclave_retention.metrics import (
    ERASURE_PENDING_OLDEST,
    ERASURE_REPORTS,
    ERASURE_REQUESTS,
    ERASURES_COMPLETED,
    SCRUB_SECONDS,
    SCRUBBED_EVENTS,
)
from conclave_retention.operations import SERVERS, SERVICE_NAMES
from conclave_retention.peers import Metadata, Peers, translate
from conclave_retention.scrub import scrub_events

ACCOUNT_DELETED = "conclave.events.account.deleted"
ERASURE_COMPLETED = "conclave.events.erasure.completed"
COMPLETED_CONSUMER = "retention-erasure-completed"
_ID = re.compile(r"^[A-Za-z0-9_-]{43}$")
_TOTP = re.compile(r"^[0-9]{6}$")
_AUTH_TIMEOUT_SECONDS = 15.0
_SCRUB_POLL_SECONDS = 5.0
_SCRUB_LOCK = "conclave-retention-event-scrub"
_SERVER_OF: dict[int, str] = {int(value): name for name, value in SERVICE_NAMES.items()}
_log = get_logger("conclave.retention.erasure")

Clock = Callable[[], datetime]


def new_erasure_id() -> str:
    """32 random bytes as unpadded base64url (43 characters)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")


def id_hash(erasure_id: str) -> bytes:
    """SHA-256 of the erasure id: how records are stored and found."""
    return hashlib.sha256(erasure_id.encode("ascii")).digest()


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def check_request(request: R.DeleteAccountRequest) -> None:
    """Field checks, before anything is asked of auth.

    Raises:
        InvalidArgument: A field is missing or malformed.
    """
    if not request.password:
        raise InvalidArgument("password is required", reason="MISSING_FIELD")
    if not request.totp_code:
        raise InvalidArgument("totp_code is required", reason="MISSING_FIELD")
    if not _TOTP.match(request.totp_code):
        raise InvalidArgument("totp_code must be 6 digits", reason="BAD_TOTP_FORMAT")
    if not request.confirm_username:
        raise InvalidArgument(
            "confirm_username is required: type your username to confirm",
            reason="CONFIRMATION_REQUIRED",
        )


class ErasureManager:
    """DeleteAccount, GetErasureStatus, completion tracking and the events scrub.

    Args:
        pool: Pool on the ``retention`` schema.
        js: JetStream context.
        relay: Publishes the outbox after commit.
        peers: Channels to the other servers (auth).
        clock: Current time.
        settle_seconds: Wait after the last server reported before scrubbing.
        erase_local: Retention's own erasure, run once more right after the scrub (see
            :meth:`scrub_due`).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        js: JetStreamContext,
        relay: OutboxRelay,
        peers: Peers,
        clock: Clock = lambda: datetime.now(UTC),
        settle_seconds: float = 2.0,
        erase_local: Callable[[str], Awaitable[int]] | None = None,
    ) -> None:
        self._pool = pool
        self._js = js
        self._relay = relay
        self._peers = peers
        self._clock = clock
        self._settle = settle_seconds
        self._erase_local = erase_local
        self._wake = asyncio.Event()
        self._sub: JetStreamContext.PullSubscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    # -- DeleteAccount -------------------------------------------------------------------

    async def delete_account(
        self, claims: Claims, metadata: Metadata, request: R.DeleteAccountRequest
    ) -> R.DeleteAccountResponse:
        """See module docstring, step 1."""
        check_request(request)
        account_id = str(uuid.UUID(claims.account_id))
        auth = self._peers.auth()
        try:
            account = await auth.GetAccount(
                A.GetAccountRequest(), metadata=metadata, timeout=_AUTH_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as err:
            raise translate(err, "auth") from None
        # Not a secret (the caller typed it and auth just told us), so a plain comparison.
        if request.confirm_username != account.username:
            ERASURE_REQUESTS.labels("confirmation_mismatch").inc()
            raise InvalidArgument(
                "confirm_username does not match your username", reason="CONFIRMATION_MISMATCH"
            )
        try:
            await auth.Reauthenticate(
                A.ReauthenticateRequest(password=request.password, totp_code=request.totp_code),
                metadata=metadata,
                timeout=_AUTH_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.PERMISSION_DENIED:
                ERASURE_REQUESTS.labels("bad_credentials").inc()
                raise PermissionDenied("wrong password or code", reason="BAD_CREDENTIALS") from None
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(err.details() or "invalid credentials format") from None
            raise translate(err, "auth") from None
        erasure_id, requested_at, started = await self._record(account_id)
        ERASURE_REQUESTS.labels("started" if started else "repeated").inc()
        _log.info("erasure_requested", repeated=not started)
        return R.DeleteAccountResponse(erasure_id=erasure_id, request_time=_stamp(requested_at))

    async def _record(self, account_id: str) -> tuple[str, datetime, bool]:
        """Inserts the request and its event, or finds the pending one (returned as is)."""
        erasure_id = new_erasure_id()
        now = self._clock()
        async with self._pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                "INSERT INTO erasure_requests (id_hash, erasure_id, account_id, requested_at) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (account_id) WHERE account_id IS NOT NULL "
                "DO NOTHING RETURNING true",
                id_hash(erasure_id),
                erasure_id,
                account_id,
                now,
            )
            if not inserted:
                row = await conn.fetchrow(
                    "SELECT erasure_id, requested_at FROM erasure_requests WHERE account_id = $1",
                    account_id,
                )
                assert row is not None  # the conflicting row; pending rows are never deleted
                return str(row["erasure_id"]), row["requested_at"], False
            event_id = str(uuid.uuid4())
            event = events_pb2.AccountDeleted(
                event_id=event_id,
                occur_time=_stamp(now),
                account_id=account_id,
                erasure_id=erasure_id,
            )
            await enqueue(conn, ACCOUNT_DELETED, event_id, event.SerializeToString())
        self._relay.wake()
        return erasure_id, now, True

    # -- GetErasureStatus ----------------------------------------------------------------

    async def status(self, erasure_id: str) -> R.GetErasureStatusResponse:
        """Per-server progress.

        Raises:
            InvalidArgument: Not an erasure id (43 base64url characters).
            NotFound: Unknown, or completed more than 30 days ago and purged.
        """
        if not _ID.match(erasure_id):
            raise InvalidArgument(
                "erasure_id must be the 43-character id DeleteAccount returned",
                reason="BAD_ERASURE_ID",
            )
        key = id_hash(erasure_id)
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT requested_at, completed_at FROM erasure_requests WHERE id_hash = $1", key
            )
            done = await conn.fetch(
                "SELECT service, completed_at FROM erasure_progress WHERE id_hash = $1", key
            )
        if row is None:
            raise NotFound("no such erasure (unknown, or completed over 30 days ago)")
        reported = {int(r["service"]): r["completed_at"] for r in done}
        response = R.GetErasureStatusResponse(
            state=R.ERASURE_STATE_PENDING
            if row["completed_at"] is None
            else R.ERASURE_STATE_COMPLETE,
            request_time=_stamp(row["requested_at"]),
        )
        if row["completed_at"] is not None:
            response.complete_time.CopyFrom(_stamp(row["completed_at"]))
        for server in SERVERS:
            value = SERVICE_NAMES[server]
            entry = response.services.add(service=value, state=R.ERASURE_STATE_PENDING)
            if value in reported:
                entry.state = R.ERASURE_STATE_COMPLETE
                entry.complete_time.CopyFrom(_stamp(reported[value]))
        return response

    # -- conclave.events.erasure.completed -------------------------------------------------

    async def apply_completion(self, event: events_pb2.ErasureCompleted) -> bool:
        """Records one server's completion; True when it was the fifth."""
        server = _SERVER_OF.get(int(event.service))
        if server is None or not _ID.match(event.erasure_id):
            _log.warning("erasure_completed_malformed")
            return False
        key = id_hash(event.erasure_id)
        now = self._clock()
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT account_id, servers_done_at FROM erasure_requests "
                "WHERE id_hash = $1 FOR UPDATE",
                key,
            )
            if row is None or row["account_id"] is None:
                return False  # unknown, or already complete (a redelivery)
            if str(row["account_id"]) != event.account_id:
                _log.warning("erasure_completed_account_mismatch", server=server)
                return False
            await conn.execute(
                "INSERT INTO erasure_progress (id_hash, service, completed_at) "
                "VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                key,
                int(event.service),
                now,
            )
            reported = await conn.fetchval(
                "SELECT count(*) FROM erasure_progress WHERE id_hash = $1", key
            )
            last = reported >= len(SERVERS) and row["servers_done_at"] is None
            if last:
                await conn.execute(
                    "UPDATE erasure_requests SET servers_done_at = $2 WHERE id_hash = $1",
                    key,
                    now,
                )
        ERASURE_REPORTS.labels(server).inc()
        if last:
            self._wake.set()
        return bool(last)

    async def start(self) -> None:
        """Creates the durable consumer; starts following it and the scrubber."""
        self._sub = await self._js.pull_subscribe(
            ERASURE_COMPLETED,
            durable=COMPLETED_CONSUMER,
            stream=EVENTS_STREAM,
            config=api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.ALL,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=30,
                max_deliver=-1,
            ),
        )
        self._tasks = [
            asyncio.create_task(self._follow(), name="erasure-completed-follower"),
            asyncio.create_task(self._scrub_loop(), name="erasure-scrubber"),
        ]

    async def stop(self) -> None:
        """Stops following and scrubbing (the durable consumer keeps the position)."""
        self._stopping = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _follow(self) -> None:
        assert self._sub is not None
        while not self._stopping:
            try:
                messages = await self._sub.fetch(50, timeout=0.5)
            except NatsTimeoutError:  # FetchTimeoutError too: nothing new, poll again
                continue
            except asyncio.CancelledError:
                raise
            except Exception as err:  # NATS hiccup: retry shortly
                _log.warning("erasure_fetch_failed", error_type=type(err).__name__)
                await asyncio.sleep(1)
                continue
            for msg in messages:
                await self._handle(msg)

    async def _handle(self, msg: Msg) -> None:
        try:
            event = events_pb2.ErasureCompleted.FromString(msg.data)
        except Exception:  # malformed: retrying cannot help
            _log.warning("erasure_completed_malformed")
            await msg.ack()
            return
        try:
            await self.apply_completion(event)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # Postgres hiccup: redelivered after a second
            _log.warning("erasure_completed_apply_failed", error_type=type(err).__name__)
            await msg.nak(delay=1)
            return
        await msg.ack()

    # -- scrubbing CONCLAVE_EVENTS -----------------------------------------------------------

    async def scrub_due(self) -> int:
        """Scrubs the events of every erasure whose servers all reported, and completes them.

        One replica at a time (advisory lock); one scan covers every due erasure.

        Returns:
            The number of erasures completed.
        """
        now = self._clock()
        async with self._pool.acquire() as conn:
            got = await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", _SCRUB_LOCK)
            if not got:
                return 0
            try:
                due = await conn.fetch(
                    "SELECT id_hash, account_id FROM erasure_requests WHERE completed_at IS NULL "
                    "AND servers_done_at <= $1",
                    now - timedelta(seconds=self._settle),
                )
                if not due:
                    return 0
                accounts = sorted({str(r["account_id"]) for r in due})
                with SCRUB_SECONDS.time():
                    scanned, deleted = await scrub_events(self._js, accounts)
                if self._erase_local is not None:
                    # Retention's membership follower may have applied an older event
                    # naming the account after retention's own erasure ran; those events
                    # are gone now, so a second pass leaves nothing behind for good.
                    for account in accounts:
                        await self._erase_local(account)
                SCRUBBED_EVENTS.inc(deleted)
                completed = await conn.execute(
                    "UPDATE erasure_requests SET completed_at = $2, account_id = NULL, "
                    "erasure_id = NULL WHERE id_hash = ANY($1::bytea[]) AND completed_at IS NULL",
                    [r["id_hash"] for r in due],
                    self._clock(),
                )
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", _SCRUB_LOCK)
        count = int(str(completed).rsplit(" ", 1)[-1])
        ERASURES_COMPLETED.inc(count)
        _log.info("erasures_completed", erasures=count, events_scanned=scanned, deleted=deleted)
        return count

    async def _next_wait(self) -> float:
        """Seconds until the next erasure is due for scrubbing (at most the poll interval).

        Also refreshes the oldest-pending gauge.
        """
        now = self._clock()
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT min(requested_at) AS oldest, min(servers_done_at) AS next_done "
                "FROM erasure_requests WHERE completed_at IS NULL"
            )
        assert row is not None
        oldest, next_done = row["oldest"], row["next_done"]
        ERASURE_PENDING_OLDEST.set(0 if oldest is None else (now - oldest).total_seconds())
        if next_done is None:
            return _SCRUB_POLL_SECONDS
        due_in = (next_done + timedelta(seconds=self._settle) - now).total_seconds()
        return max(0.0, min(float(due_in), _SCRUB_POLL_SECONDS))

    async def _scrub_loop(self) -> None:
        while not self._stopping:
            # Cleared first: a fifth report arriving during the pass below must shorten
            # the wait after it, not be lost until the next poll.
            self._wake.clear()
            try:
                await self.scrub_due()
                wait = await self._next_wait()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # NATS or Postgres hiccup: try again on the next poll
                _log.warning("erasure_scrub_failed", error_type=type(err).__name__)
                wait = _SCRUB_POLL_SECONDS
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, 0.05)):
                    await self._wake.wait()
