"""Builds ``conclave.events.group.membership`` for the outbox (proto events/v1)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from conclave.events.v1 import events_pb2
from conclave.messaging.v1 import messaging_pb2 as M
from conclave_kit.database import Connection
from conclave_kit.outbox import enqueue
from google.protobuf.timestamp_pb2 import Timestamp

from conclave_messaging.streams import group_subject

GROUP_MEMBERSHIP = "conclave.events.group.membership"
DEVICE_REMOVED = "conclave.events.device.removed"
# One durable consumer shared by all messaging replicas (a deliver group): each removal is
# handled once per deployment, and none is lost while the service is down.
DEVICE_REMOVED_CONSUMER = "messaging-device-removed"


def timestamp(moment: datetime) -> Timestamp:
    """A protobuf Timestamp for an aware datetime."""
    ts = Timestamp()
    ts.FromDatetime(moment)
    return ts


def membership_change(
    *,
    group_id: str,
    version: int,
    actor: str,
    now: datetime,
    added: Sequence[str] = (),
    removed: Sequence[str] = (),
    promoted: Sequence[str] = (),
    demoted: Sequence[str] = (),
) -> M.GroupMembershipChange:
    """The change as member devices and other replicas see it."""
    return M.GroupMembershipChange(
        group_id=group_id,
        membership_version=version,
        actor_account_id=actor,
        added_account_ids=list(added),
        removed_account_ids=list(removed),
        promoted_account_ids=list(promoted),
        demoted_account_ids=list(demoted),
        change_time=timestamp(now),
    )


async def group_membership(
    conn: Connection, change: M.GroupMembershipChange, *, group_deleted: bool = False
) -> events_pb2.GroupMembership:
    """Queues the event in the current transaction; returns it (for local application)."""
    event_id = str(uuid.uuid4())
    event = events_pb2.GroupMembership(
        event_id=event_id,
        occur_time=change.change_time,
        change=change,
        group_deleted=group_deleted,
    )
    await enqueue(conn, GROUP_MEMBERSHIP, event_id, event.SerializeToString())
    if not group_deleted:
        # Also into the group's log, so member devices get it durably and in order with
        # the messages (clients rotate sender keys on it). A deleted group has no members.
        await enqueue(conn, group_subject(change.group_id), event_id, log_item(change))
    return event


def log_item(change: M.GroupMembershipChange) -> bytes:
    """The change as stored in the group's log (a token-less SubscribeResponse)."""
    return M.SubscribeResponse(membership_change=change).SerializeToString()


def named_accounts(change: M.GroupMembershipChange) -> list[str]:
    """Every account id a change names (account erasure deletes the items naming one)."""
    names = [
        change.actor_account_id,
        *change.added_account_ids,
        *change.removed_account_ids,
        *change.promoted_account_ids,
        *change.demoted_account_ids,
    ]
    return [a for a in dict.fromkeys(names) if a]
