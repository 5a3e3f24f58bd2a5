"""Wires the retention service: its servicer, schema and ports, handed to the kit's runtime."""

import grpc
from conclave.retention.v1 import retention_pb2, retention_pb2_grpc
from conclave_kit.runtime import Resources, ServiceSpec

from conclave_retention.service import RetentionServiceServicer

GRPC_SERVICE = retention_pb2.DESCRIPTOR.services_by_name["RetentionService"].full_name


def register(server: grpc.aio.Server, resources: Resources) -> None:
    """Adds the retention servicer to ``server``."""
    retention_pb2_grpc.add_RetentionServiceServicer_to_server(
        RetentionServiceServicer(resources), server
    )


SPEC = ServiceSpec(
    name="retention",
    grpc_services=(GRPC_SERVICE,),
    migrations_package="conclave_retention.migrations",
    register=register,
    default_grpc_port=50055,
    default_metrics_port=9105,
)
