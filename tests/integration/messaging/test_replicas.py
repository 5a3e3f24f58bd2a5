"""Two messaging replicas on one NATS + PostgreSQL: a device may use either one."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from conclave.events.v1 import events_pb2
from conclave.messaging.v1 import messaging_pb2 as M
from conclave.messaging.v1 import messaging_pb2_grpc
from conclave_kit.runtime import ServiceRuntime
from conclave_messaging.config import MessagingConfig
from conclave_messaging.policy import POLICY_CHANGED
from conclave_messaging.server import build_spec

from tests.integration.messaging.conftest import Listener, MessagingHarness

pytestmark = pytest.mark.integration


@pytest.fixture
async def replica(
    service_env: dict[str, str], messaging: MessagingHarness
) -> AsyncIterator[messaging_pb2_grpc.MessagingServiceAsyncStub]:
    """A second replica of the service (the first is ``messaging``)."""
    env = {
        **service_env,
        "CONCLAVE_MESSAGING_GRPC_PORT": "0",
        "CONCLAVE_MESSAGING_METRICS_PORT": "0",
        # These tests exercise fan-out alone (no key directory runs here); device lists are
        # checked against the real directory in tests/integration/client.
        "CONCLAVE_MESSAGING_CHECK_DEVICES": "false",
    }
    config = MessagingConfig.from_env(env)
    runtime = ServiceRuntime(build_spec(config), config.service)
    await runtime.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}")
    yield messaging_pb2_grpc.MessagingServiceStub(channel)
    await channel.close(None)
    await runtime.stop()


async def test_changes_on_one_replica_reach_streams_on_another(
    messaging: MessagingHarness, replica: messaging_pb2_grpc.MessagingServiceAsyncStub
) -> None:
    """Streams on replica A follow adds, removals and sends made through replica B."""
    admin, carol, dave = messaging.device(), messaging.device(), messaging.device()
    gid = str(uuid.uuid4())
    await replica.CreateGroup(
        M.CreateGroupRequest(group_id=gid, member_account_ids=[carol.account_id]),
        metadata=admin.md,
    )
    l_carol = await messaging.subscribe(carol)  # on replica A
    l_dave = await messaging.subscribe(dave)
    await replica.AddMembers(
        M.AddMembersRequest(group_id=gid, account_ids=[dave.account_id]), metadata=admin.md
    )
    await replica.RemoveMembers(
        M.RemoveMembersRequest(group_id=gid, account_ids=[carol.account_id]), metadata=admin.md
    )
    await asyncio.sleep(0.3)  # the membership event travels through the outbox and NATS
    message_id = str(uuid.uuid4())
    await replica.SendGroupMessage(
        M.SendGroupMessageRequest(message_id=message_id, group_id=gid, ciphertext=b"x"),
        metadata=admin.md,
    )
    assert [m.message.message_id for m in await l_dave.wait_for(1)] == [message_id]
    await asyncio.sleep(0.2)
    assert l_carol.messages == []


async def test_a_device_reconnecting_to_another_replica_resumes(
    messaging: MessagingHarness, replica: messaging_pb2_grpc.MessagingServiceAsyncStub
) -> None:
    """Acks made on one replica move the cursor used by a stream on the other."""
    alice, bob = messaging.device(), messaging.device()
    group = await messaging.group(alice, bob)
    sent = [await messaging.send(alice, group.group_id) for _ in range(2)]
    on_a = await messaging.subscribe(bob)
    got = await on_a.wait_for(2)
    await replica.AckMessages(
        M.AckMessagesRequest(delivery_tokens=[got[0].delivery_token]), metadata=bob.md
    )
    await on_a.close()
    on_b = Listener(replica.Subscribe(M.SubscribeRequest(), metadata=bob.md))
    on_b.task = asyncio.create_task(on_b.run())
    try:
        assert [m.message.message_id for m in await on_b.wait_for(1)] == [sent[1]]
    finally:
        await on_b.close()


async def test_a_stream_on_another_replica_replaces_the_older(
    messaging: MessagingHarness, replica: messaging_pb2_grpc.MessagingServiceAsyncStub
) -> None:
    """One stream per device across replicas: the older one ends with ABORTED."""
    bob = messaging.device()
    on_a = await messaging.subscribe(bob)
    on_b = Listener(replica.Subscribe(M.SubscribeRequest(), metadata=bob.md))
    on_b.task = asyncio.create_task(on_b.run())
    try:
        async with asyncio.timeout(2):
            await on_a.done.wait()
        assert on_a.error is not None and on_a.error.code() == grpc.StatusCode.ABORTED
        await asyncio.sleep(0.1)
        assert not on_b.done.is_set()
    finally:
        await on_b.close()


async def test_a_policy_change_reaches_participants_on_every_replica(
    messaging: MessagingHarness, replica: messaging_pb2_grpc.MessagingServiceAsyncStub
) -> None:
    """Each replica follows policy_changed and pushes to the streams it holds."""
    alice, bob = messaging.device(), messaging.device()
    group = await messaging.group(alice, bob)
    on_a = await messaging.subscribe(alice)
    on_b = Listener(replica.Subscribe(M.SubscribeRequest(), metadata=bob.md))
    on_b.task = asyncio.create_task(on_b.run())
    try:
        async with asyncio.timeout(5):
            await on_b.caught_up.wait()
        event = events_pb2.RetentionPolicyChanged(
            event_id=str(uuid.uuid4()), account_id=alice.account_id
        )
        event.conversation.group_id = group.group_id
        event.policy.disappearing_message_timer.FromSeconds(120)
        await messaging.runtime.resources.js.publish(
            POLICY_CHANGED, event.SerializeToString(), headers={"Nats-Msg-Id": event.event_id}
        )
        for listener in (on_a, on_b):
            async with asyncio.timeout(5):
                while not any(i.HasField("policy_change") for i in listener.items):
                    listener.changed.clear()
                    await listener.changed.wait()
            (item,) = [i for i in listener.items if i.HasField("policy_change")]
            assert item.policy_change.disappearing_message_timer.seconds == 120
    finally:
        await on_b.close()
