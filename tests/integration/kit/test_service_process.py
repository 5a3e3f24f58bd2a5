"""One service process: SIGTERM drains and exits 0; a taken port is a one-line error."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytestmark = pytest.mark.integration


def _spawn(service_env: dict[str, str], tmp_path: Path, **extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCLAVE_")}
    env.update(service_env)
    env.update(
        {
            "CONCLAVE_KEYS_GRPC_PORT": "0",
            "CONCLAVE_KEYS_METRICS_PORT": "0",
            "CONCLAVE_KEYS_PORTS_FILE": str(tmp_path / "ports.json"),
            # The keys service signs transparency-log heads; a throwaway key will do here.
            "CONCLAVE_KEYS_ALLOW_EPHEMERAL_TREE_KEY": "true",
        }
    )
    env.update(extra)
    return subprocess.Popen(
        [sys.executable, "-m", "conclave_keys"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_turns_not_serving_and_exits_zero(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    """Watchers see NOT_SERVING on SIGTERM, and the process exits 0 within the grace period."""
    proc = _spawn(service_env, tmp_path)
    try:
        ports_file = tmp_path / "ports.json"
        deadline = time.monotonic() + 30
        while not ports_file.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        port = json.loads(ports_file.read_text())["grpc"]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            statuses = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
            seen = []
            for reply in statuses:
                seen.append(reply.status)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    started = time.monotonic()
                    proc.send_signal(signal.SIGTERM)
                if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING and len(seen) > 1:
                    break
        assert proc.wait(timeout=10) == 0
        assert (
            time.monotonic() - started < float(service_env["CONCLAVE_SHUTDOWN_GRACE_SECONDS"]) + 2
        )
        assert seen[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
        _out, err = proc.communicate()
        events = [json.loads(line)["event"] for line in err.splitlines()]
        assert events[-1] == "stopped"
        assert "shutting_down" in events
    finally:
        proc.kill()


def test_taken_port_fails_with_one_line(service_env: dict[str, str], tmp_path: Path) -> None:
    """A service whose gRPC port is taken exits 1 and names the variable, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _spawn(service_env, tmp_path, CONCLAVE_KEYS_GRPC_PORT=str(port))
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    last = err.strip().splitlines()[-1]
    assert last == (
        f"conclave-keys: gRPC port 127.0.0.1:{port} is already in use or unavailable; "
        "set CONCLAVE_KEYS_GRPC_PORT"
    )
    assert "Traceback" not in err
