"""The running stack as operators and client developers meet it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from typing import Any

import grpc
import pytest
from conclave.auth.v1 import auth_pb2
from conclave.common.v1 import account_data_pb2
from conclave.keys.v1 import keys_pb2
from conclave.media.v1 import media_pb2
from conclave.messaging.v1 import messaging_pb2
from conclave.retention.v1 import retention_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.integration.stack.conftest import SERVICES, RunningStack
from tests.support import trailers

pytestmark = pytest.mark.integration

DESCRIPTORS: dict[str, ServiceDescriptor] = {
    "auth": auth_pb2.DESCRIPTOR.services_by_name["AuthService"],
    "keys": keys_pb2.DESCRIPTOR.services_by_name["KeyService"],
    "messaging": messaging_pb2.DESCRIPTOR.services_by_name["MessagingService"],
    "media": media_pb2.DESCRIPTOR.services_by_name["MediaService"],
    "retention": retention_pb2.DESCRIPTOR.services_by_name["RetentionService"],
}
ACCOUNT_DATA = account_data_pb2.DESCRIPTOR.services_by_name["AccountDataService"]


def _call(
    address: str,
    service: ServiceDescriptor,
    method_name: str,
    metadata: tuple[tuple[str, str], ...] = (),
) -> grpc.RpcError:
    """Invokes any RPC with an empty request and returns the error it ends with."""
    err = _try_call(address, service, method_name, metadata)
    if err is None:
        pytest.fail(f"{service.full_name}/{method_name} unexpectedly succeeded")
    return err


def _try_call(
    address: str,
    service: ServiceDescriptor,
    method_name: str,
    metadata: tuple[tuple[str, str], ...] = (),
) -> grpc.RpcError | None:
    """Invokes any RPC with an empty request; returns its error, or None on success."""
    method = service.methods_by_name[method_name]
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    path = f"/{service.full_name}/{method.name}"
    with grpc.insecure_channel(address) as channel:
        kind = (method.client_streaming, method.server_streaming)
        kwargs: dict[str, Any] = {
            "request_serializer": request_cls.SerializeToString,
            "response_deserializer": response_cls.FromString,
        }
        try:
            if kind == (False, False):
                channel.unary_unary(path, **kwargs)(request_cls(), metadata=metadata, timeout=5)
            elif kind == (False, True):
                list(
                    channel.unary_stream(path, **kwargs)(
                        request_cls(), metadata=metadata, timeout=5
                    )
                )
            elif kind == (True, False):
                channel.stream_unary(path, **kwargs)(
                    iter([request_cls()]), metadata=metadata, timeout=5
                )
            else:
                list(
                    channel.stream_stream(path, **kwargs)(
                        iter([request_cls()]), metadata=metadata, timeout=5
                    )
                )
        except grpc.RpcError as err:
            return err
    return None


def _bearer(stack: RunningStack, **kw: object) -> tuple[tuple[str, str], ...]:
    token = stack.signer().mint(account_id="acc-1", device_id="dev-1", session_id="ses-1", **kw)  # type: ignore[arg-type]
    return (("authorization", f"Bearer {token}"),)


def test_every_service_reports_serving(stack: RunningStack) -> None:
    """After `conclave: ready`, each service answers grpc.health.v1 SERVING for itself."""
    for name in SERVICES:
        with grpc.insecure_channel(stack.grpc[name]) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", DESCRIPTORS[name].full_name):
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_launcher_prints_endpoints(stack: RunningStack) -> None:
    """The launcher prints every service's gRPC and metrics endpoint before `ready`."""
    text = "\n".join(stack.output)
    for name in SERVICES:
        assert f"grpc {stack.grpc[name]}" in text
        assert f"/{stack.metrics[name]}/metrics" not in text  # sanity: port, not path
        assert f":{stack.metrics[name]}/metrics" in text
    assert stack.output[-1] == "conclave: ready"


def test_cli_status_reports_all_healthy(stack: RunningStack) -> None:
    """`conclave status --json` lists five SERVING services and exits 0."""
    proc = subprocess.run(
        [sys.executable, "-c", "from conclave_client.cli import main; main()", "status", "--json"],
        env=stack.client_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["healthy"] is True
    assert [s["service"] for s in report["services"]] == list(SERVICES)
    assert {s["status"] for s in report["services"]} == {"SERVING"}


def test_metrics_show_grpc_calls(stack: RunningStack) -> None:
    """Each /metrics shows grpc_server_handled_total and the histogram for a call just made."""
    for name in SERVICES:
        with grpc.insecure_channel(stack.grpc[name]) as channel:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        url = f"http://127.0.0.1:{stack.metrics[name]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
        assert (
            'grpc_server_handled_total{grpc_code="OK",grpc_method="Check",'
            'grpc_service="grpc.health.v1.Health",grpc_type="unary"}'
        ) in body
        assert "grpc_server_handling_seconds_bucket{" in body
        assert "process_resident_memory_bytes" in body
        assert f'conclave_build_info{{service="{name}"' in body


def test_reflection_lists_services(stack: RunningStack) -> None:
    """Server reflection names the service's API, AccountDataService and health."""
    for name in SERVICES:
        with grpc.insecure_channel(stack.grpc[name]) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
            names = {s.name for r in replies for s in r.list_services_response.service}
        assert {
            DESCRIPTORS[name].full_name,
            ACCOUNT_DATA.full_name,
            "grpc.health.v1.Health",
        } <= names


def test_every_rpc_is_built_and_none_answers_internal(stack: RunningStack) -> None:
    """Every RPC of every server (its own service and AccountDataService) is built: none
    answers UNIMPLEMENTED, and none answers an empty request with INTERNAL."""
    fresh = _bearer(stack, roles=("operator",))
    for name in SERVICES:
        for service in (DESCRIPTORS[name], ACCOUNT_DATA):
            for method in service.methods:
                err = _try_call(stack.grpc[name], service, method.name, fresh)
                if err is None:
                    continue
                assert err.code() != grpc.StatusCode.INTERNAL, method.full_name
                assert err.code() != grpc.StatusCode.UNIMPLEMENTED, (
                    method.full_name,
                    err.details(),
                )


def test_session_rpcs_reject_missing_and_bad_tokens(stack: RunningStack) -> None:
    """Without a token, or with a forged one, a SESSION RPC is UNAUTHENTICATED."""
    keys = DESCRIPTORS["keys"]
    err = _call(stack.grpc["keys"], keys, "GetPrekeyCounts")
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "missing access token" in str(err.details())
    forged = (("authorization", "Bearer eyJhbGciOiJub25lIn0.e30."),)
    err = _call(stack.grpc["keys"], keys, "GetPrekeyCounts", forged)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    expired = _bearer(stack, now=int(time.time()) - 3600)
    err = _call(stack.grpc["keys"], keys, "GetPrekeyCounts", expired)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_fresh_and_operator_modes_enforced(stack: RunningStack) -> None:
    """FRESH RPCs need a recent auth_time; OPERATOR RPCs need the operator role."""
    stale = _bearer(stack, auth_time=int(time.time()) - 3600)
    err = _call(stack.grpc["auth"], DESCRIPTORS["auth"], "ChangePassword", stale)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert trailers(err)["conclave-error-reason"] == "FRESH_AUTH_REQUIRED"
    user = _bearer(stack)
    err = _call(stack.grpc["retention"], DESCRIPTORS["retention"], "RunPurge", user)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    # A NONE-mode RPC needs no token at all and reaches the handler.
    err = _call(stack.grpc["auth"], DESCRIPTORS["auth"], "Login")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
