"""Wires the messaging service: its servicer, schema and ports, handed to the kit's runtime."""

import grpc
from conclave.messaging.v1 import messaging_pb2
from conclave_kit.pending import add_service
from conclave_kit.runtime import Resources, ServiceSpec

from conclave_messaging.service import PENDING, MessagingServiceServicer

DESCRIPTOR = messaging_pb2.DESCRIPTOR.services_by_name["MessagingService"]
GRPC_SERVICE = DESCRIPTOR.full_name


def register(server: grpc.aio.Server, resources: Resources) -> None:
    """Adds the messaging servicer to ``server``."""
    add_service(server, DESCRIPTOR, MessagingServiceServicer(resources), PENDING)


SPEC = ServiceSpec(
    name="messaging",
    grpc_services=(GRPC_SERVICE,),
    migrations_package="conclave_messaging.migrations",
    register=register,
    default_grpc_port=50053,
    default_metrics_port=9103,
)
