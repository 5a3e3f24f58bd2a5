"""gRPC layer of the media service: thin, translating requests to the domain and back.

RPCs not defined here answer ``UNIMPLEMENTED`` naming what is missing (see
:mod:`conclave_kit.pending`); each arrives with its capability's issue.
"""

from conclave.media.v1 import media_pb2, media_pb2_grpc
from conclave_kit.pending import answer_unimplemented
from conclave_kit.runtime import Resources

PENDING = "encrypted attachment upload and download (issue #7)"


@answer_unimplemented(media_pb2.DESCRIPTOR.services_by_name["MediaService"], PENDING)
class MediaServiceServicer(media_pb2_grpc.MediaServiceServicer):
    """Implements conclave.media.v1.MediaService.

    Args:
        resources: Database pool and NATS connection of this process.
    """

    def __init__(self, resources: Resources) -> None:
        self._resources = resources
