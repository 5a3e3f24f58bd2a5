"""Health of every service, via the standard ``grpc.health.v1`` protocol."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conclave_client.endpoints import Endpoints


@dataclass(frozen=True)
class ServiceStatus:
    """One service's answer: SERVING, NOT_SERVING, UNREACHABLE, ..."""

    service: str
    address: str
    status: str
    latency_ms: float | None
    detail: str = ""

    @property
    def healthy(self) -> bool:
        """True when the service reported SERVING."""
        return self.status == "SERVING"


def check_one(service: str, address: str, timeout: float) -> ServiceStatus:
    """Asks one service for its overall health."""
    start = time.perf_counter()
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else None
            status = "UNREACHABLE" if code in (grpc.StatusCode.UNAVAILABLE, None) else code.name
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                status = "TIMEOUT"
            return ServiceStatus(service, address, status, None, str(err.details() or ""))
    elapsed = (time.perf_counter() - start) * 1000
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return ServiceStatus(service, address, name, round(elapsed, 1))


def check_all(endpoints: Endpoints, timeout: float = 2.0) -> list[ServiceStatus]:
    """Checks all services in parallel, in the canonical service order."""
    with ThreadPoolExecutor(max_workers=len(endpoints.addresses)) as pool:
        futures = [
            pool.submit(check_one, svc, addr, timeout) for svc, addr in endpoints.addresses.items()
        ]
        return [f.result() for f in futures]
