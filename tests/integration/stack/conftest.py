"""The whole stack started the way an operator starts it: ``conclave-run`` as a process."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from conclave_devstack.harness import (
    SERVICES,
    RunningStack,
    launcher_env,
    private_data_dir,
    start_stack,
)

__all__ = ["SERVICES", "RunningStack", "launcher_env", "private_data_dir", "stack", "start_stack"]


@pytest.fixture(scope="session")
def stack() -> Iterator[RunningStack]:
    """One running stack shared by the read-only stack tests."""
    base = private_data_dir()
    running = start_stack(base / "data")
    yield running
    running.stop()
    shutil.rmtree(base, ignore_errors=True)
