"""Wires the auth service: servicer, manager, outbox relay, schema and ports."""

from __future__ import annotations

import grpc
from conclave.auth.v1 import auth_pb2
from conclave_kit.account_data import AccountDataServicer
from conclave_kit.outbox import OutboxRelay
from conclave_kit.pending import add_service
from conclave_kit.runtime import Resources, ServiceSpec

from conclave_auth.account_data import AuthAccountData
from conclave_auth.config import AuthConfig
from conclave_auth.manager import AuthManager, Clock
from conclave_auth.policies import consume_policy_changes
from conclave_auth.service import PENDING, AuthServiceServicer

DESCRIPTOR = auth_pb2.DESCRIPTOR.services_by_name["AuthService"]
GRPC_SERVICE = DESCRIPTOR.full_name


def build_spec(config: AuthConfig, clock: Clock | None = None) -> ServiceSpec:
    """The auth service for the kit's runtime (``clock`` is injectable for tests)."""
    servicer = AuthServiceServicer()
    account_data = AccountDataServicer()

    def register(server: grpc.aio.Server, resources: Resources) -> None:
        add_service(server, DESCRIPTOR, servicer, PENDING)

    async def connect(resources: Resources) -> None:
        relay = OutboxRelay(resources.pool, resources.js)
        relay.start()
        resources.on_shutdown(relay.stop)
        extra = {} if clock is None else {"clock": clock}
        servicer.nats = resources.nats
        servicer.manager = manager = AuthManager(
            config, resources.pool, relay, resources.revocations, **extra
        )
        await manager.seal_stored_totp_secrets()
        account_data.provider = AuthAccountData(manager, config.audit_ttl_seconds)

    return ServiceSpec(
        name="auth",
        grpc_services=(GRPC_SERVICE,),
        migrations_package="conclave_auth.migrations",
        register=register,
        default_grpc_port=50051,
        default_metrics_port=9101,
        extra_setup=(connect, consume_policy_changes),
        account_data=account_data,
    )
