"""Wires the keys service: its servicer, schema and ports, handed to the kit's runtime."""

import grpc
from conclave.keys.v1 import keys_pb2
from conclave_kit.pending import add_service
from conclave_kit.runtime import Resources, ServiceSpec

from conclave_keys.service import PENDING, KeyServiceServicer

DESCRIPTOR = keys_pb2.DESCRIPTOR.services_by_name["KeyService"]
GRPC_SERVICE = DESCRIPTOR.full_name


def register(server: grpc.aio.Server, resources: Resources) -> None:
    """Adds the keys servicer to ``server``."""
    add_service(server, DESCRIPTOR, KeyServiceServicer(resources), PENDING)


SPEC = ServiceSpec(
    name="keys",
    grpc_services=(GRPC_SERVICE,),
    migrations_package="conclave_keys.migrations",
    register=register,
    default_grpc_port=50052,
    default_metrics_port=9102,
)
