"""Builds ``conclave.events.retention.policy_changed`` for the outbox (proto events/v1)."""

from __future__ import annotations

import uuid
from datetime import datetime

from conclave.common.v1 import types_pb2
from conclave.events.v1 import events_pb2
from conclave.retention.v1 import retention_pb2 as R
from conclave_kit.database import Connection
from conclave_kit.outbox import enqueue
from google.protobuf.timestamp_pb2 import Timestamp

POLICY_CHANGED = "conclave.events.retention.policy_changed"
GROUP_MEMBERSHIP = "conclave.events.group.membership"


async def policy_changed(
    conn: Connection,
    *,
    now: datetime,
    account_id: str,
    conversation: types_pb2.ConversationRef | None,
    policy: R.RetentionPolicy,
) -> events_pb2.RetentionPolicyChanged:
    """Queues the event in the current transaction; returns it."""
    event_id = str(uuid.uuid4())
    occur = Timestamp()
    occur.FromDatetime(now)
    event = events_pb2.RetentionPolicyChanged(
        event_id=event_id, occur_time=occur, account_id=account_id, policy=policy
    )
    if conversation is not None:
        event.conversation.CopyFrom(conversation)
    await enqueue(conn, POLICY_CHANGED, event_id, event.SerializeToString())
    return event
