"""Honest ``UNIMPLEMENTED`` answers for RPCs whose capability is not built yet.

A contract can be published before every RPC behind it exists. Rather than the generated
base class's bare "Method not implemented!", each missing RPC answers ``UNIMPLEMENTED``
with a message naming the RPC and the capability it waits for.
"""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf.descriptor import ServiceDescriptor

from conclave_kit.errors import Unimplemented

T = TypeVar("T", bound=type)


def _pending(full_name: str, capability: str) -> Any:
    message = f"{full_name} is not built yet: {capability}"

    async def handler(self: Any, request: Any, context: Any) -> Any:
        raise Unimplemented(message)

    return handler


def answer_unimplemented(descriptor: ServiceDescriptor, capability: str) -> Any:
    """Class decorator: every RPC of ``descriptor`` the class does not define is pending.

    Args:
        descriptor: The gRPC service descriptor (``xxx_pb2.DESCRIPTOR.services_by_name[...]``).
        capability: What is missing and where it is tracked, e.g. "TOTP login (issue #3)".
    """

    def decorate(cls: T) -> T:
        for method in descriptor.methods:
            if method.name not in cls.__dict__:
                setattr(cls, method.name, _pending(method.full_name, capability))
        return cls

    return decorate
