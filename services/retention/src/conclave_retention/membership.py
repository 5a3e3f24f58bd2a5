"""Who may read or set a group's policy: membership learned from messaging's events.

Messaging owns groups; retention never reads its schema. Instead a durable JetStream
consumer (``retention-group-membership``, shared by every retention replica, explicit
acks) follows ``conclave.events.group.membership`` from the start of the events stream
and keeps ``retention.group_members`` current.

Each event fully determines the state of the accounts it names at its membership
version: added → member (the creator, who is the actor and among the added of the
creation event, is an admin), removed → not a member, promoted → admin, demoted →
member. Rows are last-writer-wins by version, so redelivered or reordered events
converge to the same table. A deleted group's rows and policy are dropped.

Limitation: the events stream keeps 7 days; groups whose last membership change is older
than that when retention first starts are unknown to it (they answer NOT_FOUND) until
their next change. A deployment runs retention from the start, so this only matters
when retention is added to a deployment that already has groups.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import asyncpg
from conclave.events.v1 import events_pb2
from conclave_kit.logs import get_logger
from conclave_kit.nats_bus import EVENTS_STREAM
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext, api

from conclave_retention import store
from conclave_retention.events import GROUP_MEMBERSHIP
from conclave_retention.metrics import MEMBERSHIP_EVENTS

_log = get_logger("conclave.retention.membership")
DURABLE = "retention-group-membership"
_BATCH = 100


def _uuid(value: str) -> str | None:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


async def apply_event(pool: asyncpg.Pool, event: events_pb2.GroupMembership) -> None:
    """Applies one membership event (idempotent; see module docstring)."""
    change = event.change
    group_id = _uuid(change.group_id)
    if group_id is None:
        _log.warning("membership_event_malformed")
        return
    async with pool.acquire() as conn, conn.transaction():
        if event.group_deleted:
            await store.delete_group(conn, group_id)
            return
        states: dict[str, tuple[bool, bool]] = {}
        for account in change.added_account_ids:
            states[account] = (True, account == change.actor_account_id)
        for account in change.promoted_account_ids:
            states[account] = (True, True)
        for account in change.demoted_account_ids:
            states[account] = (True, False)
        for account in change.removed_account_ids:
            states[account] = (False, False)
        valid = {a: s for a, s in ((_uuid(k), v) for k, v in states.items()) if a is not None}
        await store.apply_membership(conn, group_id, int(change.membership_version), valid)
    MEMBERSHIP_EVENTS.inc()


class MembershipFollower:
    """Consumes membership events into ``group_members`` in the background.

    Args:
        pool: Pool on the ``retention`` schema.
        js: JetStream context.
    """

    def __init__(self, pool: asyncpg.Pool, js: JetStreamContext) -> None:
        self._pool = pool
        self._js = js
        self._task: asyncio.Task[None] | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._stopping = False
        self._busy = False  # applying a fetched batch (stop lets it finish)

    async def start(self) -> None:
        """Creates the durable consumer and starts following."""
        self._sub = await self._js.pull_subscribe(
            GROUP_MEMBERSHIP,
            durable=DURABLE,
            stream=EVENTS_STREAM,
            config=api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.ALL,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=10,
                max_deliver=-1,
            ),
        )
        self._task = asyncio.create_task(self._run(), name="membership-follower")

    async def stop(self) -> None:
        """Stops following after the batch in hand.

        The durable consumer keeps the position; a batch cut short would wait out
        ``ack_wait`` before it is redelivered.
        """
        self._stopping = True
        if self._task is not None:
            done: set[asyncio.Task[None]] = set()
            if self._busy:
                done, _ = await asyncio.wait({self._task}, timeout=5)
            if not done:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _run(self) -> None:
        assert self._sub is not None
        while not self._stopping:
            try:
                messages = await self._sub.fetch(_BATCH, timeout=0.5)
            except NatsTimeoutError:  # FetchTimeoutError too: nothing new, poll again
                continue
            except asyncio.CancelledError:
                raise
            except Exception as err:  # NATS hiccup: retry shortly
                _log.warning("membership_fetch_failed", error_type=type(err).__name__)
                await asyncio.sleep(1)
                continue
            self._busy = True
            try:
                await self._apply_batch(messages)
            finally:
                self._busy = False

    async def _apply_batch(self, messages: list[Msg]) -> None:
        for msg in messages:
            try:
                event = events_pb2.GroupMembership.FromString(msg.data)
            except Exception:
                _log.warning("membership_event_malformed")
                await msg.ack()
                continue
            try:
                await apply_event(self._pool, event)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # Postgres hiccup: redelivered after a second
                _log.warning("membership_apply_failed", error_type=type(err).__name__)
                await msg.nak(delay=1)
                continue
            await msg.ack()
