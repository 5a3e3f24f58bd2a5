"""JetStream set-up against a real nats-server: idempotent and safe when replicas race."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from conclave_devstack.infra import EmbeddedNats
from conclave_kit.errors import Unavailable
from conclave_kit.nats_bus import connect_nats, ensure_consumer, ensure_stream
from nats.js import api

pytestmark = pytest.mark.integration


def _config(name: str, max_age: float = 60.0) -> api.StreamConfig:
    return api.StreamConfig(
        name=name,
        subjects=[f"test.{name}.>"],
        storage=api.StorageType.FILE,
        max_age=max_age,
        num_replicas=1,
    )


async def test_ensure_stream_is_idempotent_and_updates(nats_server: EmbeddedNats) -> None:
    """Concurrent creation yields one stream; a changed setting is applied as an update."""
    nc = await connect_nats([nats_server.url], name="test", timeout_seconds=5)
    try:
        js = nc.jetstream()
        name = f"S{uuid.uuid4().hex[:8]}"
        infos = await asyncio.gather(*(ensure_stream(js, _config(name)) for _ in range(4)))
        assert {i.config.name for i in infos} == {name}
        await js.publish(f"test.{name}.a", b"kept")
        info = await ensure_stream(js, _config(name, max_age=120.0))
        assert info.config.max_age == 120.0
        assert (await js.stream_info(name)).state.messages == 1  # update kept the data
        consumer = api.ConsumerConfig(durable_name="c1", ack_policy=api.AckPolicy.EXPLICIT)
        first = await ensure_consumer(js, name, consumer)
        again = await ensure_consumer(js, name, consumer)
        assert first.name == again.name == "c1"
        await js.delete_stream(name)
    finally:
        await nc.close()


async def test_connect_gives_up_with_unavailable() -> None:
    """An unreachable NATS fails start-up with UNAVAILABLE after the deadline, not forever."""
    with pytest.raises(Unavailable, match="NATS unreachable"):
        await connect_nats(["nats://127.0.0.1:1"], name="test", timeout_seconds=0.5)
