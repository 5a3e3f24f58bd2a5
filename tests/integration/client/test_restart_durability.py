"""Nothing a sender was told is accepted is lost when the whole stack restarts."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conclave_client.messenger import Client
from conclave_devstack.harness import private_data_dir, start_stack

from tests.integration.client.test_messaging_scale import device, register
from tests.integration.stack.conftest import RunningStack

pytestmark = pytest.mark.integration


@pytest.fixture
def base_dir() -> Iterator[Path]:
    base = private_data_dir()
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _drain(client: Client) -> Counter[str]:
    return Counter(m.text for m in client.listen(until_caught_up=True, timeout=30))


def test_accepted_messages_survive_a_restart(base_dir: Path, tmp_path: Path) -> None:
    """Direct and group messages accepted before SIGTERM reach the offline recipient after
    the stack (services, NATS, PostgreSQL) restarts on the same data directory."""
    data = base_dir / "data"
    stack: RunningStack = start_stack(data)
    try:
        (alice_p, alice), (bob_p, bob) = (
            register(stack, tmp_path / n, i) for i, n in enumerate("ab")
        )
        alice.create_group("durable", [bob_p.username])
        assert alice.send_direct(bob_p.username, "direct before restart")
        assert alice.send_group("durable", "group before restart")
        alice.close()
        bob.close()
    finally:
        assert stack.stop() == 0

    stack = start_stack(data)
    try:
        # Same client homes (credentials, device keys, sessions), new processes.
        bob_again = device(stack, tmp_path / "b", bob_p, first=False)
        try:
            got = _drain(bob_again)
        finally:
            bob_again.close()
        assert got == Counter({"direct before restart": 1, "group before restart": 1})
        assert alice_p.username  # alice stayed offline: the messages were already stored
    finally:
        assert stack.stop() == 0
