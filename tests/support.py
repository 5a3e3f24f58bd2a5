"""Small helpers shared by tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from conclave_kit.config import ServiceConfig
from conclave_kit.runtime import ServiceRuntime, ServiceSpec


def trailers(err: Any) -> dict[str, str]:
    """Trailing metadata of a failed gRPC call (sync or aio) as a plain dict."""
    return {str(key): str(value) for key, value in (err.trailing_metadata() or ())}


class MovableClock:
    """Real time plus an offset that tests advance instead of sleeping."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        """Moves the clock forward."""
        self.offset += timedelta(seconds=seconds)

    def unix(self) -> float:
        """The moved time as Unix seconds (what the kit's token checks take)."""
        return self().timestamp()


def service_config(name: str, env: dict[str, str]) -> ServiceConfig:
    """A service's common settings on free ports (0) from a test environment."""
    prefix = f"CONCLAVE_{name.upper()}"
    return ServiceConfig.from_env(
        name,
        default_grpc_port=0,
        default_metrics_port=0,
        environ={**env, f"{prefix}_GRPC_PORT": "0", f"{prefix}_METRICS_PORT": "0"},
    )


async def start_service(
    spec: ServiceSpec,
    env: dict[str, str],
    *,
    config: ServiceConfig | None = None,
    clock: Callable[[], float] = time.time,
) -> ServiceRuntime:
    """Starts ``spec`` in this process on free ports against the test NATS and Postgres."""
    runtime = ServiceRuntime(spec, config or service_config(spec.name, env), clock=clock)
    await runtime.start()
    return runtime
