"""The one server interceptor: request id, auth mode, error mapping, metrics, access log.

Every RPC of every service passes through :class:`ServerInterceptor`:

1. binds a request id (the caller's ``x-request-id`` if well-formed, else a new one) into
   the structlog context, so every log line of the RPC carries it, and returns it as
   trailing metadata;
2. authenticates the caller according to the RPC's declared auth mode (:mod:`.auth`);
3. maps :class:`~conclave_kit.errors.ConclaveError` to its status and reason; any other
   exception becomes ``INTERNAL`` with a generic message, with the detail logged only;
4. records ``grpc_server_*`` metrics and one access-log line.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
import structlog

from conclave_kit import metrics
from conclave_kit.auth import PUBLIC_PREFIXES, AuthGate
from conclave_kit.errors import ConclaveError, ResourceExhausted, Unavailable
from conclave_kit.logs import get_logger

_log = get_logger("conclave.rpc")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
INTERNAL_MESSAGE = "internal error; it has been logged with this call's request id"
_QUIET_PREFIXES = ("/grpc.health.v1.Health/",)

Handler = Callable[..., Any]
MethodHandler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class ServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps every RPC handler of a server (see module docstring).

    Args:
        gate: Decides and checks authentication per method.
        ready: Returns False while the service is starting or stopping; service RPCs then
            answer ``UNAVAILABLE`` (health and reflection always answer).
    """

    def __init__(self, gate: AuthGate, ready: Callable[[], bool] = lambda: True) -> None:
        self._gate = gate
        self._ready = ready

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[MethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> MethodHandler:
        """Returns the handler for the call with the Conclave behaviour wrapped around it."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        service, _, name = method.lstrip("/").rpartition("/")
        labels = (service, name)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, labels, "unary", handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(method, labels, "client_stream", handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, labels, "server_stream", handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        assert handler.stream_stream is not None
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(method, labels, "bidi_stream", handler.stream_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap_unary(
        self, method: str, labels: tuple[str, str], kind: str, behavior: Handler
    ) -> Handler:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            call = _Call(self._gate, self._ready, method, labels, kind, context)
            async with call:
                return await behavior(request, context)
            return None  # pragma: no cover - the context manager always re-raises or aborts

        return wrapped

    def _wrap_stream(
        self, method: str, labels: tuple[str, str], kind: str, behavior: Handler
    ) -> Handler:
        async def wrapped(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            call = _Call(self._gate, self._ready, method, labels, kind, context)
            async with call:
                result = behavior(request, context)
                if inspect.isasyncgen(result):
                    async for item in result:
                        yield item
                else:  # a coroutine that writes with context.write()
                    await result

        return wrapped


class _Call:
    """Per-RPC state: entered before the handler runs, exited when it finishes."""

    def __init__(
        self,
        gate: AuthGate,
        ready: Callable[[], bool],
        method: str,
        labels: tuple[str, str],
        kind: str,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        self._gate = gate
        self._ready = ready
        self._method = method
        self._labels = (*labels, kind)
        self._context = context
        self._start = 0.0
        self._claims_token: object = None
        self._request_id = ""

    async def __aenter__(self) -> None:
        self._start = time.perf_counter()
        metadata = tuple(self._context.invocation_metadata() or ())
        supplied = next((v for k, v in metadata if k == "x-request-id"), None)
        valid = isinstance(supplied, str) and _REQUEST_ID.match(supplied)
        self._request_id = str(supplied) if valid else uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=self._request_id, rpc=self._method)
        metrics.GRPC_STARTED.labels(*self._labels).inc()
        try:
            if not self._ready() and not self._method.startswith(PUBLIC_PREFIXES):
                raise Unavailable("service is starting or shutting down; retry shortly")
            claims = self._gate.authenticate(self._method, metadata)
        except ConclaveError as err:
            try:
                await self._finish_with_error(err)
            finally:
                structlog.contextvars.unbind_contextvars("request_id", "rpc")
        self._claims_token = AuthGate.bind(claims)

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        try:
            if exc is None:
                self._record(self._context.code() or grpc.StatusCode.OK)
                self._context.set_trailing_metadata((("x-request-id", self._request_id),))
                return False
            if isinstance(exc, grpc.aio.AbortError):
                # The handler aborted with its own status; the code is on the context.
                self._record(self._context.code() or grpc.StatusCode.UNKNOWN)
                return False
            if isinstance(exc, asyncio.CancelledError | GeneratorExit):
                # The client went away (or the server is stopping) while a stream waited:
                # gRPC closes the handler's generator. Not a failure of ours.
                self._record(grpc.StatusCode.CANCELLED)
                return False
            if isinstance(exc, ConclaveError):
                await self._finish_with_error(exc)
            _log.error(
                "rpc_failed",
                error_type=type(exc).__name__,
                exc_info=(type(exc), exc, tb),
            )
            self._record(grpc.StatusCode.INTERNAL)
            await self._context.abort(
                grpc.StatusCode.INTERNAL,
                INTERNAL_MESSAGE,
                trailing_metadata=(("x-request-id", self._request_id),),
            )
        finally:
            if self._claims_token is not None:
                AuthGate.unbind(self._claims_token)
                self._claims_token = None
            structlog.contextvars.unbind_contextvars("request_id", "rpc")

    async def _finish_with_error(self, err: ConclaveError) -> None:
        trailers: list[tuple[str, str]] = [
            ("x-request-id", self._request_id),
            ("conclave-error-reason", err.reason),
        ]
        if isinstance(err, ResourceExhausted) and err.retry_after_seconds is not None:
            trailers.append(("retry-after", str(max(1, math.ceil(err.retry_after_seconds)))))
        self._record(err.code)
        await self._context.abort(err.code, err.message, trailing_metadata=tuple(trailers))

    def _record(self, code: grpc.StatusCode) -> None:
        elapsed = time.perf_counter() - self._start
        code_name = code.name
        metrics.GRPC_HANDLED.labels(*self._labels, code_name).inc()
        metrics.GRPC_HANDLING_SECONDS.labels(*self._labels, code_name).observe(elapsed)
        level = "debug" if self._method.startswith(_QUIET_PREFIXES) else "info"
        getattr(_log, level)(
            "rpc_done", status=code_name, kind=self._labels[2], duration_ms=round(elapsed * 1e3, 2)
        )
