"""gRPC layer of the keys service: thin, translating requests to the domain and back.

RPCs not defined here answer ``UNIMPLEMENTED`` naming what is missing (see
:func:`conclave_kit.pending.add_service`); each arrives with its capability's issue.
"""

from conclave_kit.runtime import Resources

PENDING = "key directory with post-quantum prekeys and key transparency (issue #4)"


class KeyServiceServicer:
    """Implements conclave.keys.v1.KeyService.

    Args:
        resources: Database pool and NATS connection of this process.
    """

    def __init__(self, resources: Resources) -> None:
        self._resources = resources
