"""Wires the auth service: its servicer, schema and ports, handed to the kit's runtime."""

import grpc
from conclave.auth.v1 import auth_pb2
from conclave_kit.pending import add_service
from conclave_kit.runtime import Resources, ServiceSpec

from conclave_auth.service import PENDING, AuthServiceServicer

DESCRIPTOR = auth_pb2.DESCRIPTOR.services_by_name["AuthService"]
GRPC_SERVICE = DESCRIPTOR.full_name


def register(server: grpc.aio.Server, resources: Resources) -> None:
    """Adds the auth servicer to ``server``."""
    add_service(server, DESCRIPTOR, AuthServiceServicer(resources), PENDING)


SPEC = ServiceSpec(
    name="auth",
    grpc_services=(GRPC_SERVICE,),
    migrations_package="conclave_auth.migrations",
    register=register,
    default_grpc_port=50051,
    default_metrics_port=9101,
)
