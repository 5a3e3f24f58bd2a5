"""Wires the messaging service: servicer, manager, fan-out hub, streams, outbox relay."""

from __future__ import annotations

import grpc
from conclave.events.v1 import events_pb2
from conclave.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from conclave_kit.nats_bus import EVENTS_STREAM, ensure_stream
from conclave_kit.outbox import OutboxRelay
from conclave_kit.runtime import Resources, ServiceSpec
from nats.aio.msg import Msg
from nats.js import api

from conclave_messaging import events, streams
from conclave_messaging.config import MessagingConfig
from conclave_messaging.fanout import Hub
from conclave_messaging.manager import Clock, MessagingManager, check_uuid
from conclave_messaging.service import MessagingServiceServicer

DESCRIPTOR = messaging_pb2.DESCRIPTOR.services_by_name["MessagingService"]
GRPC_SERVICE = DESCRIPTOR.full_name


def build_spec(config: MessagingConfig, clock: Clock | None = None) -> ServiceSpec:
    """The messaging service for the kit's runtime (``clock`` is injectable for tests)."""
    servicer = MessagingServiceServicer()

    def register(server: grpc.aio.Server, resources: Resources) -> None:
        messaging_pb2_grpc.add_MessagingServiceServicer_to_server(servicer, server)

    async def connect(resources: Resources) -> None:
        for stream in streams.stream_configs(
            config.service.stream_replicas,
            config.dedup_window_seconds,
            config.message_ttl_seconds,
        ):
            await ensure_stream(resources.js, stream)
        relay = OutboxRelay(resources.pool, resources.js)
        relay.start()
        resources.on_shutdown(relay.stop)
        hub = Hub(resources.nats, resources.js, resources.pool)
        await hub.start()
        resources.on_shutdown(hub.stop)
        resources.revocations.add_listener(hub.on_revoked)
        extra = {} if clock is None else {"clock": clock}
        manager = MessagingManager(config, resources.pool, resources.nats, relay, **extra)
        manager.add_membership_listener(hub.on_membership)
        servicer.hub = hub
        servicer.manager = manager

        async def on_device_removed(msg: Msg) -> None:
            try:
                event = events_pb2.DeviceRemoved.FromString(msg.data)
                account, device = event.device.account_id, event.device.device_id
                check_uuid(account, "account_id")
                check_uuid(device, "device_id")
            except Exception:  # malformed: retrying cannot help
                await msg.term()
                return
            await manager.drop_device(account, device)  # raises: redelivered later
            await msg.ack()

        await resources.js.subscribe(
            events.DEVICE_REMOVED,
            queue=events.DEVICE_REMOVED_CONSUMER,
            durable=events.DEVICE_REMOVED_CONSUMER,
            cb=on_device_removed,
            manual_ack=True,
            stream=EVENTS_STREAM,
            config=api.ConsumerConfig(ack_wait=30, max_deliver=20),
        )

    return ServiceSpec(
        name="messaging",
        grpc_services=(GRPC_SERVICE,),
        migrations_package="conclave_messaging.migrations",
        register=register,
        default_grpc_port=50053,
        default_metrics_port=9103,
        extra_setup=(connect,),
    )
