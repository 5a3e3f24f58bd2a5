"""Wires the media service: its servicer, schema and ports, handed to the kit's runtime."""

import grpc
from conclave.media.v1 import media_pb2
from conclave_kit.pending import add_service
from conclave_kit.runtime import Resources, ServiceSpec

from conclave_media.service import PENDING, MediaServiceServicer

DESCRIPTOR = media_pb2.DESCRIPTOR.services_by_name["MediaService"]
GRPC_SERVICE = DESCRIPTOR.full_name


def register(server: grpc.aio.Server, resources: Resources) -> None:
    """Adds the media servicer to ``server``."""
    add_service(server, DESCRIPTOR, MediaServiceServicer(resources), PENDING)


SPEC = ServiceSpec(
    name="media",
    grpc_services=(GRPC_SERVICE,),
    migrations_package="conclave_media.migrations",
    register=register,
    default_grpc_port=50054,
    default_metrics_port=9104,
)
