"""Scrubbing CONCLAVE_EVENTS of erased accounts.

After every server reported an erasure complete, no stream message may still name the
account: its ``account.deleted`` and ``erasure.completed`` events, its sessions'
``session.revoked``, its ``audit.recorded``, membership changes naming it, policy changes
naming it as a peer. JetStream cannot search by content, so the scrub reads the whole
stream once (an ephemeral pull consumer, no acks, in-memory state) and deletes each message
whose payload or headers contain the account id as text (the canonical lower-case UUID, and
its upper-case form) with JetStream's secure delete (the stored bytes are overwritten).

Cost: one read of the stream, i.e. at most 7 days of events (its age limit); one scan
serves every erasure due at that moment. Deleting is one request per matching message.

Why deleting is safe: every consumer that acts on these events is one of the five
servers, and each had processed the account's events before it reported its erasure
complete (a server's erase runs after the ``account.deleted`` event, and what it erased
covers whatever the earlier events would have done). Retention scrubs only after all
five reported, plus a settle time for events the servers' outbox relays publish while
erasing, so nothing still needs a deleted message.

Residual cost: an event that names the erased account *and* others (a membership change
adding several accounts) is deleted whole. Consumers that follow those events live
(messaging's ordered consumers, retention's membership follower, normally milliseconds
behind) have applied it long before; only a durable consumer lagging by more than the
erasure's duration would miss it for the other accounts too.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from conclave.events.v1 import events_pb2
from conclave_kit.logs import get_logger
from conclave_kit.nats_bus import EVENTS_STREAM, EVENTS_SUBJECTS
from google.protobuf import json_format
from google.protobuf.message import Message
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

_BATCH = 1000
_log = get_logger("conclave.retention.scrub")


def _needles(account_ids: Sequence[str]) -> list[bytes]:
    needles: list[bytes] = []
    for account in account_ids:
        needles += [account.lower().encode(), account.upper().encode()]
    return needles


def _names_account(msg: Msg, needles: Sequence[bytes]) -> bool:
    if any(needle in msg.data for needle in needles):
        return True
    for value in (msg.headers or {}).values():
        raw = value.encode()
        if any(needle in raw for needle in needles):
            return True
    return False


async def scan_events(js: JetStreamContext) -> AsyncIterator[Msg]:
    """Yields every CONCLAVE_EVENTS message, oldest first, until the scan has caught up.

    Messages published while the scan runs are read too (the consumer follows the stream).
    The consumer is ephemeral, in memory and without acks: nothing is left behind.
    """
    info = await js.stream_info(EVENTS_STREAM)
    if info.state.messages == 0:
        return
    sub = await js.pull_subscribe(
        EVENTS_SUBJECTS[0],
        stream=EVENTS_STREAM,
        config=api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.NONE,
            inactive_threshold=60.0,  # gone by itself should we crash mid-scan
            mem_storage=True,
            num_replicas=1,
        ),
    )
    consumer = (await sub.consumer_info()).name
    try:
        while True:
            try:
                batch = await sub.fetch(_BATCH, timeout=1.0)
            except NatsTimeoutError:  # FetchTimeoutError too: nothing arrived in time
                batch = []
            for msg in batch:
                yield msg
            if len(batch) < _BATCH and (await sub.consumer_info()).num_pending == 0:
                break
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(EVENTS_STREAM, consumer)


async def scrub_events(js: JetStreamContext, account_ids: Sequence[str]) -> tuple[int, int]:
    """Deletes every CONCLAVE_EVENTS message naming one of ``account_ids``.

    Returns:
        (messages scanned, messages deleted).
    """
    needles = _needles(account_ids)
    if not needles:
        return 0, 0
    scanned = deleted = 0
    async for msg in scan_events(js):
        scanned += 1
        if _names_account(msg, needles):
            with contextlib.suppress(NotFoundError):  # deleted meanwhile
                await js.delete_msg(EVENTS_STREAM, msg.metadata.sequence.stream)
            deleted += 1
    _log.info("events_scrubbed", scanned=scanned, deleted=deleted)
    return scanned, deleted


# Payload type of each event subject (proto/conclave/events/v1, docs/api.md).
_EVENT_TYPES: dict[str, type[Message]] = {
    "conclave.events.session.revoked": events_pb2.SessionRevoked,
    "conclave.events.account.deleted": events_pb2.AccountDeleted,
    "conclave.events.erasure.completed": events_pb2.ErasureCompleted,
    "conclave.events.device.removed": events_pb2.DeviceRemoved,
    "conclave.events.prekeys.low": events_pb2.PrekeysLow,
    "conclave.events.group.membership": events_pb2.GroupMembership,
    "conclave.events.retention.policy_changed": events_pb2.RetentionPolicyChanged,
    "conclave.events.audit.recorded": events_pb2.AuditRecorded,
}


async def events_naming(js: JetStreamContext, account_id: str) -> list[dict[str, Any]]:
    """Every CONCLAVE_EVENTS message naming the account, decoded (the export's events).

    One read of the stream (at most its 7-day age limit); exports are rate limited.
    """
    needles = _needles([account_id])
    found: list[dict[str, Any]] = []
    async for msg in scan_events(js):
        if not _names_account(msg, needles):
            continue
        entry: dict[str, Any] = {
            "subject": msg.subject,
            "stream_seq": msg.metadata.sequence.stream,
            "stored_at": msg.metadata.timestamp.isoformat(),
        }
        kind = _EVENT_TYPES.get(msg.subject)
        try:
            if kind is None:
                raise ValueError(msg.subject)
            entry["event"] = json_format.MessageToDict(kind.FromString(msg.data))
        except Exception:  # unknown or undecodable: still listed, as its size
            entry["payload_bytes"] = len(msg.data)
        found.append(entry)
    return found
