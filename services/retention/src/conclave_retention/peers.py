"""gRPC channels to the other four servers, and how their failures are reported.

Retention calls ``AccountDataService`` on every server (``RunPurge`` with the operator's
token, ``ExportMyData`` with the user's) and ``AuthService`` for ``DeleteAccount``, always
forwarding the caller's own bearer token: retention holds no credentials of its own, so
each server still decides for itself what the caller may do. Channels are opened once
(lazily connected, reconnecting by themselves) with the ``round_robin`` policy, so a
``dns:///…-headless`` target spreads calls over every ready replica.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import grpc
from conclave.auth.v1 import auth_pb2_grpc
from conclave.common.v1 import account_data_pb2_grpc
from conclave_kit.errors import ConclaveError, ResourceExhausted, Unauthenticated, Unavailable

Metadata = tuple[tuple[str, str], ...]


def bearer_metadata(context: grpc.aio.ServicerContext[object, object]) -> Metadata:
    """The caller's ``authorization`` metadata, to forward as is.

    Raises:
        Unauthenticated: The call carried none (the interceptor normally rejects that).
    """
    for key, value in context.invocation_metadata() or ():
        if key.lower() == "authorization" and isinstance(value, str):
            return (("authorization", value),)
    raise Unauthenticated("missing access token (metadata 'authorization: Bearer ...')")


def failure_reason(err: BaseException) -> str:
    """A short client-visible reason for a server that did not answer in time or at all.

    Only the status code is used: a peer's own message may name internals.
    """
    if isinstance(err, TimeoutError):
        return "deadline exceeded"
    if isinstance(err, grpc.aio.AioRpcError):
        code = err.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return "deadline exceeded"
        if code == grpc.StatusCode.UNAVAILABLE:
            return "unavailable"
        return f"failed: {code.name}"
    if isinstance(err, ConclaveError):
        return f"failed: {err.code.name}"
    return "failed: INTERNAL"


def outcome_label(reason: str) -> str:
    """The metrics label for :func:`failure_reason`'s answer."""
    if reason == "deadline exceeded":
        return "deadline_exceeded"
    if reason == "unavailable":
        return "unavailable"
    return "failed"


def translate(err: grpc.aio.AioRpcError, server: str) -> ConclaveError:
    """A peer's error as this RPC's error, for calls whose failure fails the RPC.

    Statuses that mean "the caller" (unauthenticated, rate limited) pass through with the
    peer's message, which the peer wrote for clients; everything else is UNAVAILABLE
    naming the server, so a partial result is never presented as complete.
    """
    code = err.code()
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(err.details() or "access token rejected")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        retry: object = None
        for item in err.trailing_metadata() or ():
            key, value = item[0], item[1]  # type: ignore[index]
            if key == "retry-after":
                retry = value
        seconds = float(retry) if isinstance(retry, str) and retry.isdigit() else None
        return ResourceExhausted(
            err.details() or "rate limited", retry_after_seconds=seconds, reason="RATE_LIMITED"
        )
    return Unavailable(f"the {server} server could not answer ({failure_reason(err)})")


class Peers:
    """One channel per other server.

    Args:
        targets: gRPC target per server name (``auth``, ``keys``, ``messaging``, ``media``).
    """

    def __init__(self, targets: Mapping[str, str]) -> None:
        self.names = tuple(targets)
        self._channels = {
            name: grpc.aio.insecure_channel(
                target, options=[("grpc.lb_policy_name", "round_robin")]
            )
            for name, target in targets.items()
        }

    def account_data(self, name: str) -> account_data_pb2_grpc.AccountDataServiceAsyncStub:
        """AccountDataService on server ``name``."""
        return account_data_pb2_grpc.AccountDataServiceStub(self._channels[name])

    def auth(self) -> auth_pb2_grpc.AuthServiceAsyncStub:
        """AuthService on the auth server."""
        return auth_pb2_grpc.AuthServiceStub(self._channels["auth"])

    async def close(self) -> None:
        """Closes every channel (shutdown)."""
        for channel in self._channels.values():
            with contextlib.suppress(Exception):
                await channel.close(None)
