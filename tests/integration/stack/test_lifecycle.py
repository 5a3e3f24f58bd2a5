"""Starting, stopping and restarting the stack like an operator does."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from tests.integration.stack.conftest import (
    launcher_env,
    private_data_dir,
    start_stack,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def base_dir() -> Iterator[Path]:
    base = private_data_dir()
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still "exists"; it is not running.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def _child_pids(data_dir: Path) -> list[int]:
    pids = [json.loads(p.read_text())["pid"] for p in (data_dir / "run").glob("*.ports.json")]
    nats_ports = list((data_dir / "nats" / "ports").glob("*.ports"))
    pids += [int(p.name.rsplit("_", 1)[1].split(".")[0]) for p in nats_ports]
    return pids


async def _publish_event(url: str) -> None:
    nc = await nats.connect(url)
    await nc.jetstream().publish("conclave.events.test.persisted", b"survives-restart")
    await nc.close()


async def _last_event(url: str) -> bytes:
    nc = await nats.connect(url)
    msg = await nc.jetstream().get_last_msg("CONCLAVE_EVENTS", "conclave.events.test.persisted")
    await nc.close()
    return bytes(msg.data or b"")


def test_sigterm_stops_everything_and_restart_keeps_data(base_dir: Path) -> None:
    """SIGTERM exits 0 with no orphans; a restart reuses NATS + Postgres data, no re-migration."""
    data_dir = base_dir / "data"
    first = start_stack(data_dir)
    nats_url = json.loads((data_dir / "endpoints.json").read_text())["nats"]
    asyncio.run(_publish_event(nats_url))
    pids = _child_pids(data_dir)
    assert len(pids) == 6  # five services + nats-server
    assert first.stop() == 0
    assert first.output[-2:] == ["conclave: stopping", "conclave: stopped"]
    assert [p for p in pids if _alive(p)] == []

    second = start_stack(data_dir)
    try:
        nats_url = json.loads((data_dir / "endpoints.json").read_text())["nats"]
        assert asyncio.run(_last_event(nats_url)) == b"survives-restart"
        auth_log = (data_dir / "logs" / "auth.log").read_text().splitlines()
        migration_runs = [
            json.loads(line)["applied"] for line in auth_log if '"migrations_current"' in line
        ]
        # Every migration applied on the first start, nothing on the restart.
        assert len(migration_runs) == 2
        assert migration_runs[0] == list(range(1, len(migration_runs[0]) + 1))
        assert migration_runs[0] and migration_runs[1] == []
    finally:
        assert second.stop() == 0


def test_port_in_use_is_a_clear_one_line_error(base_dir: Path) -> None:
    """A taken gRPC port stops the launcher with exit 1 and names the variable to change."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = launcher_env({"CONCLAVE_MEDIA_GRPC_PORT": str(port)})
        proc = subprocess.run(
            [sys.executable, "-m", "conclave_devstack", "--data-dir", str(base_dir / "d")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"conclave: error: port 127.0.0.1:{port} is already in use "
        "(set CONCLAVE_MEDIA_GRPC_PORT to another port)"
    )
