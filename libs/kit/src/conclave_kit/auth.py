"""Access-token checks driven by the auth mode each RPC declares in its proto.

The contract decides who may call an RPC: ``option (conclave.common.v1.auth_mode)`` on the
method. An RPC without the option requires a session, so forgetting the option fails closed.
The verified claims are available to handlers through :func:`current_claims`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar

from conclave.common.v1 import options_pb2
from google.protobuf import descriptor_pool

from conclave_kit.errors import FailedPrecondition, PermissionDenied, Unauthenticated
from conclave_kit.tokens import Claims, TokenVerifier

AuthMode = int
MODE_NONE: AuthMode = options_pb2.AUTH_MODE_NONE
MODE_SESSION: AuthMode = options_pb2.AUTH_MODE_SESSION
MODE_FRESH: AuthMode = options_pb2.AUTH_MODE_FRESH
MODE_OPERATOR: AuthMode = options_pb2.AUTH_MODE_OPERATOR

# Infrastructure services every client and probe must reach without a token.
PUBLIC_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
_AUTH_SERVICE = "/conclave.auth.v1.AuthService/"
_CLAIMS: ContextVar[Claims | None] = ContextVar("conclave_claims", default=None)

RevocationCheck = Callable[[Claims], bool]


def current_claims() -> Claims:
    """Returns the verified claims of the caller of the current RPC.

    Raises:
        Unauthenticated: The RPC carried no verified token (an AUTH_MODE_NONE RPC).
    """
    claims = _CLAIMS.get()
    if claims is None:
        raise Unauthenticated("this call requires an access token")
    return claims


def method_auth_mode(method: str) -> AuthMode:
    """Returns the auth mode declared for ``/package.Service/Method``.

    Infrastructure services (health, reflection) are public. Anything else that is not
    found or has no option requires a session.
    """
    if method.startswith(PUBLIC_PREFIXES):
        return MODE_NONE
    full_name = method.lstrip("/").replace("/", ".")
    try:
        descriptor = descriptor_pool.Default().FindMethodByName(full_name)
    except KeyError:
        return MODE_SESSION
    mode = int(descriptor.GetOptions().Extensions[options_pb2.auth_mode])
    return MODE_SESSION if mode == options_pb2.AUTH_MODE_UNSPECIFIED else mode


class AuthGate:
    """Authenticates RPCs according to their declared auth mode.

    Args:
        verifier: Verifies access tokens offline.
        fresh_auth_seconds: Maximum age of ``auth_time`` for AUTH_MODE_FRESH.
        is_revoked: Hook telling whether a verified token's session was revoked (fed by the
            ``conclave.events.session.revoked`` subscription); None accepts every session.
        clock: Returns the current Unix time (injectable for tests).
    """

    def __init__(
        self,
        verifier: TokenVerifier,
        *,
        fresh_auth_seconds: float = 600.0,
        is_revoked: RevocationCheck | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._verifier = verifier
        self._fresh = fresh_auth_seconds
        self._is_revoked = is_revoked
        self._clock = clock
        self._modes: dict[str, AuthMode] = {}

    def mode_for(self, method: str) -> AuthMode:
        """Cached :func:`method_auth_mode`."""
        mode = self._modes.get(method)
        if mode is None:
            mode = self._modes[method] = method_auth_mode(method)
        return mode

    def authenticate(
        self, method: str, metadata: Sequence[tuple[str, str | bytes]] | None
    ) -> Claims | None:
        """Checks the caller against the method's auth mode.

        Returns:
            The verified claims, or None for AUTH_MODE_NONE RPCs.

        Raises:
            Unauthenticated: Missing, malformed, expired or revoked token, or a token too
                old for an AUTH_MODE_FRESH RPC (reason ``FRESH_AUTH_REQUIRED``).
            PermissionDenied: Valid token without the role the RPC needs.
            FailedPrecondition: The device awaits approval (any service but auth).
        """
        mode = self.mode_for(method)
        if mode == MODE_NONE:
            return None
        token = _bearer_token(metadata)
        if token is None:
            raise Unauthenticated("missing access token (metadata 'authorization: Bearer ...')")
        claims = self._verifier.verify(token, now=int(self._clock()))
        if self._is_revoked is not None and self._is_revoked(claims):
            raise Unauthenticated("session has been revoked")
        if claims.pending_approval and not method.startswith(_AUTH_SERVICE):
            # The account requires approval of new devices: until an approved device says
            # yes, this one may manage its session (auth) but not publish keys or message.
            raise FailedPrecondition(
                "this device is waiting for approval from another of your devices",
                reason="DEVICE_APPROVAL_PENDING",
            )
        if mode == MODE_FRESH and self._clock() - claims.auth_time > self._fresh:
            # The contract (options.proto) says UNAUTHENTICATED: the client's remedy is to
            # re-authenticate (AuthService.Reauthenticate), not to give up.
            raise Unauthenticated(
                "this call needs a recent password + TOTP check; re-authenticate",
                reason="FRESH_AUTH_REQUIRED",
            )
        if mode == MODE_OPERATOR and "operator" not in claims.roles:
            raise PermissionDenied("this call needs an operator token", reason="OPERATOR_ONLY")
        return claims

    @staticmethod
    def bind(claims: Claims | None) -> object:
        """Makes ``claims`` the current caller's; returns a token for :meth:`unbind`."""
        return _CLAIMS.set(claims)

    @staticmethod
    def unbind(token: object) -> None:
        """Restores the claims context saved by :meth:`bind`."""
        _CLAIMS.reset(token)  # type: ignore[arg-type]


def _bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None
