"""The whole stack as a child process, started exactly as an operator starts it.

Used by the integration tests and the benchmarks: ``conclave-run`` on free ports in a
fresh data directory, waited on until it prints ``conclave: ready``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from conclave_kit.tokens import TokenSigner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SERVICES = ("auth", "keys", "messaging", "media", "retention")


@dataclass
class RunningStack:
    """A launcher process, its data dir, and where each service listens."""

    process: subprocess.Popen[str]
    data_dir: Path
    grpc: dict[str, str]
    metrics: dict[str, int]
    output: list[str]
    startup_seconds: float

    def signer(self) -> TokenSigner:
        """A signer holding the stack's own token key (what auth will mint with)."""
        pem = (self.data_dir / "secrets" / "token-signing-ed25519.pem").read_bytes()
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, Ed25519PrivateKey)
        return TokenSigner("dev-1", key)

    def client_env(self) -> dict[str, str]:
        """Environment pointing the CLI at this stack."""
        env = dict(os.environ)
        for name, address in self.grpc.items():
            env[f"CONCLAVE_{name.upper()}_ADDR"] = address
        return env

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM the launcher and wait; returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        finally:
            if self.process.stdout:
                self.output.extend(self.process.stdout.read().splitlines())
        return self.process.returncode


def launcher_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a launcher on free ports (0) everywhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCLAVE_")}
    env["CONCLAVE_NATS_PORT"] = "0"
    env["CONCLAVE_SHUTDOWN_GRACE_SECONDS"] = "5"
    # Every test client connects from 127.0.0.1: per-address limits meant for the internet
    # would make tests depend on how many others registered before them.
    env["CONCLAVE_AUTH_SOURCE_REGISTRATIONS_PER_HOUR"] = "10000"
    env["CONCLAVE_AUTH_SOURCE_LOGINS_PER_MINUTE"] = "10000"
    for name in SERVICES:
        env[f"CONCLAVE_{name.upper()}_GRPC_PORT"] = "0"
        env[f"CONCLAVE_{name.upper()}_METRICS_PORT"] = "0"
    env.update(extra or {})
    return env


def start_stack(data_dir: Path, env: dict[str, str] | None = None) -> RunningStack:
    """Runs ``conclave-run`` until it prints ``conclave: ready`` (or fails the test)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "conclave_devstack", "--data-dir", str(data_dir)],
        env=env or launcher_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        output.append(line.rstrip("\n"))
        if line.strip() == "conclave: ready":
            break
    else:
        proc.wait(10)
        raise RuntimeError("launcher exited before ready:\n" + "\n".join(output))
    endpoints = json.loads((data_dir / "endpoints.json").read_text())
    return RunningStack(
        process=proc,
        data_dir=data_dir,
        grpc={n: e["grpc"] for n, e in endpoints["services"].items()},
        metrics={n: e["metrics_port"] for n, e in endpoints["services"].items()},
        output=output,
        startup_seconds=time.monotonic() - started,
    )


def private_data_dir() -> Path:
    """A data dir the unprivileged PostgreSQL user can reach (pytest's tmp root is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="conclave-test-stack-"))
    base.chmod(0o755)
    return base
