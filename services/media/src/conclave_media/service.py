"""gRPC layer of the media service: thin, translating requests to the domain and back.

RPCs not defined here answer ``UNIMPLEMENTED`` naming what is missing (see
:func:`conclave_kit.pending.add_service`); each arrives with its capability's issue.
"""

from conclave_kit.runtime import Resources

PENDING = "encrypted attachment upload and download (issue #7)"


class MediaServiceServicer:
    """Implements conclave.media.v1.MediaService.

    Args:
        resources: Database pool and NATS connection of this process.
    """

    def __init__(self, resources: Resources) -> None:
        self._resources = resources
