"""Wires the retention service: its servicer, schema and ports, handed to the kit's runtime."""

import grpc
from conclave.retention.v1 import retention_pb2
from conclave_kit.pending import add_service
from conclave_kit.runtime import Resources, ServiceSpec

from conclave_retention.service import PENDING, RetentionServiceServicer

DESCRIPTOR = retention_pb2.DESCRIPTOR.services_by_name["RetentionService"]
GRPC_SERVICE = DESCRIPTOR.full_name


def register(server: grpc.aio.Server, resources: Resources) -> None:
    """Adds the retention servicer to ``server``."""
    add_service(server, DESCRIPTOR, RetentionServiceServicer(resources), PENDING)


SPEC = ServiceSpec(
    name="retention",
    grpc_services=(GRPC_SERVICE,),
    migrations_package="conclave_retention.migrations",
    register=register,
    default_grpc_port=50055,
    default_metrics_port=9105,
)
