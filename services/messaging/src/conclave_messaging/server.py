"""Wires the messaging service: servicer, manager, hub, streams, policies, account data."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from conclave.events.v1 import events_pb2
from conclave.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from conclave_kit.account_data import AccountDataServicer
from conclave_kit.nats_bus import ensure_stream, subscribe_events
from conclave_kit.outbox import OutboxRelay
from conclave_kit.runtime import Resources, ServiceSpec
from nats.aio.msg import Msg

from conclave_messaging import events, streams
from conclave_messaging.account_data import MessagingAccountData
from conclave_messaging.config import MessagingConfig
from conclave_messaging.fanout import Hub
from conclave_messaging.manager import Clock, MessagingManager, check_uuid
from conclave_messaging.policy import PolicyResolver
from conclave_messaging.service import MessagingServiceServicer

DESCRIPTOR = messaging_pb2.DESCRIPTOR.services_by_name["MessagingService"]
GRPC_SERVICE = DESCRIPTOR.full_name


def build_spec(
    config: MessagingConfig,
    clock: Clock | None = None,
    servicer: MessagingServiceServicer | None = None,
) -> ServiceSpec:
    """The messaging service for the kit's runtime.

    Args:
        config: Messaging settings.
        clock: Current time for expiry decisions and group times; real time when None
            (tests move it).
        servicer: The gRPC servicer to wire (tests pass theirs to reach the manager, the
            hub and the account-data provider once connected).
    """
    servicer = servicer or MessagingServiceServicer()
    account_data = AccountDataServicer()

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
        now = clock or _utcnow
        hub = Hub(resources.nats, resources.js, resources.pool, clock=now)
        await hub.start()
        resources.on_shutdown(hub.stop)
        resources.revocations.add_listener(hub.on_revoked)
        policy = PolicyResolver(resources.nats, config.message_ttl_seconds)

        async def on_policy_changed(event: events_pb2.RetentionPolicyChanged) -> None:
            if event.conversation.WhichOneof("conversation") is None:
                return  # an account-level change is not a conversation's timer
            if event.policy.HasField("disappearing_message_timer"):
                timer = event.policy.disappearing_message_timer.ToTimedelta().total_seconds()
            else:  # cleared at the conversation: the changer's account level applies
                timer = (
                    await policy.resolve(event.account_id, event.conversation)
                ).disappearing_seconds
            hub.push_policy_change(event, timer)

        policy.add_change_listener(on_policy_changed)
        await policy.start()
        resources.on_shutdown(policy.stop)
        manager = MessagingManager(
            config, resources.pool, resources.nats, relay, clock=now, policy=policy
        )
        manager.add_membership_listener(hub.on_membership)
        provider = MessagingAccountData(
            manager,
            resources.pool,
            resources.nats,
            concurrency=config.purge_concurrency,
            secure_erase=config.purge_secure_erase,
        )
        provider.add_erased_listener(hub.on_account_erased)
        servicer.hub = hub
        servicer.manager = manager
        servicer.account_data = provider
        account_data.provider = provider

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

        await subscribe_events(
            resources.js,
            events.DEVICE_REMOVED,
            events.DEVICE_REMOVED_CONSUMER,
            on_device_removed,
            ack_wait=30,
            max_deliver=20,
        )

    return ServiceSpec(
        name="messaging",
        grpc_services=(GRPC_SERVICE,),
        migrations_package="conclave_messaging.migrations",
        register=register,
        default_grpc_port=50053,
        default_metrics_port=9103,
        extra_setup=(connect,),
        account_data=account_data,
    )


def _utcnow() -> datetime:
    return datetime.now(UTC)
