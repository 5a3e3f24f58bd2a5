"""Live delivery: one JetStream subscription per group per process, fanned out locally.

ARCHITECTURE.md §7: the Python client, not nats-server, is the bottleneck, so a process
never holds one NATS subscription per recipient of a group. It holds one ordered push
consumer per group log it has local listeners for and copies each message into the queues
of the local device streams that may see it. A device's 1:1 mailbox has no consumer: the
sender rings a core-NATS "doorbell" subject once the copy is stored, and the device's
stream reads its mailbox by subject (see :class:`Doorbell`).

A device stream (``Subscribe``) works like this:

1. It registers, and attaches to the feeds of its mailbox and of every group its account
   is in (each with a *floor*: the join sequence, nothing at or below it is delivered).
2. Once those subscriptions are live it reads each conversation's backlog from the
   device's acknowledged cursor, then sends ``catch_up_complete``.
3. It then drains its queue: live items at or below what it already sent for that
   conversation are skipped, so the overlap between backlog and live is delivered once.

Membership changes (made on this process, or seen on ``conclave.events.group.membership``
from other replicas) are applied synchronously: a removed account's streams detach from
the group before the next message is fanned out, and queued items of that group are
dropped; an added account's streams attach and catch up from the join sequence.

An item whose ``expire_time`` has passed (by the hub's clock, which tests move) is never
pushed, live or from the backlog: the purge deletes it from the stream later (its
interval bounds how long it stays stored), but no device receives it after its expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from math import inf

import asyncpg
import grpc
from conclave.auth.v1 import auth_pb2
from conclave.common.v1 import types_pb2
from conclave.events.v1 import events_pb2
from conclave.messaging.v1 import messaging_pb2 as M
from conclave_kit.errors import ConclaveError, Unauthenticated, Unavailable
from conclave_kit.logs import get_logger
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api

from conclave_messaging import store, streams
from conclave_messaging.events import GROUP_MEMBERSHIP
from conclave_messaging.manager import Caller
from conclave_messaging.metrics import (
    BACKLOG_ITEMS,
    CONNECTED_DEVICES,
    DELIVERIES,
    EXPIRED_SKIPPED,
    LOCAL_FEEDS,
    REDELIVERIES,
    SEND_TO_PUSH_SECONDS,
    STREAM_BACKLOG,
)

_log = get_logger("conclave.messaging.fanout")
DEFAULT_MAX_UNACKED = 1000
MAX_UNACKED = 10_000
# Core NATS subject announcing a newly opened stream of a device (payload: its nonce).
TAKEOVER_PREFIX = "conclave.msg.stream."
# Items a device stream may have queued before it counts as a slow consumer: it is then
# closed (UNAVAILABLE) and resumes from its cursor on reconnect, instead of growing memory.
MAX_QUEUED = 10_000


class Aborted(ConclaveError):
    """A newer stream of the same device replaced this one."""

    code = grpc.StatusCode.ABORTED
    default_reason = "STREAM_REPLACED"


@dataclass(frozen=True)
class Push:
    """A stored message for one conversation."""

    conversation: str
    seq: int
    item: M.SubscribeResponse  # as stored: a message or a membership change, no token
    size_class: str = "1"  # group size class for the latency metric (1 = 1:1)
    expires: float = inf  # expire_time as Unix seconds (inf: none), decoded once per item


def expiry_of(stored: M.SubscribeResponse) -> float:
    """A stored item's ``expire_time`` as Unix seconds (inf when it has none)."""
    if not stored.HasField("message") or not stored.message.HasField("expire_time"):
        return inf
    stamp = stored.message.expire_time
    return stamp.seconds + stamp.nanos / 1e9


@dataclass(frozen=True)
class CatchUp:
    """Read a conversation's backlog above ``floor`` (the account just joined it)."""

    conversation: str
    floor: int


@dataclass(frozen=True)
class Notice:
    """A live-only item pushed as is (no delivery token)."""

    response: M.SubscribeResponse


_WAKE = object()  # queue item that only makes the stream look at its close flag
Item = Push | CatchUp | Notice | object


@dataclass(eq=False)
class DeviceStream:
    """State of one open Subscribe stream (identity-hashed: one per call)."""

    who: Caller
    queue: asyncio.Queue[Item] = field(default_factory=asyncio.Queue)
    # Conversations this stream may deliver, with their floors.
    attached: dict[str, int] = field(default_factory=dict)
    # Highest sequence sent per conversation on this stream.
    sent: dict[str, int] = field(default_factory=dict)
    # Highest sequence sent on an earlier stream (items at or below are redeliveries).
    previously: dict[str, int] = field(default_factory=dict)
    closing: ConclaveError | None = None
    close_reason: int = 0
    nonce: str = field(default_factory=lambda: uuid.uuid4().hex)
    doorbell: Doorbell | None = None
    ring_pending: bool = False
    # Flow control (SubscribeRequest.max_unacknowledged): sequences sent and not yet
    # acknowledged, per conversation; the stream pauses while `unacked` reaches `limit`.
    limit: int = DEFAULT_MAX_UNACKED
    outstanding: dict[str, deque[int]] = field(default_factory=dict)
    unacked: int = 0
    window: asyncio.Event = field(default_factory=asyncio.Event)

    def acked(self, conversation: str, seq: int) -> None:
        """Acknowledgement up to ``seq`` (cumulative) arrived: reopen the window."""
        pending = self.outstanding.get(conversation)
        while pending and pending[0] <= seq:
            pending.popleft()
            self.unacked -= 1
        self.window.set()

    def ring(self) -> None:
        """New 1:1 copies are in the mailbox: read them (coalesced while one is pending)."""
        if not self.ring_pending:
            self.ring_pending = True
            self.queue.put_nowait(CatchUp(streams.DIRECT, 0))

    def close(self, error: ConclaveError, reason: int = 0) -> None:
        """Asks the stream to end with ``error`` (after ``session_closed`` if reason)."""
        if self.closing is None:
            self.closing = error
            self.close_reason = reason
            self.queue.put_nowait(_WAKE)
            self.window.set()


class _Subscribing:
    """A NATS subscription being set up in the background; ``ready()`` awaits it."""

    _task: asyncio.Task[None]
    _subs: list[Subscription]

    async def ready(self) -> None:
        """Returns once the subscription is live (messages stored later reach it).

        Raises:
            Unavailable: NATS refused the subscription.
        """
        try:
            await asyncio.shield(self._task)
        except Exception as err:
            raise Unavailable("message feed unavailable; retry") from err

    async def stop(self) -> None:
        """Unsubscribes (after the start finished)."""
        with contextlib.suppress(Exception):
            await self._task
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


class Doorbell(_Subscribing):
    """Live path of one device's 1:1 mailbox: a core-NATS subscription, not a consumer.

    A JetStream consumer per connected device would cost nats-server state and idle
    heartbeats per device; a plain subscription costs neither. The sending replica rings
    ``conclave.msg.ring.<device>`` after JetStream acknowledged the copy, so a ring always
    finds the copy stored; the stream then reads the mailbox by subject from what it last
    sent (which also yields the sequence for the delivery token).
    """

    def __init__(self, nats: NatsClient, ds: DeviceStream) -> None:
        self._subs = []

        async def ring(msg: Msg) -> None:
            ds.ring()

        async def acked(msg: Msg) -> None:
            # AckMessages may be served by any replica; it announces the new cursors here.
            for conversation, seq in streams.parse_acked(msg.data):
                ds.acked(conversation, seq)

        async def start() -> None:
            device = ds.who.device_id
            self._subs.append(await nats.subscribe(streams.ring_subject(device), cb=ring))
            self._subs.append(await nats.subscribe(streams.acked_subject(device), cb=acked))

        self._task = asyncio.create_task(start(), name="doorbell-start")


class Feed(_Subscribing):
    """One ordered push consumer on a subject, copying messages to local listeners."""

    def __init__(
        self, js: JetStreamContext, subject: str, conversation: str, queued: list[int]
    ) -> None:
        self.subject = subject
        self.conversation = conversation
        self.listeners: dict[DeviceStream, int] = {}
        self._queued = queued  # shared per-stream counter of items waiting in device queues
        self._subs = []
        self._task = asyncio.create_task(self._start(js), name=f"feed-start-{conversation}")
        LOCAL_FEEDS.inc()

    async def _start(self, js: JetStreamContext) -> None:
        sub = await js.subscribe(
            self.subject,
            cb=self._on_msg,
            ordered_consumer=True,
            config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.NEW),
        )
        self._subs.append(sub)

    async def _on_msg(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        try:
            stored = M.SubscribeResponse.FromString(msg.data)
        except Exception:  # a foreign message on our subject must not stop the feed
            _log.warning("feed_message_malformed")
            return
        size = (msg.headers or {}).get(streams.SIZE_HEADER, "1")
        push = Push(self.conversation, seq, stored, size, expiry_of(stored))
        # The sending device has the plaintext already; its other devices get a copy.
        sender = stored.message.sender.device_id
        queued = 0
        for ds, floor in self.listeners.items():
            if seq > floor and ds.who.device_id != sender:
                if ds.queue.qsize() >= MAX_QUEUED:
                    ds.close(Unavailable("stream fell behind; reconnect to resume"))
                    continue
                ds.queue.put_nowait(push)
                queued += 1
        self._queued[0] += queued

    @property
    def pending(self) -> int:
        """Messages received from NATS and not yet fanned out."""
        return sum(sub.pending_msgs for sub in self._subs)

    async def stop(self) -> None:
        """Unsubscribes (after the start finished)."""
        LOCAL_FEEDS.dec()
        await super().stop()


class Hub:
    """This process's device streams and feeds.

    Args:
        nats: The NATS connection (core subjects: stream take-over announcements).
        js: JetStream context.
        pool: Pool on the ``messaging`` schema (cursors, join sequences).
        clock: Current time for expiry decisions (injectable: tests move it).
    """

    def __init__(
        self,
        nats: NatsClient,
        js: JetStreamContext,
        pool: asyncpg.Pool,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._clock = clock
        self._nats = nats
        self._js = js
        self._process = uuid.uuid4().hex  # tells this process's announcements apart
        self._pool = pool
        self._streams: dict[str, DeviceStream] = {}
        self._by_account: dict[str, set[DeviceStream]] = {}
        self._feeds: dict[str, Feed] = {}
        self._versions: dict[str, int] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._events: Subscription | None = None
        self._takeovers: Subscription | None = None
        self._queued = {streams.GROUPS_STREAM: [0], streams.DIRECT_STREAM: [0]}
        for name, counter in self._queued.items():
            STREAM_BACKLOG.labels(name).set_function(
                lambda name=name, counter=counter: counter[0] + self._pending(name)  # type: ignore[misc]
            )

    def _pending(self, stream: str) -> int:
        prefix = streams.GROUP_PREFIX if stream == streams.GROUPS_STREAM else streams.DEVICE_PREFIX
        return sum(f.pending for s, f in self._feeds.items() if s.startswith(prefix))

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Follows membership changes made by other replicas."""

        async def on_event(msg: Msg) -> None:
            try:
                event = events_pb2.GroupMembership.FromString(msg.data)
            except Exception:
                _log.warning("membership_event_malformed")
                return
            await self.on_membership(event)

        async def on_takeover(msg: Msg) -> None:
            # Another replica opened a stream for this device: one stream per device.
            # Local replacements are handled in _register; only other processes count.
            origin, _, _nonce = msg.data.decode(errors="replace").partition(":")
            ds = self._streams.get(msg.subject.rsplit(".", 1)[-1])
            if ds is not None and origin != self._process:
                ds.close(Aborted("a newer stream of this device replaced this one"))

        self._takeovers = await self._nats.subscribe(TAKEOVER_PREFIX + "*", cb=on_takeover)
        self._events = await self._js.subscribe(
            GROUP_MEMBERSHIP,
            cb=on_event,
            ordered_consumer=True,
            config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.NEW),
        )

    async def stop(self) -> None:
        """Ends every stream and subscription (shutdown)."""
        for ds in list(self._streams.values()):
            ds.close(Unavailable("server shutting down; reconnect"))
        for sub in (self._events, self._takeovers):
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        for feed in list(self._feeds.values()):
            await feed.stop()
        self._feeds.clear()
        if self._background:
            await asyncio.wait(self._background, timeout=5)

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------ attach / detach

    def _attach(self, ds: DeviceStream, conversation: str, floor: int) -> _Subscribing:
        if conversation == streams.DIRECT:
            ds.attached[conversation] = floor
            if ds.doorbell is None:
                ds.doorbell = Doorbell(self._nats, ds)
            return ds.doorbell
        stream, subject = streams.locate(conversation, ds.who.device_id)
        feed = self._feeds.get(subject)
        if feed is None:
            feed = self._feeds[subject] = Feed(
                self._js, subject, conversation, self._queued[stream]
            )
        feed.listeners[ds] = floor
        ds.attached[conversation] = floor
        return feed

    def _detach(self, ds: DeviceStream, conversation: str) -> None:
        ds.attached.pop(conversation, None)
        if conversation == streams.DIRECT:
            if ds.doorbell is not None:
                self._spawn(ds.doorbell.stop())
                ds.doorbell = None
            return
        _, subject = streams.locate(conversation, ds.who.device_id)
        feed = self._feeds.get(subject)
        if feed is None:
            return
        feed.listeners.pop(ds, None)
        if not feed.listeners:
            del self._feeds[subject]
            self._spawn(feed.stop())

    # ------------------------------------------------------------ events

    def on_revoked(self, event: events_pb2.SessionRevoked) -> None:
        """Closes the streams of a revoked session (revocation listener)."""
        for ds in list(self._streams.values()):
            if ds.who.session_id == event.session_id:
                ds.close(
                    Unauthenticated("session has been revoked"),
                    int(event.reason) or auth_pb2.SESSION_END_REASON_REVOKED,
                )

    def _expired(self, expires: float) -> bool:
        if expires == inf or expires > self._clock().timestamp():
            return False
        EXPIRED_SKIPPED.inc()
        return True

    def on_account_erased(self, account_id: str) -> None:
        """Ends this process's streams of an erased account.

        Its sessions are revoked too; this does not wait for the revocation event.
        """
        for ds in list(self._by_account.get(account_id, ())):
            ds.close(Unauthenticated("account deleted"))

    def push_policy_change(
        self, event: events_pb2.RetentionPolicyChanged, timer_seconds: float
    ) -> int:
        """Pushes a live ``policy_change`` to the participants' streams on this process.

        Returns how many streams got it.

        Every replica receives the event and pushes to its own streams, so each
        connected participant device gets it once. Live only (no token): a device that
        was offline reads the policy from RetentionService.
        """
        conversation = event.conversation
        which = conversation.WhichOneof("conversation")
        targets: list[tuple[DeviceStream, types_pb2.ConversationRef]] = []
        if which == "group_id":
            feed = self._feeds.get(streams.group_subject(conversation.group_id))
            if feed is not None:
                targets = [(ds, conversation) for ds in feed.listeners]
        elif which == "peer_account_id":
            # Each party names the conversation by the other one.
            account, peer = event.account_id, conversation.peer_account_id
            parties = {account: peer, peer: account}
            for party, other in parties.items():
                ref = types_pb2.ConversationRef(peer_account_id=other)
                targets += [(ds, ref) for ds in self._by_account.get(party, ())]
        for ds, ref in targets:
            change = M.ConversationPolicyChange(
                conversation=ref,
                changed_by_account_id=event.account_id,
                change_time=event.occur_time,
            )
            change.disappearing_message_timer.FromSeconds(int(timer_seconds))
            ds.queue.put_nowait(Notice(M.SubscribeResponse(policy_change=change)))
        return len(targets)

    async def on_membership(self, event: events_pb2.GroupMembership) -> None:
        """Applies a membership change to this process's streams (idempotent, ordered)."""
        change = event.change
        gid = change.group_id
        _, subject = streams.locate(gid, "")
        touched = [*change.added_account_ids, *change.removed_account_ids]
        if subject not in self._feeds and not any(a in self._by_account for a in touched):
            # Nothing here listens to this group: remember nothing (versions are kept only
            # for groups with local streams, so memory follows local use, not all groups).
            self._versions.pop(gid, None)
            return
        if change.membership_version and change.membership_version <= self._versions.get(gid, 0):
            return  # already applied (local change seen again on NATS) or stale
        self._versions[gid] = change.membership_version
        removed = set(change.removed_account_ids)
        for account in removed:
            for ds in list(self._by_account.get(account, ())):
                if gid in ds.attached:
                    self._detach(ds, gid)
                    # Its last item of the group; live only (it is no longer in the log's
                    # audience), so no token to acknowledge.
                    ds.queue.put_nowait(Notice(M.SubscribeResponse(membership_change=change)))
        if event.group_deleted:
            for streams_of_account in list(self._by_account.values()):
                for ds in list(streams_of_account):
                    if gid in ds.attached:
                        self._detach(ds, gid)
            self._versions.pop(gid, None)
            return
        added = [a for a in change.added_account_ids if a in self._by_account]
        if not added:
            return
        async with self._pool.acquire() as conn:
            floors = {a: await store.join_seq(conn, gid, a) for a in added}
        if self._versions.get(gid, 0) != change.membership_version:
            return  # a newer change arrived meanwhile; it decides
        for account, floor in floors.items():
            if floor is None:
                continue
            for ds in list(self._by_account.get(account, ())):
                if gid not in ds.attached:
                    self._attach(ds, gid, floor)
                    ds.queue.put_nowait(CatchUp(gid, floor))

    # ------------------------------------------------------------ streams

    def _register(self, ds: DeviceStream) -> None:
        older = self._streams.get(ds.who.device_id)
        if older is not None:
            older.close(Aborted("a newer stream of this device replaced this one"))
            self._unregister(older)
        self._streams[ds.who.device_id] = ds
        self._by_account.setdefault(ds.who.account_id, set()).add(ds)
        CONNECTED_DEVICES.inc()
        # Tell other replicas (core NATS, best effort: a stale stream elsewhere at worst
        # delivers duplicates, which clients drop by message id).
        announcement = f"{self._process}:{ds.nonce}".encode()
        self._spawn(self._nats.publish(TAKEOVER_PREFIX + ds.who.device_id, announcement))

    def _dequeued(self, push: Push) -> None:
        stream = (
            streams.DIRECT_STREAM if push.conversation == streams.DIRECT else streams.GROUPS_STREAM
        )
        self._queued[stream][0] -= 1

    def _unregister(self, ds: DeviceStream) -> None:
        if self._streams.get(ds.who.device_id) is ds:
            del self._streams[ds.who.device_id]
        else:
            return
        while not ds.queue.empty():  # items it will never push leave the backlog count
            item = ds.queue.get_nowait()
            if isinstance(item, Push):
                self._dequeued(item)
        if ds.closing is not None:
            ds.queue.put_nowait(_WAKE)  # the drain took its wake-up; it must still end
        CONNECTED_DEVICES.dec()
        group = self._by_account.get(ds.who.account_id)
        if group is not None:
            group.discard(ds)
            if not group:
                del self._by_account[ds.who.account_id]
        positions = {c: s for c, s in ds.sent.items() if c in ds.attached}
        for conversation in list(ds.attached):
            self._detach(ds, conversation)
        if positions:
            self._spawn(self._save_sent(ds.who, positions))

    async def _save_sent(self, who: Caller, positions: dict[str, int]) -> None:
        try:
            async with self._pool.acquire() as conn:
                await store.advance_delivered(
                    conn,
                    device_id=who.device_id,
                    account_id=who.account_id,
                    positions=positions,
                    now=_utcnow(),
                )
        except Exception as err:  # only the redelivered flag depends on it
            _log.warning("delivered_positions_not_saved", error_type=type(err).__name__)

    def _response(self, ds: DeviceStream, push: Push) -> M.SubscribeResponse:
        conversation, seq = push.conversation, push.seq
        ds.sent[conversation] = seq
        ds.outstanding.setdefault(conversation, deque()).append(seq)
        ds.unacked += 1
        response = M.SubscribeResponse()
        response.CopyFrom(push.item)
        if response.HasField("message"):
            DELIVERIES.inc()
        response.delivery_token = streams.delivery_token(ds.who.device_id, conversation, seq)
        if seq <= ds.previously.get(conversation, 0):
            if response.HasField("message"):
                response.message.redelivered = True
            REDELIVERIES.inc()
        return response

    async def _backlog(
        self, ds: DeviceStream, conversation: str, after: int, *, live: bool = False
    ) -> AsyncIterator[M.SubscribeResponse]:
        """Stored items above ``after`` (and above what this stream sent already)."""
        stream, subject = streams.locate(conversation, ds.who.device_id)
        after = max(after, ds.sent.get(conversation, 0))
        async for seq, data in streams.read_after(self._js, stream, subject, after):
            if ds.closing is not None or conversation not in ds.attached:
                return
            if seq <= ds.sent.get(conversation, 0):
                continue
            stored = M.SubscribeResponse.FromString(data)
            if stored.message.sender.device_id == ds.who.device_id:
                continue
            expires = expiry_of(stored)
            if self._expired(expires):
                continue
            await _window(ds)
            if ds.closing is not None:
                return
            if self._expired(expires):  # the window may have waited long
                continue
            if live:
                _observe_latency(stored, "1")
            yield self._response(ds, Push(conversation, seq, stored))

    async def subscribe(
        self, who: Caller, max_unacknowledged: int
    ) -> AsyncIterator[M.SubscribeResponse]:
        """The device's delivery stream (see the module docstring).

        Raises:
            InvalidArgument: ``max_unacknowledged`` out of range.
            Unauthenticated: The session was revoked (after a ``session_closed`` item).
            Aborted: A newer stream of the same device took over.
        """
        ds = DeviceStream(who, limit=max_unacknowledged or DEFAULT_MAX_UNACKED)
        self._register(ds)
        try:
            async with self._pool.acquire() as conn:
                rows = await store.subscriptions(conn, who.account_id, who.device_id)
            starts: list[tuple[str, int]] = []
            feeds = []
            for row in rows:
                conversation = str(row["conversation"])
                floor = int(row["floor"])
                feeds.append(self._attach(ds, conversation, floor))
                ds.previously[conversation] = int(row["delivered_seq"])
                starts.append((conversation, max(floor, int(row["acked_seq"]))))
            for feed in feeds:
                await feed.ready()
            backlog = 0
            for conversation, after in starts:
                async for response in self._backlog(ds, conversation, after):
                    backlog += 1
                    yield response
            BACKLOG_ITEMS.observe(backlog)
            if ds.closing is None:
                yield M.SubscribeResponse(
                    catch_up_complete=M.CatchUpComplete(backlog_count=backlog)
                )
            while ds.closing is None:
                item = await ds.queue.get()
                if isinstance(item, Push):
                    self._dequeued(item)
                    conversation = item.conversation
                    live_floor = ds.attached.get(conversation)
                    if (
                        live_floor is None
                        or item.seq <= live_floor
                        or item.seq <= ds.sent.get(conversation, 0)
                    ):
                        continue
                    if self._expired(item.expires):
                        continue
                    await _window(ds)
                    if ds.closing is not None:
                        break
                    if self._expired(item.expires):  # the window may have waited long
                        continue
                    response = self._response(ds, item)
                    _observe_latency(item.item, item.size_class)
                    yield response
                elif isinstance(item, Notice):
                    yield item.response
                elif isinstance(item, CatchUp):
                    direct = item.conversation == streams.DIRECT
                    if direct:
                        ds.ring_pending = False  # rings from now on need another read
                    else:
                        _, subject = streams.locate(item.conversation, who.device_id)
                        joined = self._feeds.get(subject)
                        if joined is not None:
                            await joined.ready()
                    async for response in self._backlog(
                        ds, item.conversation, item.floor, live=direct
                    ):
                        yield response
            if ds.close_reason:
                yield M.SubscribeResponse(
                    session_closed=M.SessionClosed(reason=ds.close_reason)  # type: ignore[arg-type]
                )
            assert ds.closing is not None
            raise ds.closing
        finally:
            self._unregister(ds)


async def _window(ds: DeviceStream) -> None:
    """Waits while the device has ``limit`` items unacknowledged (or until it closes)."""
    while ds.unacked >= ds.limit and ds.closing is None:
        ds.window.clear()
        await ds.window.wait()


def _observe_latency(stored: M.SubscribeResponse, size: str) -> None:
    if not stored.HasField("message"):
        return
    sent_at = stored.message.server_time
    SEND_TO_PUSH_SECONDS.labels(size).observe(
        max(0.0, time.time() - sent_at.seconds - sent_at.nanos / 1e9)
    )


def _utcnow() -> datetime:
    return datetime.now(UTC)
