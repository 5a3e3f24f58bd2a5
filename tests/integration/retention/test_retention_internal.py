"""The internal policy subject ``conclave.internal.retention.policy``: answers exactly what
GetEffectivePolicy answers for the account, without a membership check; malformed
requests get an empty reply at once; and it is cheap enough to ask per message."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid

import pytest
from conclave.common.v1 import types_pb2
from conclave.retention.v1 import retention_pb2 as R
from google.protobuf.duration_pb2 import Duration

from tests.integration.retention.conftest import RetentionHarness, User

pytestmark = pytest.mark.integration
SUBJECT = "conclave.internal.retention.policy"
DAY = 86400


async def _ask(retention: RetentionHarness, request: bytes) -> bytes:
    reply = await retention.runtime.resources.nats.request(SUBJECT, request, timeout=5)
    return bytes(reply.data)


async def test_answers_like_get_effective_policy(retention: RetentionHarness) -> None:
    """Account level, direct conversation (shared by both parties), group (for a
    non-member too: the asking server authorised its caller) and deployment defaults."""
    alice, bob, carol = User(), User(), User()
    group_id = str(uuid.uuid4())
    await retention.membership(group_id, 1, alice, added=[alice])
    await retention.stub.SetAccountPolicy(
        R.SetAccountPolicyRequest(policy=R.RetentionPolicy(media_ttl=Duration(seconds=DAY))),
        metadata=retention.auth(alice),
    )
    await retention.stub.SetConversationPolicy(
        R.SetConversationPolicyRequest(
            conversation=types_pb2.ConversationRef(peer_account_id=bob.account_id),
            policy=R.RetentionPolicy(disappearing_message_timer=Duration(seconds=3600)),
        ),
        metadata=retention.auth(bob),
    )
    await retention.stub.SetConversationPolicy(
        R.SetConversationPolicyRequest(
            conversation=types_pb2.ConversationRef(group_id=group_id),
            policy=R.RetentionPolicy(undelivered_message_ttl=Duration(seconds=7200)),
        ),
        metadata=retention.auth(alice),
    )
    cases = [
        (alice, None),
        (alice, types_pb2.ConversationRef(peer_account_id=bob.account_id)),
        (bob, types_pb2.ConversationRef(peer_account_id=alice.account_id)),
        (alice, types_pb2.ConversationRef(group_id=group_id)),
        (carol, None),
    ]
    for user, ref in cases:
        request = R.ResolvePolicyRequest(account_id=user.account_id)
        if ref is not None:
            request.conversation.CopyFrom(ref)
        answer = R.EffectivePolicy.FromString(await _ask(retention, request.SerializeToString()))
        expected = await retention.stub.GetEffectivePolicy(
            R.GetEffectivePolicyRequest(conversation=ref), metadata=retention.auth(user)
        )
        assert answer == expected.effective, (user, ref)
    # carol is not in the group: GetEffectivePolicy says NOT_FOUND, the subject answers.
    request = R.ResolvePolicyRequest(
        account_id=carol.account_id, conversation=types_pb2.ConversationRef(group_id=group_id)
    )
    answer = R.EffectivePolicy.FromString(await _ask(retention, request.SerializeToString()))
    assert answer.policy.undelivered_message_ttl.seconds == 7200
    assert answer.undelivered_message_ttl_source == R.POLICY_SOURCE_CONVERSATION


async def test_malformed_requests_get_an_empty_reply(retention: RetentionHarness) -> None:
    """Bad protobuf, bad account id, bad conversation id: an empty payload, at once."""
    bad = [
        b"\xff\xff\xff",
        R.ResolvePolicyRequest(account_id="admin").SerializeToString(),
        R.ResolvePolicyRequest(
            account_id=str(uuid.uuid4()),
            conversation=types_pb2.ConversationRef(group_id="not-a-uuid"),
        ).SerializeToString(),
        R.ResolvePolicyRequest(
            account_id=str(uuid.uuid4()), conversation=types_pb2.ConversationRef()
        ).SerializeToString(),
    ]
    for payload in bad:
        assert await _ask(retention, payload) == b""


async def test_answers_are_cheap(retention: RetentionHarness) -> None:
    """Sequential latency and concurrent throughput (printed; loose bounds only, the
    machine is shared)."""
    user = User()
    payload = R.ResolvePolicyRequest(
        account_id=user.account_id,
        conversation=types_pb2.ConversationRef(peer_account_id=str(uuid.uuid4())),
    ).SerializeToString()
    latencies = []
    for _ in range(300):
        started = time.perf_counter()
        await _ask(retention, payload)
        latencies.append(time.perf_counter() - started)
    started = time.perf_counter()
    await asyncio.gather(*(_ask(retention, payload) for _ in range(2000)))
    rate = 2000 / (time.perf_counter() - started)
    p50 = statistics.median(latencies) * 1000
    p99 = sorted(latencies)[int(len(latencies) * 0.99)] * 1000
    print(f"policy requests: p50 {p50:.2f} ms, p99 {p99:.2f} ms, {rate:.0f}/s with 2,000 in flight")
    assert p50 < 50
