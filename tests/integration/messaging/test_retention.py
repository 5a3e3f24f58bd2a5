"""Per-message expiry, disappearing timers, the purge and its operator RPC (issue #7).

Retention's policy responder is stood in for by a NATS responder on the real subject
(``conclave.internal.retention.policy``) answering what each test sets; time moves with
the harness's clock instead of sleeping.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import nats
import pytest
from conclave.common.v1 import account_data_pb2 as D
from conclave.common.v1 import account_data_pb2_grpc, types_pb2
from conclave.events.v1 import events_pb2
from conclave.messaging.v1 import messaging_pb2 as M
from conclave.retention.v1 import retention_pb2 as R
from conclave_kit.errors import Unavailable
from conclave_messaging import policy as P
from conclave_messaging import streams
from conclave_messaging.account_data import MessagingAccountData
from conclave_messaging.policy import POLICY_CHANGED, RESOLVE_SUBJECT
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY

from tests.integration.messaging.conftest import Device, MessagingHarness

pytestmark = pytest.mark.integration
HOUR = 3600
DAY = 24 * HOUR


@dataclass
class FakeRetention:
    """Answers ResolvePolicyRequest like retention: per (account, conversation) values."""

    nc: NatsClient
    ttl: int = DAY
    timer: int = 0
    per_conversation: dict[str, tuple[int, int]] = field(default_factory=dict)
    requests: list[R.ResolvePolicyRequest] = field(default_factory=list)
    broken: bool = False

    async def handle(self, msg: Msg) -> None:
        request = R.ResolvePolicyRequest.FromString(msg.data)
        self.requests.append(request)
        if self.broken:
            await msg.respond(b"\xff not a policy")
            return
        which = request.conversation.WhichOneof("conversation")
        key = getattr(request.conversation, which) if which else ""
        ttl, timer = self.per_conversation.get(key, (self.ttl, self.timer))
        policy = R.RetentionPolicy(
            undelivered_message_ttl=Duration(seconds=ttl),
            disappearing_message_timer=Duration(seconds=timer),
            media_ttl=Duration(seconds=DAY),
            audit_log_ttl=Duration(seconds=365 * DAY),
        )
        await msg.respond(R.EffectivePolicy(policy=policy).SerializeToString())


@pytest.fixture
async def retention(service_env: dict[str, str]) -> AsyncIterator[FakeRetention]:
    """A policy responder on the real subject (stands in for the retention service)."""
    nc = await nats.connect(service_env["CONCLAVE_NATS_URL"])
    fake = FakeRetention(nc)
    await nc.subscribe(RESOLVE_SUBJECT, cb=fake.handle)
    await nc.flush()
    yield fake
    await nc.close()


@pytest.fixture
async def db(service_env: dict[str, str]) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the test database (reads the messaging schema)."""
    conn = await asyncpg.connect(service_env["CONCLAVE_DATABASE_URL"])
    yield conn
    await conn.close()


def _ct(device: Device, data: bytes = b"ct") -> M.DeviceCiphertext:
    return M.DeviceCiphertext(
        device=types_pb2.DeviceAddress(account_id=device.account_id, device_id=device.device_id),
        kind=M.CIPHERTEXT_KIND_RATCHET,
        ciphertext=data,
    )


async def send_direct(
    harness: MessagingHarness, sender: Device, *to: Device, sealed: bool = False
) -> str:
    """A 1:1 envelope from ``sender`` to the devices ``to`` (first one's account)."""
    message_id = str(uuid.uuid4())
    reply = await harness.stub.SendDirectMessage(
        M.SendDirectMessageRequest(
            message_id=message_id,
            recipient_account_id=to[0].account_id,
            ciphertexts=[_ct(d) for d in to],
            sealed_sender=sealed,
        ),
        metadata=sender.md,
    )
    assert reply.HasField("accepted")
    return message_id


async def index_rows(db: asyncpg.Connection, subject: str) -> list[asyncpg.Record]:
    """The index rows of a subject."""
    return list(
        await db.fetch(
            "SELECT * FROM messaging.stored_messages WHERE subject = $1 ORDER BY seq", subject
        )
    )


async def in_stream(harness: MessagingHarness, stream: str, seq: int) -> bool:
    """True while JetStream still holds the message."""
    try:
        await harness.runtime.resources.js.get_msg(stream, seq=seq)
    except NotFoundError:
        return False
    return True


def _lifetime(delivery: M.MessageDelivery) -> float:
    return (delivery.expire_time.ToDatetime() - delivery.server_time.ToDatetime()).total_seconds()


async def test_expired_messages_are_not_served_and_one_purge_deletes_them(
    messaging: MessagingHarness, retention: FakeRetention, db: asyncpg.Connection
) -> None:
    """TTL from the sender's policy: after it, Subscribe skips the items and one purge
    removes them from the streams and the index."""
    retention.ttl = HOUR
    alice, bob = messaging.device(), messaging.device()
    group = await messaging.group(alice, bob)
    direct_id = await send_direct(messaging, alice, bob)
    group_id = await messaging.send(alice, group.group_id)
    # Bob's stream shows the expiry it will have (server time + the TTL).
    listener = await messaging.subscribe(bob)
    got = await listener.wait_for(2)
    assert {m.message.message_id for m in got} == {direct_id, group_id}
    assert all(_lifetime(m.message) == HOUR for m in got)
    await listener.close()

    mailbox = await index_rows(db, streams.device_subject(bob.device_id))
    log = await index_rows(db, streams.group_subject(group.group_id))
    assert len(mailbox) == 1 and mailbox[0]["recipient_account_id"] == uuid.UUID(bob.account_id)
    # The group log holds the creation (membership change) and the message.
    assert [r["message_id"] is None for r in log] == [True, False]
    message_row = log[1]
    assert message_row["sender_account_id"] == uuid.UUID(alice.account_id)

    messaging.clock.advance(HOUR + 1)
    bob2 = messaging.device(bob.account_id)  # a device with no cursor reads everything
    fresh = await messaging.subscribe(bob)
    other = await messaging.subscribe(bob2)
    await asyncio.sleep(0.2)
    assert fresh.messages == [] and other.messages == []  # nothing past its expiry served

    provider = messaging.provider
    lag = await provider.purge_lag()
    assert lag[D.PURGE_KIND_DIRECT_MESSAGES] >= 1
    assert lag[D.PURGE_KIND_GROUP_MESSAGES] >= 1
    counts = await provider.purge(frozenset(provider.kinds))
    assert counts[D.PURGE_KIND_DIRECT_MESSAGES] >= 1
    assert counts[D.PURGE_KIND_GROUP_MESSAGES] >= 1
    assert await index_rows(db, streams.device_subject(bob.device_id)) == []
    remaining = await index_rows(db, streams.group_subject(group.group_id))
    assert [r["seq"] for r in remaining] == [log[0]["seq"]]  # the change lives to max_age
    assert not await in_stream(messaging, streams.DIRECT_STREAM, mailbox[0]["seq"])
    assert not await in_stream(messaging, streams.GROUPS_STREAM, message_row["seq"])
    assert await in_stream(messaging, streams.GROUPS_STREAM, log[0]["seq"])
    after = await provider.purge_lag()
    assert after == {D.PURGE_KIND_DIRECT_MESSAGES: 0.0, D.PURGE_KIND_GROUP_MESSAGES: 0.0}
    assert await provider.purge(frozenset(provider.kinds)) == {
        D.PURGE_KIND_DIRECT_MESSAGES: 0,
        D.PURGE_KIND_GROUP_MESSAGES: 0,
    }


async def test_disappearing_timer_sets_expiry_and_hides_the_message_after_it(
    messaging: MessagingHarness, retention: FakeRetention, db: asyncpg.Connection
) -> None:
    """A conversation's disappearing timer wins over the TTL; the live copy carries it."""
    alice, bob, carol = messaging.device(), messaging.device(), messaging.device()
    group = await messaging.group(alice, bob)
    retention.per_conversation[group.group_id] = (DAY, 30)
    retention.per_conversation[carol.account_id] = (DAY, 0)
    live = await messaging.subscribe(bob)
    message_id = await messaging.send(alice, group.group_id)
    got = await live.wait_for(1)
    assert got[0].message.message_id == message_id
    assert _lifetime(got[0].message) == 30
    other_id = await send_direct(messaging, alice, carol)  # no timer there: the TTL
    row = (await index_rows(db, streams.device_subject(carol.device_id)))[0]
    assert row["message_id"] == uuid.UUID(other_id)
    assert (row["expires_at"] - datetime.now(UTC)) > timedelta(hours=23)

    messaging.clock.advance(31)
    late = await messaging.subscribe(messaging.device(bob.account_id))
    await asyncio.sleep(0.2)
    assert late.messages == []
    carol_stream = await messaging.subscribe(carol)
    assert [m.message.message_id for m in await carol_stream.wait_for(1)] == [other_id]
    counts = await messaging.provider.purge(frozenset({D.PURGE_KIND_GROUP_MESSAGES}))
    assert counts == {D.PURGE_KIND_GROUP_MESSAGES: 1}


async def test_expiry_never_exceeds_the_stream_max_age(
    messaging: MessagingHarness, retention: FakeRetention
) -> None:
    """A policy TTL above the stream's max_age is capped to it."""
    retention.ttl = 365 * DAY
    alice, bob = messaging.device(), messaging.device()
    live = await messaging.subscribe(bob)
    await send_direct(messaging, alice, bob)
    got = await live.wait_for(1)
    assert _lifetime(got[0].message) == 30 * DAY  # CONCLAVE_MESSAGING_MESSAGE_TTL_SECONDS


async def test_without_retention_the_messaging_defaults_apply(
    messaging: MessagingHarness,
) -> None:
    """No responder: the stream TTL, no timer, a warning and the fallback metric."""
    before = REGISTRY.get_sample_value("conclave_messaging_policy_fallbacks_total") or 0.0
    alice, bob = messaging.device(), messaging.device()
    live = await messaging.subscribe(bob)
    await send_direct(messaging, alice, bob)
    got = await live.wait_for(1)
    assert _lifetime(got[0].message) == 30 * DAY
    after = REGISTRY.get_sample_value("conclave_messaging_policy_fallbacks_total") or 0.0
    assert after == before + 1


async def test_failing_retention_is_unavailable_without_a_cached_policy(
    messaging: MessagingHarness, retention: FakeRetention
) -> None:
    """A malformed answer with nothing cached fails the send (nothing stored)."""
    retention.broken = True
    alice, bob = messaging.device(), messaging.device()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await send_direct(messaging, alice, bob)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "retention" in (err.value.details() or "")


async def test_policies_are_cached_and_a_change_event_invalidates_them(
    messaging: MessagingHarness, retention: FakeRetention
) -> None:
    """One look-up per (account, conversation); policy_changed makes the next send ask."""
    alice, bob = messaging.device(), messaging.device()
    group = await messaging.group(alice, bob)
    for _ in range(3):
        await messaging.send(alice, group.group_id)
    asked = [r for r in retention.requests if r.account_id == alice.account_id]
    assert len(asked) == 1 and asked[0].conversation.group_id == group.group_id
    # A stale value beats UNAVAILABLE while cached; a change event drops it.
    retention.broken = True
    await messaging.send(alice, group.group_id)
    retention.broken = False
    retention.per_conversation[group.group_id] = (DAY, 60)
    await _publish_change(messaging, bob.account_id, group_id=group.group_id, timer=60)
    live = await messaging.subscribe(bob)
    async with asyncio.timeout(5):
        while True:  # the event reaches the service asynchronously
            seen = len(live.messages)
            await messaging.send(alice, group.group_id)
            got = await live.wait_for(seen + 1)
            if _lifetime(got[-1].message) == 60:
                break


async def _publish_change(
    harness: MessagingHarness,
    account_id: str,
    *,
    group_id: str = "",
    peer: str = "",
    timer: int | None = None,
) -> events_pb2.RetentionPolicyChanged:
    event = events_pb2.RetentionPolicyChanged(
        event_id=str(uuid.uuid4()), account_id=account_id, occur_time=Timestamp(seconds=1)
    )
    if group_id:
        event.conversation.group_id = group_id
    elif peer:
        event.conversation.peer_account_id = peer
    if timer is not None:
        event.policy.disappearing_message_timer.FromSeconds(timer)
    await harness.runtime.resources.js.publish(
        POLICY_CHANGED, event.SerializeToString(), headers={"Nats-Msg-Id": event.event_id}
    )
    return event


async def test_timer_change_is_pushed_to_connected_participants(
    messaging: MessagingHarness,
) -> None:
    """policy_change reaches every connected participant, named from its side."""
    alice, bob, carol, dave = (messaging.device() for _ in range(4))
    group = await messaging.group(alice, bob)
    streams_ = {d.account_id: await messaging.subscribe(d) for d in (alice, bob, carol, dave)}
    await _publish_change(messaging, alice.account_id, group_id=group.group_id, timer=300)
    await _publish_change(messaging, carol.account_id, peer=dave.account_id, timer=3600)

    async def changes(account: str, count: int) -> list[M.ConversationPolicyChange]:
        listener = streams_[account]
        async with asyncio.timeout(5):
            while len([i for i in listener.items if i.HasField("policy_change")]) < count:
                listener.changed.clear()
                await listener.changed.wait()
        return [i.policy_change for i in listener.items if i.HasField("policy_change")]

    for account in (alice.account_id, bob.account_id):
        (change,) = await changes(account, 1)
        assert change.conversation.group_id == group.group_id
        assert change.disappearing_message_timer.seconds == 300
        assert change.changed_by_account_id == alice.account_id
    (to_carol,) = await changes(carol.account_id, 1)
    (to_dave,) = await changes(dave.account_id, 1)
    assert to_carol.conversation.peer_account_id == dave.account_id
    assert to_dave.conversation.peer_account_id == carol.account_id
    assert to_dave.disappearing_message_timer.seconds == 3600
    live = [i for i in streams_[bob.account_id].items if i.HasField("policy_change")]
    assert live[0].delivery_token == ""  # live only


async def test_concurrent_purges_never_double_count(
    messaging: MessagingHarness, retention: FakeRetention, db: asyncpg.Connection
) -> None:
    """Two providers purging the same backlog at once delete each item exactly once."""
    retention.ttl = HOUR
    alice, bob = messaging.device(), messaging.device()
    group = await messaging.group(alice, bob)
    sends = [messaging.send(alice, group.group_id) for _ in range(150)]
    sends += [send_direct(messaging, alice, bob) for _ in range(150)]
    await asyncio.gather(*sends)
    messaging.clock.advance(HOUR + 1)
    manager = messaging.servicer.manager
    assert manager is not None
    pool = messaging.runtime.resources.pool
    nc = messaging.runtime.resources.nats
    first = MessagingAccountData(manager, pool, nc, batch=20, concurrency=8)
    second = MessagingAccountData(manager, pool, nc, batch=20, concurrency=8)
    kinds = frozenset(first.kinds)
    a, b = await asyncio.gather(first.purge(kinds), second.purge(kinds))
    # Other tests' expired items may be purged too; ours are exactly 300 of them.
    total = sum(a.values()) + sum(b.values())
    assert total >= 300
    assert a and b and sum(a.values()) > 0 and sum(b.values()) > 0  # both did work
    left = await db.fetchval(
        "SELECT count(*) FROM messaging.stored_messages WHERE sender_account_id = $1",
        alice.account_id,
    )
    assert left == 0
    # The counts match what was deleted: nothing left to count a second time.
    assert await first.purge(kinds) == {k: 0 for k in kinds}


async def test_purge_expired_needs_the_operator_role(
    messaging: MessagingHarness, retention: FakeRetention
) -> None:
    """AccountDataService.PurgeExpired: UNAUTHENTICATED, PERMISSION_DENIED, then counts."""
    stub = account_data_pb2_grpc.AccountDataServiceStub(messaging.channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PurgeExpired(D.PurgeExpiredRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    user = messaging.device()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PurgeExpired(D.PurgeExpiredRequest(), metadata=user.md)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

    retention.ttl = HOUR
    await send_direct(messaging, user, messaging.device())
    messaging.clock.advance(HOUR + 1)
    operator = messaging.signer.mint(
        account_id=str(uuid.uuid4()),
        device_id=str(uuid.uuid4()),
        session_id=str(uuid.uuid4()),
        roles=("operator",),
    )
    md = (("authorization", f"Bearer {operator}"),)
    reply = await stub.PurgeExpired(
        D.PurgeExpiredRequest(kinds=[D.PURGE_KIND_DIRECT_MESSAGES, D.PURGE_KIND_MEDIA_BLOBS]),
        metadata=md,
    )
    counts = {c.kind: c.items for c in reply.counts}
    assert set(counts) == {D.PURGE_KIND_DIRECT_MESSAGES}  # kinds it does not hold: ignored
    assert counts[D.PURGE_KIND_DIRECT_MESSAGES] >= 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PurgeExpired(
            D.PurgeExpiredRequest(kinds=[D.PURGE_KIND_UNSPECIFIED]), metadata=md
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_resolver_invalidation_staleness_and_bound(
    retention: FakeRetention, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache on its own: who a change invalidates, stale use on errors, its bound."""
    now = [0.0]
    resolver = P.PolicyResolver(retention.nc, 30 * DAY, monotonic=lambda: now[0])
    a, b, c, g = (str(uuid.uuid4()) for _ in range(4))

    def peer(x: str) -> types_pb2.ConversationRef:
        return types_pb2.ConversationRef(peer_account_id=x)

    group = types_pb2.ConversationRef(group_id=g)
    for account, conv in ((a, peer(b)), (b, peer(a)), (a, peer(c)), (c, group), (a, group)):
        await resolver.resolve(account, conv)
    asked = len(retention.requests)

    def change(account: str, conv: types_pb2.ConversationRef | None) -> None:
        event = events_pb2.RetentionPolicyChanged(account_id=account)
        if conv is not None:
            event.conversation.CopyFrom(conv)
        resolver.invalidate(event)

    change(b, peer(a))  # a direct conversation: both parties' entries
    await resolver.resolve(a, peer(b))
    await resolver.resolve(b, peer(a))
    await resolver.resolve(a, peer(c))  # untouched
    assert len(retention.requests) == asked + 2
    change(c, group)  # a group: every member's entry
    await resolver.resolve(a, group)
    await resolver.resolve(c, group)
    assert len(retention.requests) == asked + 4
    change(a, None)  # an account: all of its conversations
    await resolver.resolve(a, peer(c))
    await resolver.resolve(c, group)  # another account: untouched
    assert len(retention.requests) == asked + 5

    # Past its age an entry is asked again; when that fails the old answer is used.
    retention.broken = True
    now[0] += P.CACHE_SECONDS + 1
    assert (await resolver.resolve(a, peer(c))).ttl_seconds == DAY
    with pytest.raises(Unavailable, match="retention policy unavailable"):
        await resolver.resolve(str(uuid.uuid4()), group)
    retention.broken = False

    monkeypatch.setattr(P, "MAX_CACHED", 4)
    for _ in range(10):
        await resolver.resolve(str(uuid.uuid4()), group)
    assert len(resolver._cache) <= 4  # the bound is the point


async def test_index_follows_acks_and_forgets_messages_already_gone(
    messaging: MessagingHarness, retention: FakeRetention, db: asyncpg.Connection
) -> None:
    """Acked mailbox copies lose their rows at once; rows of messages JetStream dropped
    otherwise are cleaned by the purge; sealed sender is not recorded in the index."""
    retention.ttl = HOUR
    alice, bob = messaging.device(), messaging.device()
    sealed = await send_direct(messaging, alice, bob, sealed=True)
    await send_direct(messaging, alice, bob)
    mailbox = streams.device_subject(bob.device_id)
    rows = await index_rows(db, mailbox)
    by_id = {str(r["message_id"]): r for r in rows}
    assert by_id[sealed]["sender_account_id"] is None
    assert by_id[sealed]["named_account_ids"] is None
    assert by_id[sealed]["recipient_account_id"] == uuid.UUID(bob.account_id)

    listener = await messaging.subscribe(bob)
    got = await listener.wait_for(2)
    await messaging.stub.AckMessages(
        M.AckMessagesRequest(delivery_tokens=[got[0].delivery_token]), metadata=bob.md
    )
    remaining = await index_rows(db, mailbox)
    assert [r["seq"] for r in remaining] == [rows[1]["seq"]]

    # The last copy vanishes behind the index's back (as max_age would drop it).
    await messaging.runtime.resources.js.purge_stream(streams.DIRECT_STREAM, subject=mailbox)
    messaging.clock.advance(HOUR + 1)
    counts = await messaging.provider.purge(frozenset({D.PURGE_KIND_DIRECT_MESSAGES}))
    assert counts[D.PURGE_KIND_DIRECT_MESSAGES] >= 1
    assert await index_rows(db, mailbox) == []
