"""Service runtime: one way to start, serve and stop every Conclave service.

Start-up order (each step logged):

1. metrics HTTP server and gRPC server bind their ports (a port in use is a one-line error);
2. the gRPC server starts with health ``NOT_SERVING``; service RPCs answer ``UNAVAILABLE``;
3. PostgreSQL pool, migrations of the service's schema, NATS connection, shared streams;
4. health turns ``SERVING``.

Shutdown on SIGTERM/SIGINT: health ``NOT_SERVING`` (load balancers stop routing), the gRPC
server stops accepting and drains in-flight RPCs for up to the grace period, then NATS is
drained and the pool closed; the process exits 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
from conclave.common.v1 import account_data_pb2
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from conclave_kit import metrics
from conclave_kit.account_data import (
    AccountDataServicer,
    PurgeScheduler,
    consume_erasures,
    init_series,
)
from conclave_kit.auth import AuthGate
from conclave_kit.config import ConfigError, ServiceConfig
from conclave_kit.database import create_pool
from conclave_kit.errors import ConclaveError, Unavailable
from conclave_kit.interceptor import ServerInterceptor
from conclave_kit.keyfetch import VerificationKeyFetcher
from conclave_kit.logs import configure_logging, get_logger
from conclave_kit.migrations import MigrationError, apply_migrations, load_migrations
from conclave_kit.nats_bus import connect_nats, ensure_stream, events_stream_config
from conclave_kit.pending import add_service
from conclave_kit.revocations import RevocationList
from conclave_kit.tokens import TokenVerifier

_log = get_logger("conclave.runtime")
VERSION = "0.1.0"


class StartupError(Exception):
    """Start-up cannot continue; ``str(err)`` is one line for the operator."""


@dataclass
class Resources:
    """Connections a service's handlers use; filled in during start-up.

    Accessing one before it is connected raises ``Unavailable`` (the kit also refuses
    service RPCs until the service is ready, so handlers normally never see that).
    """

    config: ServiceConfig
    revocations: RevocationList = field(default_factory=RevocationList)
    _pool: asyncpg.Pool | None = None
    _nats: NatsClient | None = None
    _js: JetStreamContext | None = None
    _on_shutdown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def on_shutdown(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Runs ``callback`` at shutdown after RPCs drained, before NATS and Postgres close.

        For background tasks a service starts in its set-up (relays, consumers).
        """
        self._on_shutdown.append(callback)

    @property
    def pool(self) -> asyncpg.Pool:
        """The service's PostgreSQL pool (``search_path`` = its schema)."""
        if self._pool is None:
            raise Unavailable("database not connected yet")
        return self._pool

    @property
    def nats(self) -> NatsClient:
        """The NATS connection."""
        if self._nats is None:
            raise Unavailable("NATS not connected yet")
        return self._nats

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context."""
        if self._js is None:
            raise Unavailable("NATS not connected yet")
        return self._js


Register = Callable[[grpc.aio.Server, Resources], None]


@dataclass(frozen=True)
class ServiceSpec:
    """What makes a service different from the others; the runtime does the rest.

    Attributes:
        name: Short name; also its Postgres schema and metrics label.
        grpc_services: Full names of its gRPC services (health entries and reflection).
        migrations_package: Package holding its ``NNNN_name.sql`` files.
        register: Adds the service's servicers to the server.
        default_grpc_port: Dev default gRPC port.
        default_metrics_port: Dev default Prometheus port.
        extra_setup: Start-up steps after Postgres and NATS connect (streams, consumers);
            each may return an awaitable.
        account_data: The service's AccountDataService (export, purge, erasure); its
            ``provider`` is set by a start-up step. The runtime serves it, consumes
            account erasures and runs the scheduled purge. None: the RPCs answer
            UNIMPLEMENTED.
    """

    name: str
    grpc_services: Sequence[str]
    migrations_package: str
    register: Register
    default_grpc_port: int
    default_metrics_port: int
    extra_setup: Sequence[Callable[[Resources], object]] = field(default=())
    account_data: AccountDataServicer | None = None


ACCOUNT_DATA_SERVICE = account_data_pb2.DESCRIPTOR.services_by_name["AccountDataService"]


class ServiceRuntime:
    """Runs one service (see module docstring).

    Args:
        spec: The service.
        config: Its settings.
        clock: Unix time for token checks (tests that move time pass theirs).
    """

    def __init__(
        self, spec: ServiceSpec, config: ServiceConfig, clock: Callable[[], float] = time.time
    ) -> None:
        self.spec = spec
        self.config = config
        self.resources = Resources(config)
        self.health = health_aio.HealthServicer()
        self._ready = False
        self.verifier = TokenVerifier(config.token_verify_keys)
        gate = AuthGate(
            self.verifier,
            fresh_auth_seconds=config.fresh_auth_seconds,
            is_revoked=self.resources.revocations.is_revoked,
            clock=clock,
        )
        self._server = grpc.aio.server(
            interceptors=[ServerInterceptor(gate, ready=lambda: self._ready)],
            # gRPC enables SO_REUSEPORT by default, which would let a second process bind
            # the same port silently; we want "port in use" to be an error.
            options=[("grpc.so_reuseport", 0)],
        )
        self._metrics_server: object = None
        self.grpc_port = 0
        self.metrics_port = 0

    async def start(self) -> None:
        """Binds, starts serving, connects dependencies and turns SERVING.

        Raises:
            StartupError: A port is in use, a dependency is unreachable or a migration
                is inconsistent.
        """
        cfg = self.config
        prefix = f"CONCLAVE_{cfg.service.upper()}"
        try:
            self._metrics_server, self.metrics_port = metrics.start_metrics_server(
                cfg.metrics_host, cfg.metrics_port
            )
        except OSError as err:
            raise StartupError(
                f"metrics port {cfg.metrics_host}:{cfg.metrics_port} is unavailable "
                f"({err.strerror}); set {prefix}_METRICS_PORT"
            ) from None
        metrics.BUILD_INFO.labels(cfg.service, VERSION).set(1)

        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self.spec.register(self._server, self.resources)
        add_service(
            self._server,
            ACCOUNT_DATA_SERVICE,
            servicer=self.spec.account_data,
            capability="this server holds no account data",
        )
        reflection.enable_server_reflection(
            (
                *self.spec.grpc_services,
                ACCOUNT_DATA_SERVICE.full_name,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ),
            self._server,
        )
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            self.grpc_port = self._server.add_insecure_port(f"{cfg.grpc_host}:{cfg.grpc_port}")
        except RuntimeError:
            self.grpc_port = 0
        if self.grpc_port == 0:
            raise StartupError(
                f"gRPC port {cfg.grpc_host}:{cfg.grpc_port} is already in use or unavailable; "
                f"set {prefix}_GRPC_PORT"
            )
        await self._server.start()
        self._write_ports_file()
        _log.info("listening", grpc_port=self.grpc_port, metrics_port=self.metrics_port)

        try:
            await self._connect()
        except (ConclaveError, MigrationError) as err:
            raise StartupError(str(err)) from err
        self._ready = True
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        _log.info("serving")

    async def _connect(self) -> None:
        cfg = self.config
        res = self.resources
        res._pool = await create_pool(
            cfg.database_url, schema=cfg.service, timeout_seconds=cfg.startup_timeout_seconds
        )
        metrics.DEPENDENCY_UP.labels("postgres").set(1)
        applied = await apply_migrations(
            res._pool, cfg.service, load_migrations(self.spec.migrations_package)
        )
        _log.info("migrations_current", applied=applied)
        res._nats = await connect_nats(
            cfg.nats_urls, name=cfg.service, timeout_seconds=cfg.startup_timeout_seconds
        )
        res._js = res._nats.jetstream()
        await ensure_stream(res._js, events_stream_config(cfg.stream_replicas))
        await res.revocations.subscribe(res._js)
        if cfg.token_keys_from:
            fetcher = VerificationKeyFetcher(
                cfg.token_keys_from, self.verifier, cfg.token_verify_keys
            )
            await fetcher.fetch_until(cfg.startup_timeout_seconds)
            fetcher.start()
            res.on_shutdown(fetcher.stop)
        for setup in self.spec.extra_setup:
            result = setup(res)
            if asyncio.iscoroutine(result):
                await result
        await self._start_account_data()

    async def _start_account_data(self) -> None:
        servicer = self.spec.account_data
        if servicer is None:
            return
        provider = servicer.provider
        if provider is None:
            raise StartupError(f"{self.config.service}: account data provider was not set up")
        res = self.resources
        init_series(provider)
        await consume_erasures(res.js, provider)
        if self.config.purge_interval_seconds > 0:
            scheduler = PurgeScheduler(provider, res.pool, self.config.purge_interval_seconds)
            scheduler.start()
            res.on_shutdown(scheduler.stop)

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for name in ("", *self.spec.grpc_services):
            await self.health.set(name, status)

    def _write_ports_file(self) -> None:
        if not self.config.ports_file:
            return
        path = Path(self.config.ports_file)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"grpc": self.grpc_port, "metrics": self.metrics_port, "pid": os.getpid()})
        )
        tmp.replace(path)  # atomic: readers never see a half-written file

    async def stop(self) -> None:
        """Graceful shutdown (see module docstring). Safe to call once start() began."""
        _log.info("shutting_down", grace_s=self.config.shutdown_grace_seconds)
        self._ready = False
        await self.health.enter_graceful_shutdown()
        await self._server.stop(self.config.shutdown_grace_seconds)
        res = self.resources
        for callback in reversed(res._on_shutdown):
            try:
                await callback()
            except Exception as err:  # keep shutting down; say what failed
                _log.warning("shutdown_callback_failed", error_type=type(err).__name__)
        if res._nats is not None and not res._nats.is_closed:
            try:
                await asyncio.wait_for(res._nats.drain(), timeout=5)
            except (TimeoutError, Exception) as err:  # closing anyway; log why
                _log.warning("nats_drain_failed", error_type=type(err).__name__)
                await res._nats.close()
        if res._pool is not None:
            try:
                await asyncio.wait_for(res._pool.close(), timeout=5)
            except TimeoutError:
                res._pool.terminate()
        shutdown = getattr(self._metrics_server, "shutdown", None)
        if shutdown is not None:
            await asyncio.to_thread(shutdown)
        _log.info("stopped")


async def serve(spec: ServiceSpec, config: ServiceConfig) -> None:
    """Starts the service and runs until SIGTERM or SIGINT, then shuts down gracefully."""
    # Built inside the running loop: grpc.aio objects bind to the loop that creates them.
    runtime = ServiceRuntime(spec, config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    start = asyncio.create_task(runtime.start())
    stopped = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({start, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if start in done:
        start.result()  # raises StartupError
        await stopped
    else:
        start.cancel()
        await asyncio.gather(start, return_exceptions=True)
    await runtime.stop()


def run_service(
    spec: ServiceSpec,
    environ: dict[str, str] | None = None,
    *,
    config: ServiceConfig | None = None,
) -> int:
    """Console entry point shared by all services. Returns the process exit code.

    Args:
        spec: The service.
        environ: Environment to read instead of ``os.environ``.
        config: Already-loaded settings (services with settings of their own load them
            first, reporting their own ConfigError the same way).

    Exit codes: 0 clean shutdown, 2 bad configuration, 1 failed start-up. Errors are one
    line on stderr prefixed with the program name.
    """
    program = f"conclave-{spec.name}"
    try:
        if config is None:
            config = ServiceConfig.from_env(
                spec.name,
                default_grpc_port=spec.default_grpc_port,
                default_metrics_port=spec.default_metrics_port,
                environ=environ,
            )
    except ConfigError as err:
        print(f"{program}: configuration error: {err}", file=sys.stderr)
        return 2
    configure_logging(spec.name, config.log_level)
    try:
        asyncio.run(serve(spec, config))
    except StartupError as err:
        _log.error("startup_failed", error=str(err))
        print(f"{program}: {err}", file=sys.stderr)
        return 1
    return 0


def run_configured(
    name: str,
    default_grpc_port: int,
    default_metrics_port: int,
    build: Callable[[], ServiceSpec],
) -> int:
    """Console entry point for a service with settings of its own.

    The common settings are checked first (so their messages never depend on the
    service's own ones), then ``build`` reads the rest and returns the service. Either
    failing is one line on stderr and exit code 2, as in :func:`run_service`.
    """
    try:
        config = ServiceConfig.from_env(
            name, default_grpc_port=default_grpc_port, default_metrics_port=default_metrics_port
        )
        spec = build()
    except ConfigError as err:
        print(f"conclave-{name}: configuration error: {err}", file=sys.stderr)
        return 2
    return run_service(spec, config=config)
