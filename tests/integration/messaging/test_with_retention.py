"""Messaging with the real retention service: policies set there shape messages here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from conclave.common.v1 import types_pb2
from conclave.retention.v1 import retention_pb2 as R
from conclave.retention.v1 import retention_pb2_grpc
from conclave_retention.config import RetentionConfig
from conclave_retention.server import build_spec
from google.protobuf.duration_pb2 import Duration

from tests.integration.messaging.conftest import MessagingHarness
from tests.integration.messaging.test_retention import send_direct
from tests.support import start_service

pytestmark = pytest.mark.integration


@pytest.fixture
async def retention_stub(
    service_env: dict[str, str],
) -> AsyncIterator[retention_pb2_grpc.RetentionServiceAsyncStub]:
    """The real retention service (policies, the internal policy responder)."""
    runtime = await start_service(build_spec(RetentionConfig()), service_env)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}")
    yield retention_pb2_grpc.RetentionServiceStub(channel)
    await channel.close(None)
    await runtime.stop()


async def test_a_disappearing_timer_set_in_retention_is_pushed_and_applied(
    messaging: MessagingHarness, retention_stub: retention_pb2_grpc.RetentionServiceAsyncStub
) -> None:
    """SetConversationPolicy → live policy_change to members → expire_time of new sends."""
    alice, bob = messaging.device(), messaging.device()
    group = await messaging.group(alice, bob)
    bob_stream = await messaging.subscribe(bob)
    request = R.SetConversationPolicyRequest(
        conversation=types_pb2.ConversationRef(group_id=group.group_id),
        policy=R.RetentionPolicy(disappearing_message_timer=Duration(seconds=60)),
    )
    # Retention learns the group from conclave.events.group.membership (its durable
    # consumer may first catch up with earlier tests' events).
    async with asyncio.timeout(30):
        while True:
            try:
                await retention_stub.SetConversationPolicy(request, metadata=alice.md)
                break
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.NOT_FOUND, err
                await asyncio.sleep(0.1)
    async with asyncio.timeout(10):
        while not any(i.HasField("policy_change") for i in bob_stream.items):
            bob_stream.changed.clear()
            await bob_stream.changed.wait()
    (change,) = [i.policy_change for i in bob_stream.items if i.HasField("policy_change")]
    assert change.conversation.group_id == group.group_id
    assert change.disappearing_message_timer.seconds == 60
    assert change.changed_by_account_id == alice.account_id

    await messaging.send(alice, group.group_id)
    got = await bob_stream.wait_for(1)
    delivery = got[-1].message
    lifetime = delivery.expire_time.ToDatetime() - delivery.server_time.ToDatetime()
    assert lifetime.total_seconds() == 60
    # A 1:1 conversation without a policy gets the deployment's undelivered TTL (30 days).
    await send_direct(messaging, alice, bob)
    (direct,) = [
        m.message
        for m in await bob_stream.wait_for(2)
        if m.message.conversation.WhichOneof("conversation") == "peer_account_id"
    ]
    assert (direct.expire_time.ToDatetime() - direct.server_time.ToDatetime()).days == 30
