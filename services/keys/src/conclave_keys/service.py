"""gRPC layer of the keys service: thin, translating requests to the domain and back.

RPCs not defined here answer ``UNIMPLEMENTED`` naming what is missing (see
:mod:`conclave_kit.pending`); each arrives with its capability's issue.
"""

from conclave.keys.v1 import keys_pb2, keys_pb2_grpc
from conclave_kit.pending import answer_unimplemented
from conclave_kit.runtime import Resources

PENDING = "key directory with post-quantum prekeys and key transparency (issue #4)"


@answer_unimplemented(keys_pb2.DESCRIPTOR.services_by_name["KeyService"], PENDING)
class KeyServiceServicer(keys_pb2_grpc.KeyServiceServicer):
    """Implements conclave.keys.v1.KeyService.

    Args:
        resources: Database pool and NATS connection of this process.
    """

    def __init__(self, resources: Resources) -> None:
        self._resources = resources
