"""``conclave-run`` (``make run``): the whole stack on one machine.

Starts embedded NATS (JetStream, file store) and embedded PostgreSQL in the data directory
(``CONCLAVE_DATA_DIR``, default ``./.conclave``), then the five services as separate
processes (retention last, once the others' ports are known: it calls them, settings
``CONCLAVE_RETENTION_PEER_*``); waits until every service reports SERVING, prints the
endpoints and the line ``conclave: ready``. Ctrl-C or SIGTERM stops the services
(gracefully, in parallel), then NATS, then PostgreSQL; a restart keeps the data.

Setting ``CONCLAVE_NATS_URL`` or ``CONCLAVE_DATABASE_URL`` uses that external server instead
of the embedded one (the production path, handy for debugging against a cluster).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

import grpc
from conclave_kit.config import ConfigError, Env
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conclave_devstack.infra import (
    EmbeddedNats,
    EmbeddedPostgres,
    InfraError,
    die_with_parent,
    port_in_use,
)


@dataclass(frozen=True)
class ServiceDef:
    """A service the launcher runs: name, module and dev-default ports."""

    name: str
    module: str
    grpc_port: int
    metrics_port: int


SERVICES = (
    ServiceDef("auth", "conclave_auth", 50051, 9101),
    ServiceDef("keys", "conclave_keys", 50052, 9102),
    ServiceDef("messaging", "conclave_messaging", 50053, 9103),
    ServiceDef("media", "conclave_media", 50054, 9104),
    ServiceDef("retention", "conclave_retention", 50055, 9105),
)
TOKEN_KEY_ID = "dev-1"  # noqa: S105 - a key *id*, not a secret
SENDER_CERT_KEY_FILE = "sender-certificate-ed25519.pem"  # auth: sealed-sender certificates
KT_KEY_FILE = "kt-tree-signing-ed25519.pem"  # keys service: transparency-log head signing key
TOTP_KEY_FILE = "totp-secrets-aes256.key"  # auth: seals stored TOTP secrets


class LaunchError(Exception):
    """The stack cannot start; ``str(err)`` is one line for the operator."""


def _say(message: str) -> None:
    print(f"conclave: {message}", flush=True)


def load_or_create_signing_key(
    secrets_dir: Path, filename: str = "token-signing-ed25519.pem"
) -> Ed25519PrivateKey:
    """Returns a dev Ed25519 signing key (default: the token key), created once (mode 0600).

    The key is kept across restarts so sessions survive a restart of the stack (and, for
    the key-transparency log key, so pinned clients keep verifying its heads).
    """
    secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = secrets_dir / filename
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise LaunchError(f"{path} is not an Ed25519 key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return key


def load_or_create_secret_key(secrets_dir: Path, filename: str) -> Path:
    """A dev 32-byte random key file, created once (mode 0600); returns its path.

    Kept across restarts: auth's stored TOTP secrets are sealed with it.
    """
    secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = secrets_dir / filename
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(os.urandom(32))
    return path


class Stack:
    """The running stack; :meth:`stop` tears it down in reverse order."""

    def __init__(self, data_dir: Path, env: Env) -> None:
        self.data_dir = data_dir
        self.env = env
        self.nats: EmbeddedNats | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.endpoints: dict[str, dict[str, int]] = {}
        self.kt_log_key = ""
        self._logs: list[IO[bytes]] = []

    def start(self, timeout: float) -> None:
        """Brings everything up, or raises LaunchError/InfraError (caller stops)."""
        ports = {
            svc.name: (
                self.env.port(f"CONCLAVE_{svc.name.upper()}_GRPC_PORT", svc.grpc_port),
                self.env.port(f"CONCLAVE_{svc.name.upper()}_METRICS_PORT", svc.metrics_port),
            )
            for svc in SERVICES
        }
        host = self.env.text("CONCLAVE_GRPC_HOST", "127.0.0.1")
        for svc in SERVICES:
            for kind, port in zip(("GRPC", "METRICS"), ports[svc.name], strict=True):
                if port and port_in_use(host, port):
                    raise LaunchError(
                        f"port {host}:{port} is already in use "
                        f"(set CONCLAVE_{svc.name.upper()}_{kind}_PORT to another port)"
                    )
        nats_url = self.env.optional_text("CONCLAVE_NATS_URL")
        if nats_url is None:
            self.nats = EmbeddedNats(
                self.data_dir / "nats", port=self.env.port("CONCLAVE_NATS_PORT", 4222)
            )
            self.nats.start()
            nats_url = self.nats.url
        database_url = self.env.optional_text("CONCLAVE_DATABASE_URL")
        if database_url is None:
            self.postgres = EmbeddedPostgres(self.data_dir / "postgres")
            self.postgres.start()
            database_url = self.postgres.url
        key = load_or_create_signing_key(self.data_dir / "secrets")
        load_or_create_signing_key(self.data_dir / "secrets", SENDER_CERT_KEY_FILE)
        kt_key = load_or_create_signing_key(self.data_dir / "secrets", KT_KEY_FILE)
        totp_key = load_or_create_secret_key(self.data_dir / "secrets", TOTP_KEY_FILE)
        # Clients pin this key (CONCLAVE_KT_LOG_KEY) before trusting tree heads; printing it
        # here is the dev stand-in for publishing it out of band.
        self.kt_log_key = base64.b64encode(
            kt_key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        ).decode()
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        verify_keys = f"{TOKEN_KEY_ID}:{base64.urlsafe_b64encode(public).decode().rstrip('=')}"
        run_dir = self.data_dir / "run"
        logs_dir = self.data_dir / "logs"
        run_dir.mkdir(parents=True, exist_ok=True)
        logs_dir.mkdir(parents=True, exist_ok=True)
        for svc in SERVICES:
            prefix = f"CONCLAVE_{svc.name.upper()}"
            ports_file = run_dir / f"{svc.name}.ports.json"
            ports_file.unlink(missing_ok=True)
            child_env = dict(os.environ)
            child_env.update(
                {
                    "CONCLAVE_NATS_URL": nats_url,
                    "CONCLAVE_DATABASE_URL": database_url,
                    "CONCLAVE_TOKEN_VERIFY_KEYS": verify_keys,
                    "CONCLAVE_TOKEN_SIGNING_KEY_FILE": str(
                        self.data_dir / "secrets" / "token-signing-ed25519.pem"
                    ),
                    "CONCLAVE_TOKEN_SIGNING_KEY_ID": TOKEN_KEY_ID,
                    "CONCLAVE_AUTH_SENDER_CERT_KEY_FILE": str(
                        self.data_dir / "secrets" / SENDER_CERT_KEY_FILE
                    ),
                    "CONCLAVE_KEYS_TREE_SIGNING_KEY_FILE": str(
                        self.data_dir / "secrets" / KT_KEY_FILE
                    ),
                    "CONCLAVE_AUTH_TOTP_KEY_FILE": str(totp_key),
                    f"{prefix}_GRPC_PORT": str(ports[svc.name][0]),
                    f"{prefix}_METRICS_PORT": str(ports[svc.name][1]),
                    f"{prefix}_PORTS_FILE": str(ports_file),
                }
            )
            if svc.name == "retention":
                # Retention calls every other server (RunPurge, ExportMyData,
                # DeleteAccount): it starts once their ports are known, which with port 0
                # is only after they bound them.
                child_env.update(self._peer_settings(host, run_dir, timeout))
            log = (logs_dir / f"{svc.name}.log").open("ab")
            self._logs.append(log)
            self.children[svc.name] = subprocess.Popen(
                [sys.executable, "-m", svc.module],
                env=child_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Own process group: Ctrl-C reaches only the launcher, which then stops the
                # services before NATS and PostgreSQL instead of all at once.
                start_new_session=True,
                # The launcher has no threads of its own yet (gRPC channels open later).
                preexec_fn=die_with_parent,  # noqa: PLW1509
            )
        self._wait_until_serving(host, run_dir, timeout)
        (self.data_dir / "endpoints.json").write_text(
            json.dumps(
                {
                    "nats": nats_url,
                    "kt_log_key": self.kt_log_key,
                    "services": {
                        name: {"grpc": f"{host}:{p['grpc']}", "metrics_port": p["metrics"]}
                        for name, p in self.endpoints.items()
                    },
                },
                indent=2,
            )
        )

    def _peer_settings(self, host: str, run_dir: Path, timeout: float) -> dict[str, str]:
        """``CONCLAVE_RETENTION_PEER_<SERVICE>`` for each other server, from its ports file.

        Settings the operator gave explicitly are kept.
        """
        deadline = time.monotonic() + timeout
        settings: dict[str, str] = {}
        for svc in SERVICES:
            if svc.name == "retention":
                continue
            variable = f"CONCLAVE_RETENTION_PEER_{svc.name.upper()}"
            if self.env.optional_text(variable) is not None:
                continue
            ports_file = run_dir / f"{svc.name}.ports.json"
            while not ports_file.exists():
                child = self.children[svc.name]
                if child.poll() is not None:
                    raise LaunchError(
                        f"{svc.name} exited with code {child.returncode} at start-up:"
                        f" {self.last_error(svc.name)}"
                    )
                if time.monotonic() > deadline:
                    raise LaunchError(f"{svc.name} did not bind its ports after {timeout:.0f}s")
                time.sleep(0.02)
            self.endpoints[svc.name] = json.loads(ports_file.read_text())
            settings[variable] = f"{_dial_host(host)}:{self.endpoints[svc.name]['grpc']}"
        return settings

    def _wait_until_serving(self, host: str, run_dir: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = {svc.name for svc in SERVICES}
        while pending:
            for name in sorted(pending):
                child = self.children[name]
                if child.poll() is not None:
                    raise LaunchError(
                        f"{name} exited with code {child.returncode} at start-up:"
                        f" {self.last_error(name)}"
                    )
                ports_file = run_dir / f"{name}.ports.json"
                if name not in self.endpoints and ports_file.exists():
                    self.endpoints[name] = json.loads(ports_file.read_text())
                if name in self.endpoints and _serving(host, self.endpoints[name]["grpc"]):
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                raise LaunchError(f"not SERVING after {timeout:.0f}s: {', '.join(sorted(pending))}")
            time.sleep(0.05)

    def last_error(self, name: str) -> str:
        """The last line a service logged (its one-line start-up error)."""
        path = self.data_dir / "logs" / f"{name}.log"
        lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
        return lines[-1] if lines else "(no output)"

    def stop(self, grace: float) -> None:
        """SIGTERM to every service, wait, SIGKILL stragglers; then NATS, then PostgreSQL."""
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace + 5
        for child in self.children.values():
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for log in self._logs:
            log.close()
        if self.nats is not None:
            self.nats.stop()
        if self.postgres is not None:
            self.postgres.stop()


def _dial_host(host: str) -> str:
    """Where a local client reaches a server bound to ``host`` (a wildcard is not one)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104 - compared, not bound


def _serving(host: str, port: int) -> bool:
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=0.5
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _print_endpoints(stack: Stack, host: str) -> None:
    _say(f"data directory {stack.data_dir}")
    if stack.nats is not None:
        _say(f"nats       {stack.nats.url}  (JetStream store {stack.data_dir / 'nats'})")
    if stack.postgres is not None:
        _say(f"postgres   {stack.data_dir / 'postgres'}  (Unix socket)")
    for svc in SERVICES:
        ports = stack.endpoints[svc.name]
        _say(
            f"{svc.name:<10} grpc {host}:{ports['grpc']:<6} "
            f"metrics http://{host}:{ports['metrics']}/metrics  pid {stack.children[svc.name].pid}"
        )
    _say(f"kt log key {stack.kt_log_key}  (clients: export CONCLAVE_KT_LOG_KEY=...)")
    _say(f"logs       {stack.data_dir / 'logs'}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point ``conclave-run``."""
    parser = argparse.ArgumentParser(
        prog="conclave-run",
        description="Run the whole Conclave stack (embedded NATS + PostgreSQL + 5 services).",
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("CONCLAVE_DATA_DIR", ".conclave"),
        help="where NATS, PostgreSQL, keys and logs live (env CONCLAVE_DATA_DIR)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for SERVING")
    args = parser.parse_args(argv)
    env = Env()
    data_dir = Path(args.data_dir).resolve()
    try:
        grace = env.seconds("CONCLAVE_SHUTDOWN_GRACE_SECONDS", 10.0)
        host = env.text("CONCLAVE_GRPC_HOST", "127.0.0.1")
    except ConfigError as err:
        print(f"conclave: configuration error: {err}", file=sys.stderr)
        sys.exit(2)
    stack = Stack(data_dir, env)
    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()
    try:
        stack.start(args.timeout)
        _print_endpoints(stack, host)
        _say(f"started in {time.monotonic() - started:.1f}s; Ctrl-C stops everything")
        _say("ready")
        while True:
            for name, child in stack.children.items():
                if child.poll() is not None:
                    raise LaunchError(f"{name} exited with code {child.returncode}")
            time.sleep(0.2)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _say("stopping")
        stack.stop(grace)
        _say("stopped")
        sys.exit(0)
    except (LaunchError, InfraError, ConfigError) as err:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(f"conclave: error: {err}", file=sys.stderr, flush=True)
        stack.stop(grace)
        sys.exit(1)
