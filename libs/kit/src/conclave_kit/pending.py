"""Registering a servicer whose contract is ahead of its implementation.

A contract can be published before every RPC behind it exists. :func:`add_service` serves
every RPC of a service descriptor: those the servicer defines go to it; the others answer
``UNIMPLEMENTED`` with a message naming the RPC and the capability it waits for, instead
of the generated base class's bare "Method not implemented!" (which, in an asyncio server,
would surface as an internal error).

Once a servicer implements every RPC it should subclass the generated ``...Servicer`` base
and use the generated ``add_...Servicer_to_server``, so mypy checks every signature.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from conclave_kit.errors import Unimplemented


def _pending(method: MethodDescriptor, capability: str) -> Callable[..., Any]:
    message = f"{method.full_name} is not built yet: {capability}"

    async def handler(request: Any, context: Any) -> Any:
        raise Unimplemented(message)

    return handler


def add_service(
    server: grpc.aio.Server, descriptor: ServiceDescriptor, servicer: object, capability: str
) -> None:
    """Serves ``descriptor`` from ``servicer``, answering its missing RPCs as pending.

    Args:
        server: The gRPC server.
        descriptor: The service (``xxx_pb2.DESCRIPTOR.services_by_name[...]``).
        servicer: Object with async methods named like the RPCs it implements.
        capability: What is missing and where it is tracked, e.g. "TOTP login (issue #3)".
    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in descriptor.methods:
        behavior = getattr(servicer, method.name, None) or _pending(method, capability)
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        factory = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = factory(
            behavior,
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(descriptor.full_name, handlers),)
    )
