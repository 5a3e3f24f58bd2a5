"""gRPC layer of the messaging service: thin, translating requests to the domain and back.

RPCs not defined here answer ``UNIMPLEMENTED`` naming what is missing (see
:mod:`conclave_kit.pending`); each arrives with its capability's issue.
"""

from conclave.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from conclave_kit.pending import answer_unimplemented
from conclave_kit.runtime import Resources

PENDING = "groups, fan-out over JetStream and delivery streams (issue #6)"


@answer_unimplemented(messaging_pb2.DESCRIPTOR.services_by_name["MessagingService"], PENDING)
class MessagingServiceServicer(messaging_pb2_grpc.MessagingServiceServicer):
    """Implements conclave.messaging.v1.MessagingService.

    Args:
        resources: Database pool and NATS connection of this process.
    """

    def __init__(self, resources: Resources) -> None:
        self._resources = resources
