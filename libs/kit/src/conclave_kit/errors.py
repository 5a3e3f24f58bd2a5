"""Domain errors that carry a gRPC status code and a stable, machine-readable reason.

Managers raise these; the kit's interceptor turns them into the status the client sees.
The message is client-visible, so it must be precise and must never contain secrets or
internal detail. Anything that is *not* a :class:`ConclaveError` becomes ``INTERNAL`` with
a generic message, and its detail goes to the logs only.
"""

from __future__ import annotations

from typing import ClassVar

import grpc


class ConclaveError(Exception):
    """Base class for errors a client is meant to see.

    Args:
        message: One line, client-visible, no secrets.
        reason: Stable UPPER_SNAKE identifier clients may branch on; defaults per class.
    """

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    default_reason: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason


class InvalidArgument(ConclaveError):
    """The request is malformed or out of the documented limits."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class Unauthenticated(ConclaveError):
    """No valid credentials: missing, expired, malformed or revoked token."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(ConclaveError):
    """The caller is authenticated but may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class NotFound(ConclaveError):
    """The addressed thing does not exist (or the caller may not know it does)."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(ConclaveError):
    """The thing being created exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class ResourceExhausted(ConclaveError):
    """A rate limit or quota is exceeded.

    Args:
        message: Client-visible explanation.
        retry_after_seconds: When the caller may try again; sent as ``retry-after`` trailer.
        reason: Stable identifier.
    """

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self, message: str, *, retry_after_seconds: float | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.retry_after_seconds = retry_after_seconds


class FailedPrecondition(ConclaveError):
    """The system is not in a state where this request can run (e.g. TOTP not confirmed)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Unimplemented(ConclaveError):
    """The capability behind this RPC is not built yet."""

    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "NOT_BUILT_YET"


class Unavailable(ConclaveError):
    """A dependency (Postgres, NATS) is unreachable; the client may retry."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"
