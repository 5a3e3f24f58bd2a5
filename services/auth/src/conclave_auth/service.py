"""gRPC layer of the auth service: thin, translating requests to the domain and back.

RPCs not defined here answer ``UNIMPLEMENTED`` naming what is missing (see
:mod:`conclave_kit.pending`); each arrives with its capability's issue.
"""

from conclave.auth.v1 import auth_pb2, auth_pb2_grpc
from conclave_kit.pending import answer_unimplemented
from conclave_kit.runtime import Resources

PENDING = "accounts, mandatory TOTP, sessions and devices (issue #3)"


@answer_unimplemented(auth_pb2.DESCRIPTOR.services_by_name["AuthService"], PENDING)
class AuthServiceServicer(auth_pb2_grpc.AuthServiceServicer):
    """Implements conclave.auth.v1.AuthService.

    Args:
        resources: Database pool and NATS connection of this process.
    """

    def __init__(self, resources: Resources) -> None:
        self._resources = resources
