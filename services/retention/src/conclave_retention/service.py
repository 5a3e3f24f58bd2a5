"""gRPC layer of the retention service: thin, translating requests to the domain and back.

RPCs not defined here answer ``UNIMPLEMENTED`` naming what is missing (see
:func:`conclave_kit.pending.add_service`); each arrives with its capability's issue.
"""

from conclave_kit.runtime import Resources

PENDING = "retention policies, purge, GDPR export and erasure (issue #7)"


class RetentionServiceServicer:
    """Implements conclave.retention.v1.RetentionService.

    Args:
        resources: Database pool and NATS connection of this process.
    """

    def __init__(self, resources: Resources) -> None:
        self._resources = resources
