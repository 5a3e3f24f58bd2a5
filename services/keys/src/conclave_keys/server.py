"""Wires the keys service: its servicer, schema and ports, handed to the kit's runtime."""

from __future__ import annotations

import grpc
from conclave.keys.v1 import keys_pb2, keys_pb2_grpc
from conclave_kit.account_data import AccountDataServicer
from conclave_kit.runtime import Resources, ServiceSpec

from conclave_keys.account_data import KeysAccountData
from conclave_keys.config import KeysConfig
from conclave_keys.events import EventBus
from conclave_keys.internal import serve_identity_requests
from conclave_keys.manager import KeyManager
from conclave_keys.service import KeyServiceServicer

DESCRIPTOR = keys_pb2.DESCRIPTOR.services_by_name["KeyService"]
GRPC_SERVICE = DESCRIPTOR.full_name


def build_spec(config: KeysConfig) -> ServiceSpec:
    """The keys service for the kit's runtime, with its own settings.

    The manager is created when the runtime registers the servicer (before the database
    connects) and is finished by the start-up steps once Postgres and NATS are up.

    Args:
        config: Keys-service settings (log key, limits).
    """
    managers: list[KeyManager] = []
    account_data = AccountDataServicer()

    def register(server: grpc.aio.Server, resources: Resources) -> None:
        bus = EventBus(resources)
        manager = KeyManager(resources, config, bus.publish)
        managers.append(manager)
        keys_pb2_grpc.add_KeyServiceServicer_to_server(KeyServiceServicer(manager), server)

    async def record_log_key(resources: Resources) -> None:
        await managers[-1].start()
        account_data.provider = KeysAccountData(resources, config, managers[-1])

    async def consume_device_removals(resources: Resources) -> None:
        await EventBus(resources).subscribe_device_removed(managers[-1].remove_keys)

    return ServiceSpec(
        name="keys",
        grpc_services=(GRPC_SERVICE,),
        migrations_package="conclave_keys.migrations",
        register=register,
        default_grpc_port=50052,
        default_metrics_port=9102,
        extra_setup=(
            record_log_key,
            consume_device_removals,
            serve_identity_requests,
        ),
        account_data=account_data,
    )
