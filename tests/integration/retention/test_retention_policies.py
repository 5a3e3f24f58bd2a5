"""Retention policies: deployment bounds, account and conversation levels, per-field
resolution, who may read and set a conversation's policy, and the policy_changed event."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from conclave.common.v1 import types_pb2
from conclave.events.v1 import events_pb2
from conclave.retention.v1 import retention_pb2 as R
from google.protobuf.duration_pb2 import Duration
from nats.aio.msg import Msg
from prometheus_client import REGISTRY

from tests.integration.retention.conftest import RetentionHarness, User

pytestmark = pytest.mark.integration
DAY = 86400
DEPLOYMENT = R.POLICY_SOURCE_DEPLOYMENT
ACCOUNT = R.POLICY_SOURCE_ACCOUNT
CONVERSATION = R.POLICY_SOURCE_CONVERSATION


def policy(**seconds: int) -> R.RetentionPolicy:
    """A RetentionPolicy with the given fields set (in seconds)."""
    return R.RetentionPolicy(**{k: Duration(seconds=v) for k, v in seconds.items()})


def values(effective: R.EffectivePolicy) -> dict[str, tuple[int, int]]:
    """field -> (seconds, source)."""
    return {
        name: (getattr(effective.policy, name).seconds, getattr(effective, f"{name}_source"))
        for name in (
            "undelivered_message_ttl",
            "disappearing_message_timer",
            "media_ttl",
            "audit_log_ttl",
        )
    }


def peer(user: User) -> types_pb2.ConversationRef:
    """The direct conversation with ``user``."""
    return types_pb2.ConversationRef(peer_account_id=user.account_id)


def group(group_id: str) -> types_pb2.ConversationRef:
    """A group conversation."""
    return types_pb2.ConversationRef(group_id=group_id)


async def _code(coro: object) -> grpc.StatusCode:
    try:
        await coro  # type: ignore[misc]
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


@pytest.fixture
async def changed_events(retention: RetentionHarness) -> AsyncIterator[list[Msg]]:
    """policy_changed events published while the test runs."""
    seen: list[Msg] = []

    async def on_msg(msg: Msg) -> None:
        seen.append(msg)

    sub = await retention.runtime.resources.nats.subscribe(
        "conclave.events.retention.policy_changed", cb=on_msg
    )
    yield seen
    await sub.unsubscribe()


async def test_deployment_policy_has_defaults_and_bounds(retention: RetentionHarness) -> None:
    """Defaults per the contract and the disappearing timer's 30 s … 4 weeks bounds (the
    purge-lag series are the kit's: tests/integration/kit/test_account_data.py)."""
    reply = await retention.stub.GetDeploymentPolicy(
        R.GetDeploymentPolicyRequest(), metadata=retention.auth(User())
    )
    assert reply.defaults.undelivered_message_ttl.seconds == 30 * DAY
    assert reply.defaults.disappearing_message_timer.seconds == 0
    assert reply.defaults.HasField("disappearing_message_timer")
    assert reply.defaults.media_ttl.seconds == 30 * DAY
    assert reply.defaults.audit_log_ttl.seconds == 365 * DAY
    assert reply.minimum.disappearing_message_timer.seconds == 30
    assert reply.maximum.disappearing_message_timer.seconds == 2_419_200
    for name in ("undelivered_message_ttl", "media_ttl", "audit_log_ttl"):
        assert reply.minimum.HasField(name) and reply.maximum.HasField(name)


async def test_account_policy_resolves_per_field(
    retention: RetentionHarness, changed_events: list[Msg]
) -> None:
    """Set fields come from the account, unset ones from the deployment; an empty policy
    clears the level; each change is published."""
    alice = User()
    before = REGISTRY.get_sample_value(
        "conclave_retention_policy_changes_total", {"level": "account"}
    )
    reply = await retention.stub.SetAccountPolicy(
        R.SetAccountPolicyRequest(policy=policy(media_ttl=7 * DAY, audit_log_ttl=90 * DAY)),
        metadata=retention.auth(alice),
    )
    assert values(reply.effective) == {
        "undelivered_message_ttl": (30 * DAY, DEPLOYMENT),
        "disappearing_message_timer": (0, DEPLOYMENT),
        "media_ttl": (7 * DAY, ACCOUNT),
        "audit_log_ttl": (90 * DAY, ACCOUNT),
    }
    read = await retention.stub.GetEffectivePolicy(
        R.GetEffectivePolicyRequest(), metadata=retention.auth(alice)
    )
    assert read.effective == reply.effective
    # Another user's account policy is untouched.
    bob = await retention.stub.GetEffectivePolicy(
        R.GetEffectivePolicyRequest(), metadata=retention.auth(User())
    )
    assert values(bob.effective)["media_ttl"] == (30 * DAY, DEPLOYMENT)

    cleared = await retention.stub.SetAccountPolicy(
        R.SetAccountPolicyRequest(policy=R.RetentionPolicy()), metadata=retention.auth(alice)
    )
    assert {s for _, s in values(cleared.effective).values()} == {DEPLOYMENT}
    after = REGISTRY.get_sample_value(
        "conclave_retention_policy_changes_total", {"level": "account"}
    )
    assert after == (before or 0) + 2

    for _ in range(100):
        if len(changed_events) >= 2:
            break
        await asyncio.sleep(0.05)
    events = [events_pb2.RetentionPolicyChanged.FromString(m.data) for m in changed_events]
    mine = [e for e in events if e.account_id == alice.account_id]
    assert len(mine) == 2
    assert mine[0].policy.media_ttl.seconds == 7 * DAY
    assert not mine[0].HasField("conversation")
    assert mine[1].policy == R.RetentionPolicy()


@pytest.mark.parametrize(
    ("field", "seconds", "words"),
    [
        ("undelivered_message_ttl", 60, "below the deployment minimum of 3600 s"),
        ("undelivered_message_ttl", 31 * DAY, "above the deployment maximum of 2592000 s"),
        ("disappearing_message_timer", 10, "below the deployment minimum of 30 s"),
        ("disappearing_message_timer", 29 * DAY, "above the deployment maximum of 2419200 s"),
        ("media_ttl", -5, "must not be negative"),
        ("audit_log_ttl", 800 * DAY, "above the deployment maximum of 63072000 s"),
    ],
)
async def test_out_of_bounds_is_invalid_argument(
    retention: RetentionHarness, field: str, seconds: int, words: str
) -> None:
    """Never clamped: the error names the field and the bound, and nothing is stored."""
    alice = User()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await retention.stub.SetAccountPolicy(
            R.SetAccountPolicyRequest(policy=policy(**{field: seconds})),
            metadata=retention.auth(alice),
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"policy.{field}" in (err.value.details() or "")
    assert words in (err.value.details() or "")
    read = await retention.stub.GetEffectivePolicy(
        R.GetEffectivePolicyRequest(), metadata=retention.auth(alice)
    )
    assert {s for _, s in values(read.effective).values()} == {DEPLOYMENT}


async def test_direct_conversation_policy_is_shared_and_wins_per_field(
    retention: RetentionHarness, changed_events: list[Msg]
) -> None:
    """Either party sets it; both see it; conversation > account > deployment per field;
    a third account naming one of them reaches a different conversation."""
    alice, bob, carol = User(), User(), User()
    await retention.stub.SetAccountPolicy(
        R.SetAccountPolicyRequest(policy=policy(media_ttl=2 * DAY, undelivered_message_ttl=DAY)),
        metadata=retention.auth(alice),
    )
    reply = await retention.stub.SetConversationPolicy(
        R.SetConversationPolicyRequest(
            conversation=peer(bob), policy=policy(disappearing_message_timer=3600, media_ttl=DAY)
        ),
        metadata=retention.auth(alice),
    )
    assert values(reply.effective) == {
        "undelivered_message_ttl": (DAY, ACCOUNT),
        "disappearing_message_timer": (3600, CONVERSATION),
        "media_ttl": (DAY, CONVERSATION),
        "audit_log_ttl": (365 * DAY, DEPLOYMENT),
    }
    seen_by_bob = await retention.stub.GetEffectivePolicy(
        R.GetEffectivePolicyRequest(conversation=peer(alice)), metadata=retention.auth(bob)
    )
    assert values(seen_by_bob.effective)["disappearing_message_timer"] == (3600, CONVERSATION)
    assert values(seen_by_bob.effective)["undelivered_message_ttl"] == (30 * DAY, DEPLOYMENT)
    # Bob may change it too (0 turns disappearing messages off); Alice sees his change.
    await retention.stub.SetConversationPolicy(
        R.SetConversationPolicyRequest(
            conversation=peer(alice), policy=policy(disappearing_message_timer=0)
        ),
        metadata=retention.auth(bob),
    )
    seen_by_alice = await retention.stub.GetEffectivePolicy(
        R.GetEffectivePolicyRequest(conversation=peer(bob)), metadata=retention.auth(alice)
    )
    assert values(seen_by_alice.effective)["disappearing_message_timer"] == (0, CONVERSATION)
    assert values(seen_by_alice.effective)["media_ttl"] == (2 * DAY, ACCOUNT)
    # Carol's conversation with Alice is another conversation: untouched by the above,
    # and Carol's change there does not reach Alice and Bob's.
    await retention.stub.SetConversationPolicy(
        R.SetConversationPolicyRequest(
            conversation=peer(alice), policy=policy(disappearing_message_timer=60)
        ),
        metadata=retention.auth(carol),
    )
    again = await retention.stub.GetEffectivePolicy(
        R.GetEffectivePolicyRequest(conversation=peer(bob)), metadata=retention.auth(alice)
    )
    assert values(again.effective)["disappearing_message_timer"] == (0, CONVERSATION)

    # audit_log_ttl is account-level only; a conversation needs a valid id.
    for request in (
        R.SetConversationPolicyRequest(conversation=peer(bob), policy=policy(audit_log_ttl=DAY)),
        R.SetConversationPolicyRequest(policy=policy(media_ttl=DAY)),
        R.SetConversationPolicyRequest(
            conversation=types_pb2.ConversationRef(peer_account_id="bob"), policy=policy()
        ),
    ):
        code = await _code(
            retention.stub.SetConversationPolicy(request, metadata=retention.auth(alice))
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT

    by_alice: list[events_pb2.RetentionPolicyChanged] = []
    for _ in range(100):
        events = [events_pb2.RetentionPolicyChanged.FromString(m.data) for m in changed_events]
        by_alice = [
            e for e in events if e.account_id == alice.account_id and e.HasField("conversation")
        ]
        if by_alice:
            break
        await asyncio.sleep(0.05)
    assert by_alice[0].conversation == peer(bob)
    assert by_alice[0].policy.disappearing_message_timer.seconds == 3600


async def test_group_policy_follows_membership_events(retention: RetentionHarness) -> None:
    """Members read, admins set, members get PERMISSION_DENIED, non-members NOT_FOUND;
    promotion, removal, a late older event and group deletion are all honoured."""
    admin, member, outsider = User(), User(), User()
    gid = str(uuid.uuid4())
    ref = group(gid)
    timer = policy(disappearing_message_timer=86400)

    # Before retention learns of the group it is unknown to everyone.
    code = await _code(
        retention.stub.GetEffectivePolicy(
            R.GetEffectivePolicyRequest(conversation=ref), metadata=retention.auth(admin)
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND

    await retention.membership(gid, 1, admin, added=[admin, member])  # creation
    reply = await retention.stub.SetConversationPolicy(
        R.SetConversationPolicyRequest(conversation=ref, policy=timer),
        metadata=retention.auth(admin),
    )
    assert values(reply.effective)["disappearing_message_timer"] == (86400, CONVERSATION)
    read = await retention.stub.GetEffectivePolicy(
        R.GetEffectivePolicyRequest(conversation=ref), metadata=retention.auth(member)
    )
    assert values(read.effective)["disappearing_message_timer"] == (86400, CONVERSATION)

    async def set_as(user: User) -> grpc.StatusCode:
        return await _code(
            retention.stub.SetConversationPolicy(
                R.SetConversationPolicyRequest(conversation=ref, policy=timer),
                metadata=retention.auth(user),
            )
        )

    async def get_as(user: User) -> grpc.StatusCode:
        return await _code(
            retention.stub.GetEffectivePolicy(
                R.GetEffectivePolicyRequest(conversation=ref), metadata=retention.auth(user)
            )
        )

    assert await set_as(member) == grpc.StatusCode.PERMISSION_DENIED
    assert await set_as(outsider) == grpc.StatusCode.NOT_FOUND
    assert await get_as(outsider) == grpc.StatusCode.NOT_FOUND

    await retention.membership(gid, 2, admin, promoted=[member])
    assert await set_as(member) == grpc.StatusCode.OK
    await retention.membership(gid, 3, member, demoted=[admin])
    assert await set_as(admin) == grpc.StatusCode.PERMISSION_DENIED
    await retention.membership(gid, 4, member, removed=[admin])
    assert await get_as(admin) == grpc.StatusCode.NOT_FOUND
    # A redelivered older event (version 1 re-adding the admin) changes nothing.
    await retention.membership(gid, 1, admin, added=[admin, member])
    assert await get_as(admin) == grpc.StatusCode.NOT_FOUND
    # A member added later by the remaining admin can read but not set.
    await retention.membership(gid, 5, member, added=[outsider])
    assert await get_as(outsider) == grpc.StatusCode.OK
    assert await set_as(outsider) == grpc.StatusCode.PERMISSION_DENIED

    # Deleting the group drops its members and its policy.
    await retention.membership(gid, 6, member, removed=[member, outsider], deleted=True)
    assert await get_as(member) == grpc.StatusCode.NOT_FOUND
    stored = await retention.runtime.resources.pool.fetchval(
        "SELECT count(*) FROM conversation_policies WHERE group_id = $1", uuid.UUID(gid)
    )
    assert stored == 0
