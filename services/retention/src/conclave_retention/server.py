"""Wires the retention service: servicer, manager, outbox relay, membership follower."""

from __future__ import annotations

import grpc
from conclave.retention.v1 import retention_pb2
from conclave_kit.outbox import OutboxRelay
from conclave_kit.pending import add_service
from conclave_kit.runtime import Resources, ServiceSpec

from conclave_retention.config import RetentionConfig
from conclave_retention.manager import Clock, RetentionManager
from conclave_retention.membership import MembershipFollower
from conclave_retention.metrics import init_series
from conclave_retention.service import PENDING, RetentionServiceServicer

DESCRIPTOR = retention_pb2.DESCRIPTOR.services_by_name["RetentionService"]
GRPC_SERVICE = DESCRIPTOR.full_name


def build_spec(
    config: RetentionConfig,
    clock: Clock | None = None,
    servicer: RetentionServiceServicer | None = None,
) -> ServiceSpec:
    """The retention service for the kit's runtime.

    Args:
        config: Deployment defaults and bounds.
        clock: Current time; real time when None (tests move it).
        servicer: The servicer to wire; its ``manager`` is set once connected.
    """
    servicer = servicer or RetentionServiceServicer()

    def register(server: grpc.aio.Server, resources: Resources) -> None:
        add_service(server, DESCRIPTOR, servicer, PENDING)

    async def connect(resources: Resources) -> None:
        init_series()
        relay = OutboxRelay(resources.pool, resources.js)
        relay.start()
        resources.on_shutdown(relay.stop)
        follower = MembershipFollower(resources.pool, resources.js)
        await follower.start()
        resources.on_shutdown(follower.stop)
        extra = {} if clock is None else {"clock": clock}
        servicer.manager = RetentionManager(config, resources.pool, relay, **extra)

    return ServiceSpec(
        name="retention",
        grpc_services=(GRPC_SERVICE,),
        migrations_package="conclave_retention.migrations",
        register=register,
        default_grpc_port=50055,
        default_metrics_port=9105,
        extra_setup=(connect,),
    )
