"""Events the keys service publishes and consumes on ``CONCLAVE_EVENTS`` (docs/api.md).

Published (best effort, after the database commit; not outbox events in the contract):

- ``conclave.events.prekeys.low`` when a claim leaves a device below the low-water mark,
  at most once per device per 10 minutes;
- ``conclave.events.device.removed`` (origin KEYS) after ``RemoveDeviceKeys``.

Consumed (durable consumers shared by all replicas, explicit acks, idempotent handlers):

- ``conclave.events.device.removed`` from other servers (auth: logout or revoke with
  remove_device, approval rejection): the device's keys are deleted and a REMOVE leaf is
  appended;

``conclave.events.account.deleted`` is consumed by the kit (``conclave_kit.account_data``)
through :class:`conclave_keys.account_data.KeysAccountData`.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from conclave.common.v1 import types_pb2
from conclave.events.v1 import events_pb2
from conclave_kit.logs import get_logger
from conclave_kit.nats_bus import EVENTS_STREAM, subscribe_events
from conclave_kit.runtime import Resources
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.msg import Msg

PREKEYS_LOW = "conclave.events.prekeys.low"
DEVICE_REMOVED = "conclave.events.device.removed"
# One durable consumer shared by all keys replicas (a deliver group), so each removal is
# handled once per deployment, and none is lost while the service is down.
DEVICE_REMOVED_CONSUMER = "keys-device-removed"
LOW_WATER_MARK = 10

_log = get_logger("conclave.keys.events")

RemoveKeys = Callable[[str, str], Awaitable[tuple[bool, int]]]


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


def prekeys_low(
    account_id: str, device_id: str, one_time: int, pq_one_time: int
) -> tuple[str, bytes]:
    """A serialized PrekeysLow event and its id."""
    event_id = str(uuid.uuid4())
    event = events_pb2.PrekeysLow(
        event_id=event_id,
        occur_time=_now(),
        device=types_pb2.DeviceAddress(account_id=account_id, device_id=device_id),
        one_time_prekeys=one_time,
        pq_one_time_prekeys=pq_one_time,
        threshold=LOW_WATER_MARK,
    )
    return event_id, event.SerializeToString()


def device_removed(account_id: str, device_id: str) -> tuple[str, bytes]:
    """A serialized DeviceRemoved event (origin KEYS) and its id."""
    event_id = str(uuid.uuid4())
    event = events_pb2.DeviceRemoved(
        event_id=event_id,
        occur_time=_now(),
        device=types_pb2.DeviceAddress(account_id=account_id, device_id=device_id),
        origin=types_pb2.SERVICE_NAME_KEYS,
    )
    return event_id, event.SerializeToString()


class EventBus:
    """Publishes this service's events through the process's JetStream connection.

    Args:
        resources: The process resources (JetStream is connected during start-up).
    """

    def __init__(self, resources: Resources) -> None:
        self._resources = resources

    async def publish(self, subject: str, payload: bytes, event_id: str) -> None:
        """Publishes one event; failures are logged, not raised (the change is committed)."""
        try:
            await self._resources.js.publish(
                subject, payload, stream=EVENTS_STREAM, headers={"Nats-Msg-Id": event_id}
            )
        except Exception as err:  # the RPC already succeeded: log and go on
            _log.warning("event_publish_failed", subject=subject, error_type=type(err).__name__)

    async def subscribe_device_removed(self, remove: RemoveKeys) -> None:
        """Consumes device removals from other servers (start-up step)."""

        async def handle(msg: Msg) -> None:
            try:
                event = events_pb2.DeviceRemoved.FromString(msg.data)
            except Exception:  # malformed: drop it, retrying cannot help
                _log.warning("device_removed_malformed")
                await msg.term()
                return
            if event.origin != types_pb2.SERVICE_NAME_KEYS and event.device.device_id:
                removed, index = await remove(event.device.account_id, event.device.device_id)
                _log.info("device_removed_event", removed=removed, leaf_index=index)
            await msg.ack()

        await subscribe_events(
            self._resources.js,
            DEVICE_REMOVED,
            DEVICE_REMOVED_CONSUMER,
            handle,
            ack_wait=30,
            max_deliver=20,
        )
