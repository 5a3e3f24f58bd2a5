"""The kit's runtime and interceptor in one process, against real NATS and PostgreSQL.

A stand-in servicer implements a few KeyService RPCs with behaviours we need to observe:
a slow call (draining), a crash (generic INTERNAL), a rate limit (retry-after) and a call
that reads the caller's claims.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from conclave.keys.v1 import keys_pb2, keys_pb2_grpc
from conclave_kit.auth import current_claims
from conclave_kit.config import ServiceConfig
from conclave_kit.errors import ResourceExhausted
from conclave_kit.interceptor import INTERNAL_MESSAGE
from conclave_kit.logs import configure_logging
from conclave_kit.pending import add_service
from conclave_kit.runtime import Resources, ServiceRuntime, ServiceSpec
from conclave_kit.tokens import TokenSigner
from prometheus_client import REGISTRY

from tests.support import trailers

pytestmark = pytest.mark.integration
KEYS = keys_pb2.DESCRIPTOR.services_by_name["KeyService"]
PLANTED = "s3cr3t-db-password-in-exception"


class StandIn:
    """Implements four KeyService RPCs for the test; the rest stay pending."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources

    async def GetSignedTreeHead(self, request: Any, context: Any) -> Any:
        await asyncio.sleep(1.0)  # an in-flight call that shutdown must let finish
        return keys_pb2.GetSignedTreeHeadResponse()

    async def GetConsistencyProof(self, request: Any, context: Any) -> Any:
        raise RuntimeError(f"connection to db failed: password={PLANTED}")

    async def LookupIdentityKeys(self, request: Any, context: Any) -> Any:
        raise ResourceExhausted("too many lookups", retry_after_seconds=2.2)

    async def GetPrekeyCounts(self, request: Any, context: Any) -> Any:
        # The claims are visible to handlers, and the pool is usable.
        assert current_claims().account_id == "acc-7"
        assert await self.resources.pool.fetchval("SELECT 1") == 1
        return keys_pb2.GetPrekeyCountsResponse()


@pytest.fixture
async def runtime(
    service_env: dict[str, str], signer: TokenSigner
) -> AsyncIterator[tuple[ServiceRuntime, io.StringIO]]:
    logs = io.StringIO()
    configure_logging("kittest", "info", stream=logs)
    env = {**service_env, "CONCLAVE_KITTEST_GRPC_PORT": "0", "CONCLAVE_KITTEST_METRICS_PORT": "0"}
    config = ServiceConfig.from_env(
        "kittest", default_grpc_port=0, default_metrics_port=0, environ=env
    )
    spec = ServiceSpec(
        name="kittest",
        grpc_services=(KEYS.full_name,),
        migrations_package="tests.integration.kit.fixture_migrations_a",
        register=lambda server, res: add_service(server, KEYS, StandIn(res), "test"),
        default_grpc_port=0,
        default_metrics_port=0,
    )
    rt = ServiceRuntime(spec, config)
    await rt.start()
    yield rt, logs
    await rt.stop()
    await asyncio.sleep(0)


def _handled(method: str, code: str) -> float:
    value = REGISTRY.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_service": KEYS.full_name,
            "grpc_method": method,
            "grpc_type": "unary",
            "grpc_code": code,
        },
    )
    return value or 0.0


async def test_unexpected_exception_is_generic_internal_with_detail_in_logs(
    runtime: tuple[ServiceRuntime, io.StringIO],
) -> None:
    """A crash returns INTERNAL with a generic message; the detail is logged, redacted."""
    rt, logs = runtime
    before = _handled("GetConsistencyProof", "INTERNAL")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{rt.grpc_port}") as channel:
        stub = keys_pb2_grpc.KeyServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetConsistencyProof(
                keys_pb2.GetConsistencyProofRequest(), metadata=(("x-request-id", "req-42"),)
            )
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert err.value.details() == INTERNAL_MESSAGE
    assert PLANTED not in str(err.value.details())
    assert trailers(err.value)["x-request-id"] == "req-42"
    records = [json.loads(line) for line in logs.getvalue().splitlines()]
    failure = next(r for r in records if r["event"] == "rpc_failed")
    assert failure["request_id"] == "req-42"
    assert "RuntimeError" in failure["exception"]
    assert PLANTED not in logs.getvalue()  # password=... is scrubbed by the redactor
    assert _handled("GetConsistencyProof", "INTERNAL") == before + 1


async def test_domain_error_maps_to_status_with_retry_after(
    runtime: tuple[ServiceRuntime, io.StringIO], signer: TokenSigner
) -> None:
    """ResourceExhausted becomes RESOURCE_EXHAUSTED with retry-after and a stable reason."""
    rt, _ = runtime
    token = signer.mint(account_id="acc-7", device_id="d", session_id="s")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{rt.grpc_port}") as channel:
        stub = keys_pb2_grpc.KeyServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.LookupIdentityKeys(
                keys_pb2.LookupIdentityKeysRequest(),
                metadata=(("authorization", f"Bearer {token}"),),
            )
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        sent = trailers(err.value)
        assert sent["retry-after"] == "3"
        assert sent["conclave-error-reason"] == "RESOURCE_EXHAUSTED"
        reply = await stub.GetPrekeyCounts(
            keys_pb2.GetPrekeyCountsRequest(), metadata=(("authorization", f"Bearer {token}"),)
        )
        assert list(reply.devices) == []


async def test_shutdown_drains_in_flight_calls(
    service_env: dict[str, str], runtime: tuple[ServiceRuntime, io.StringIO]
) -> None:
    """A call running when shutdown starts completes OK; calls after it are refused."""
    rt, _logs = runtime
    async with grpc.aio.insecure_channel(f"127.0.0.1:{rt.grpc_port}") as channel:
        stub = keys_pb2_grpc.KeyServiceStub(channel)
        slow = asyncio.ensure_future(stub.GetSignedTreeHead(keys_pb2.GetSignedTreeHeadRequest()))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        stopping = asyncio.create_task(rt.stop())
        await asyncio.sleep(0.1)
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await stub.GetSignedTreeHead(keys_pb2.GetSignedTreeHeadRequest(), timeout=2)
        assert late.value.code() == grpc.StatusCode.UNAVAILABLE
        await slow  # completed normally, not cancelled
        await stopping
    assert time.monotonic() - started < float(service_env["CONCLAVE_SHUTDOWN_GRACE_SECONDS"])
    assert rt.resources._pool is not None and rt.resources._pool.is_closing()
    assert rt.resources._nats is not None and rt.resources._nats.is_closed


async def test_client_cancelling_a_stream_is_cancelled_not_internal(
    service_env: dict[str, str], signer: TokenSigner
) -> None:
    """A client that walks away from a server stream is recorded as CANCELLED, not a crash."""
    from conclave.messaging.v1 import messaging_pb2, messaging_pb2_grpc  # noqa: PLC0415

    messaging = messaging_pb2.DESCRIPTOR.services_by_name["MessagingService"]

    class Streams:
        async def Subscribe(self, request: Any, context: Any) -> Any:
            while True:
                yield messaging_pb2.SubscribeResponse()
                await asyncio.sleep(0.01)

    logs = io.StringIO()
    configure_logging("streamtest", "info", stream=logs)
    env = {
        **service_env,
        "CONCLAVE_STREAMTEST_GRPC_PORT": "0",
        "CONCLAVE_STREAMTEST_METRICS_PORT": "0",
    }
    config = ServiceConfig.from_env(
        "streamtest", default_grpc_port=0, default_metrics_port=0, environ=env
    )
    spec = ServiceSpec(
        name="streamtest",
        grpc_services=(messaging.full_name,),
        migrations_package="tests.integration.kit.fixture_migrations_a",
        register=lambda server, res: add_service(server, messaging, Streams(), "test"),
        default_grpc_port=0,
        default_metrics_port=0,
    )
    rt = ServiceRuntime(spec, config)
    await rt.start()
    token = signer.mint(account_id="a", device_id="d", session_id="s")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{rt.grpc_port}") as channel:
            call = messaging_pb2_grpc.MessagingServiceStub(channel).Subscribe(
                messaging_pb2.SubscribeRequest(), metadata=(("authorization", f"Bearer {token}"),)
            )
            await call.read()
            await call.read()
            call.cancel()
        for _ in range(100):
            cancelled = REGISTRY.get_sample_value(
                "grpc_server_handled_total",
                {
                    "grpc_service": messaging.full_name,
                    "grpc_method": "Subscribe",
                    "grpc_type": "server_stream",
                    "grpc_code": "CANCELLED",
                },
            )
            if cancelled:
                break
            await asyncio.sleep(0.02)
        assert cancelled == 1.0
        assert "rpc_failed" not in logs.getvalue()
    finally:
        await rt.stop()
