"""gRPC layer of the auth service: thin, translating requests to the domain and back.

RPCs not defined here answer ``UNIMPLEMENTED`` naming what is missing (see
:func:`conclave_kit.pending.add_service`); each arrives with its capability's issue.
"""

from conclave_kit.runtime import Resources

PENDING = "accounts, mandatory TOTP, sessions and devices (issue #3)"


class AuthServiceServicer:
    """Implements conclave.auth.v1.AuthService.

    Args:
        resources: Database pool and NATS connection of this process.
    """

    def __init__(self, resources: Resources) -> None:
        self._resources = resources
