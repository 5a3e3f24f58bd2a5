"""Wires the retention service.

Servicers, managers, outbox relay, event followers, the internal policy responder and
retention's own account data.
"""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from conclave.retention.v1 import retention_pb2
from conclave_kit.account_data import AccountDataServicer
from conclave_kit.outbox import OutboxRelay
from conclave_kit.pending import add_service
from conclave_kit.runtime import Resources, ServiceSpec

from conclave_retention.account_data import RetentionAccountData
from conclave_retention.config import RetentionConfig
from conclave_retention.erasure import ErasureManager
from conclave_retention.internal import serve_policy_requests
from conclave_retention.manager import Clock, RetentionManager
from conclave_retention.membership import MembershipFollower
from conclave_retention.metrics import init_series
from conclave_retention.operations import Operations
from conclave_retention.peers import Peers
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
        config: Deployment defaults and bounds, peers, export rate.
        clock: Current time; real time when None (tests move it).
        servicer: The servicer to wire; its managers are set once connected.
    """
    servicer = servicer or RetentionServiceServicer()
    account_data = AccountDataServicer()

    def register(server: grpc.aio.Server, resources: Resources) -> None:
        add_service(server, DESCRIPTOR, servicer, PENDING)

    async def connect(resources: Resources) -> None:
        init_series()
        extra = {} if clock is None else {"clock": clock}
        relay = OutboxRelay(resources.pool, resources.js)
        relay.start()
        resources.on_shutdown(relay.stop)
        follower = MembershipFollower(resources.pool, resources.js)
        await follower.start()
        resources.on_shutdown(follower.stop)
        peers = Peers(config.peers)
        resources.on_shutdown(peers.close)
        manager = RetentionManager(config, resources.pool, relay, **extra)
        provider = RetentionAccountData(
            resources.pool, clock or _utcnow, config.export_interval_seconds, resources.js
        )
        account_data.provider = provider
        erasure = ErasureManager(
            resources.pool,
            resources.js,
            relay,
            peers,
            settle_seconds=config.erasure_settle_seconds,
            erase_local=provider.erase,
            **extra,
        )
        await erasure.start()
        resources.on_shutdown(erasure.stop)
        policy_sub = await serve_policy_requests(resources.nats, manager)
        resources.on_shutdown(policy_sub.unsubscribe)
        servicer.operations = Operations(
            peers, provider, resources.pool, config.export_interval_seconds, **extra
        )
        servicer.erasure = erasure
        servicer.manager = manager

    return ServiceSpec(
        name="retention",
        grpc_services=(GRPC_SERVICE,),
        migrations_package="conclave_retention.migrations",
        register=register,
        default_grpc_port=50055,
        default_metrics_port=9105,
        extra_setup=(connect,),
        account_data=account_data,
    )


def _utcnow() -> datetime:
    return datetime.now(UTC)
