"""gRPC layer of the messaging service: thin, translating requests to the domain and back.

RPCs not defined here answer ``UNIMPLEMENTED`` naming what is missing (see
:func:`conclave_kit.pending.add_service`); each arrives with its capability's issue.
"""

from conclave_kit.runtime import Resources

PENDING = "groups, fan-out over JetStream and delivery streams (issue #6)"


class MessagingServiceServicer:
    """Implements conclave.messaging.v1.MessagingService.

    Args:
        resources: Database pool and NATS connection of this process.
    """

    def __init__(self, resources: Resources) -> None:
        self._resources = resources
