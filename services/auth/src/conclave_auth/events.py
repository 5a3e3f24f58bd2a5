"""Builds the auth service's NATS events (``proto/conclave/events/v1``) for the outbox."""

from __future__ import annotations

import uuid
from datetime import datetime

from conclave.auth.v1 import auth_pb2
from conclave.common.v1 import types_pb2
from conclave.events.v1 import events_pb2
from conclave_kit.database import Connection
from conclave_kit.outbox import enqueue
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

SESSION_REVOKED = "conclave.events.session.revoked"
DEVICE_REMOVED = "conclave.events.device.removed"
AUDIT_RECORDED = "conclave.events.audit.recorded"


def timestamp(moment: datetime) -> Timestamp:
    """A protobuf Timestamp for an aware datetime."""
    ts = Timestamp()
    ts.FromDatetime(moment)
    return ts


async def _publish(conn: Connection, subject: str, event_id: str, msg: Message) -> None:
    await enqueue(conn, subject, event_id, msg.SerializeToString())


async def session_revoked(
    conn: Connection,
    *,
    now: datetime,
    account_id: str,
    session_id: str,
    device_id: str,
    reason: int,
    access_expires_at: datetime,
) -> None:
    """Queues ``conclave.events.session.revoked`` in the current transaction."""
    event_id = str(uuid.uuid4())
    await _publish(
        conn,
        SESSION_REVOKED,
        event_id,
        events_pb2.SessionRevoked(
            event_id=event_id,
            occur_time=timestamp(now),
            account_id=account_id,
            session_id=session_id,
            device_id=device_id,
            reason=reason,  # type: ignore[arg-type]
            access_token_expire_time=timestamp(access_expires_at),
        ),
    )


async def device_removed(
    conn: Connection, *, now: datetime, account_id: str, device_id: str
) -> None:
    """Queues ``conclave.events.device.removed`` in the current transaction."""
    event_id = str(uuid.uuid4())
    await _publish(
        conn,
        DEVICE_REMOVED,
        event_id,
        events_pb2.DeviceRemoved(
            event_id=event_id,
            occur_time=timestamp(now),
            device=types_pb2.DeviceAddress(account_id=account_id, device_id=device_id),
            origin=types_pb2.SERVICE_NAME_AUTH,
        ),
    )


async def audit_recorded(conn: Connection, *, account_id: str, event: auth_pb2.AuditEvent) -> None:
    """Queues ``conclave.events.audit.recorded`` in the current transaction."""
    event_id = str(uuid.uuid4())
    await _publish(
        conn,
        AUDIT_RECORDED,
        event_id,
        events_pb2.AuditRecorded(
            event_id=event_id, occur_time=event.event_time, account_id=account_id, event=event
        ),
    )
