"""gRPC layer of the retention service: thin, translating requests to the domain and back.

RPCs not defined here answer ``UNIMPLEMENTED`` naming what is missing (see
:mod:`conclave_kit.pending`); each arrives with its capability's issue.
"""

from conclave.retention.v1 import retention_pb2, retention_pb2_grpc
from conclave_kit.pending import answer_unimplemented
from conclave_kit.runtime import Resources

PENDING = "retention policies, purge, GDPR export and erasure (issue #7)"


@answer_unimplemented(retention_pb2.DESCRIPTOR.services_by_name["RetentionService"], PENDING)
class RetentionServiceServicer(retention_pb2_grpc.RetentionServiceServicer):
    """Implements conclave.retention.v1.RetentionService.

    Args:
        resources: Database pool and NATS connection of this process.
    """

    def __init__(self, resources: Resources) -> None:
        self._resources = resources
