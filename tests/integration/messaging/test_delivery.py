"""Sends, the per-device delivery stream, acknowledgements and redelivery."""

from __future__ import annotations

import asyncio
import base64
import uuid

import grpc
import pytest
from conclave.auth.v1 import auth_pb2
from conclave.common.v1 import types_pb2
from conclave.events.v1 import events_pb2
from conclave.messaging.v1 import messaging_pb2 as M
from conclave_messaging import streams
from prometheus_client import REGISTRY

from tests.integration.messaging.conftest import Device, Listener, MessagingHarness
from tests.support import trailers

pytestmark = pytest.mark.integration
KIB = 1024


def _ct(
    device: Device, data: bytes = b"ct", kind: int = M.CIPHERTEXT_KIND_RATCHET
) -> M.DeviceCiphertext:
    return M.DeviceCiphertext(
        device=types_pb2.DeviceAddress(account_id=device.account_id, device_id=device.device_id),
        kind=kind,  # type: ignore[arg-type]
        ciphertext=data,
    )


async def _ack(harness: MessagingHarness, device: Device, *items: M.SubscribeResponse) -> int:
    reply = await harness.stub.AckMessages(
        M.AckMessagesRequest(delivery_tokens=[i.delivery_token for i in items]),
        metadata=device.md,
    )
    return reply.acknowledged_count


async def test_group_message_reaches_100_members_exactly_once(messaging: MessagingHarness) -> None:
    """A message to a 100-member group is stored once and pushed once to every other device."""
    sender = messaging.device()
    members = [messaging.device() for _ in range(99)]
    group = await messaging.group(sender, *members)
    assert group.member_count == 100
    sender_other = messaging.device(sender.account_id)  # the sender's second device
    listeners = [await messaging.subscribe(d) for d in [*members, sender_other]]
    own = await messaging.subscribe(sender)
    info = await messaging.runtime.resources.js.stream_info(streams.GROUPS_STREAM)
    before = info.state.messages
    before_metrics = _metrics()
    sent = [await messaging.send(sender, group.group_id, f"m{i}".encode()) for i in range(3)]
    info = await messaging.runtime.resources.js.stream_info(streams.GROUPS_STREAM)
    assert info.state.messages - before == 3  # persisted once each, not once per member
    for listener in listeners:
        got = await listener.wait_for(3)
        assert [m.message.message_id for m in got] == sent
        assert got[0].message.sender.device_id == sender.device_id
        assert got[0].message.conversation.group_id == group.group_id
        assert got[0].message.ciphertext == b"m0"
    await asyncio.sleep(0.2)
    assert all(len(listener.messages) == 3 for listener in listeners)  # no duplicates
    assert own.messages == []  # the sending device is not sent its own message
    grown = {k: v - before_metrics[k] for k, v in _metrics().items()}
    assert grown["sent"] == 3
    assert grown["fanout_count"] == 3 and grown["fanout_sum"] == 300  # member accounts
    assert grown["deliveries"] == 300  # 99 members + the sender's other device, 3 times
    assert grown["push_count"] == 300
    assert _sample("conclave_messaging_connected_devices") >= 101
    # No account, device or group id in any messaging metric label.
    ids = {sender.account_id, sender.device_id, group.group_id}
    for metric in REGISTRY.collect():
        if metric.name.startswith("conclave_messaging"):
            for sample in metric.samples:
                assert not ids & set(sample.labels.values()), sample
                assert not any(len(v) >= 32 for v in sample.labels.values()), sample


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def _metrics() -> dict[str, float]:
    """The messaging metrics one group send should move (no ids in any label)."""
    return {
        "sent": _sample("conclave_messaging_messages_sent_total", {"kind": "group"}),
        "fanout_count": _sample("conclave_messaging_fanout_recipients_count", {"kind": "group"}),
        "fanout_sum": _sample("conclave_messaging_fanout_recipients_sum", {"kind": "group"}),
        "deliveries": _sample("conclave_messaging_deliveries_total"),
        "push_count": _sample(
            "conclave_messaging_send_to_push_seconds_count", {"group_size": "11-100"}
        ),
    }


async def test_offline_device_catches_up_and_unacked_items_return(
    messaging: MessagingHarness,
) -> None:
    """Backlog from the acked cursor, then catch_up_complete; unacked items are redelivered."""
    alice, bob = messaging.device(), messaging.device()
    group = await messaging.group(alice, bob)
    first = await messaging.send(alice, group.group_id)
    listener = await messaging.subscribe(bob)
    got = await listener.wait_for(1)
    assert [g.message.message_id for g in got] == [first]
    marker = next(i for i in listener.items if i.HasField("catch_up_complete"))
    assert marker.catch_up_complete.backlog_count == 2  # the group's creation, then `first`
    assert await _ack(messaging, bob, got[0]) == 1
    assert await _ack(messaging, bob, got[0]) == 0  # idempotent
    await listener.close()

    offline = [await messaging.send(alice, group.group_id) for _ in range(2)]
    listener = await messaging.subscribe(bob)
    got = await listener.wait_for(2)
    assert [g.message.message_id for g in got] == offline
    assert not any(g.message.redelivered for g in got)
    await _ack(messaging, bob, got[0])  # the second stays unacknowledged
    await listener.close()
    await asyncio.sleep(0.1)  # the closed stream records how far it delivered

    listener = await messaging.subscribe(bob)
    got = await listener.wait_for(1)
    assert [g.message.message_id for g in got] == [offline[1]]
    assert got[0].message.redelivered


async def test_direct_envelope_reaches_every_addressed_device(messaging: MessagingHarness) -> None:
    """Each addressed device gets its own ciphertext; the sender's other device gets a copy."""
    alice1 = messaging.device()
    alice2 = messaging.device(alice1.account_id)
    bob1 = messaging.device()
    bob2 = messaging.device(bob1.account_id)
    l_bob1 = await messaging.subscribe(bob1)
    l_alice2 = await messaging.subscribe(alice2)
    message_id = str(uuid.uuid4())
    request = M.SendDirectMessageRequest(
        message_id=message_id,
        recipient_account_id=bob1.account_id,
        ciphertexts=[_ct(bob1, b"for-b1"), _ct(bob2, b"for-b2"), _ct(alice2, b"for-a2")],
    )
    reply = await messaging.stub.SendDirectMessage(request, metadata=alice1.md)
    assert reply.accepted.duplicate is False
    again = await messaging.stub.SendDirectMessage(request, metadata=alice1.md)
    assert again.accepted.duplicate is True
    assert again.accepted.server_time == reply.accepted.server_time

    (b1,) = await l_bob1.wait_for(1)
    assert b1.message.ciphertext == b"for-b1"
    assert b1.message.conversation.peer_account_id == alice1.account_id
    assert b1.message.sender.device_id == alice1.device_id
    assert b1.message.kind == M.CIPHERTEXT_KIND_RATCHET
    (a2,) = await l_alice2.wait_for(1)
    assert a2.message.ciphertext == b"for-a2"
    assert a2.message.conversation.peer_account_id == bob1.account_id
    # bob2 was offline: it catches up its own copy.
    l_bob2 = await messaging.subscribe(bob2)
    (b2,) = await l_bob2.wait_for(1)
    assert b2.message.ciphertext == b"for-b2"
    await asyncio.sleep(0.2)
    assert len(l_bob1.messages) == 1  # the retry stored nothing
    logs = messaging.logs.getvalue()
    assert "rpc_done" in logs  # the log is captured ...
    for planted in (b"for-b1", b"for-b2", b"for-a2"):  # ... and holds no ciphertext
        assert planted.decode() not in logs
        assert base64.b64encode(planted).decode() not in logs


async def test_sealed_sender_deliveries_carry_no_sender(messaging: MessagingHarness) -> None:
    """Sealed-sender copies have neither sender nor conversation."""
    alice, bob = messaging.device(), messaging.device()
    listener = await messaging.subscribe(bob)
    await messaging.stub.SendDirectMessage(
        M.SendDirectMessageRequest(
            message_id=str(uuid.uuid4()),
            recipient_account_id=bob.account_id,
            ciphertexts=[_ct(bob, b"sealed", M.CIPHERTEXT_KIND_SEALED)],
            sealed_sender=True,
        ),
        metadata=alice.md,
    )
    (got,) = await listener.wait_for(1)
    assert got.message.sealed_sender
    assert not got.message.HasField("sender") and not got.message.HasField("conversation")


async def test_removed_member_stops_and_new_member_gets_no_history(
    messaging: MessagingHarness,
) -> None:
    """Removal stops delivery at once; a new member sees only messages sent after joining."""
    admin, carol, dave = messaging.device(), messaging.device(), messaging.device()
    group = await messaging.group(admin, carol)
    l_carol = await messaging.subscribe(carol)
    l_dave = await messaging.subscribe(dave)  # online before being added
    history = await messaging.send(admin, group.group_id)
    await l_carol.wait_for(1)

    await messaging.stub.RemoveMembers(
        M.RemoveMembersRequest(group_id=group.group_id, account_ids=[carol.account_id]),
        metadata=admin.md,
    )
    await messaging.stub.AddMembers(
        M.AddMembersRequest(group_id=group.group_id, account_ids=[dave.account_id]),
        metadata=admin.md,
    )
    after = await messaging.send(admin, group.group_id)
    got = await l_dave.wait_for(1)
    assert [g.message.message_id for g in got] == [after]
    await asyncio.sleep(0.2)
    assert l_carol.ids() == [history]
    # Reconnecting changes nothing: no history for dave, nothing new for carol.
    await l_carol.close()
    await l_dave.close()
    l_carol = await messaging.subscribe(carol)
    l_dave = await messaging.subscribe(dave)
    assert l_carol.messages == []
    assert (await l_dave.wait_for(1))[0].message.message_id == after
    assert len(l_dave.messages) == 1
    # A removed member cannot send either.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await messaging.send(carol, group.group_id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_idempotent_group_send_and_membership_version(messaging: MessagingHarness) -> None:
    """A retried group send is stored once; a stale membership_version stores nothing."""
    alice, bob = messaging.device(), messaging.device()
    group = await messaging.group(alice, bob)
    js = messaging.runtime.resources.js
    request = M.SendGroupMessageRequest(
        message_id=str(uuid.uuid4()), group_id=group.group_id, ciphertext=b"once"
    )
    first = await messaging.stub.SendGroupMessage(request, metadata=alice.md)
    before = (await js.stream_info(streams.GROUPS_STREAM)).state.messages
    retry = await messaging.stub.SendGroupMessage(request, metadata=alice.md)
    assert retry.accepted.duplicate and not first.accepted.duplicate
    assert retry.accepted.server_time == first.accepted.server_time
    assert (await js.stream_info(streams.GROUPS_STREAM)).state.messages == before
    stale = await messaging.stub.SendGroupMessage(
        M.SendGroupMessageRequest(
            message_id=str(uuid.uuid4()),
            group_id=group.group_id,
            ciphertext=b"x",
            membership_version=group.membership_version + 7,
        ),
        metadata=alice.md,
    )
    assert stale.membership_changed.current_membership_version == group.membership_version
    current = await messaging.stub.SendGroupMessage(
        M.SendGroupMessageRequest(
            message_id=str(uuid.uuid4()),
            group_id=group.group_id,
            ciphertext=b"x",
            membership_version=group.membership_version,
        ),
        metadata=alice.md,
    )
    assert current.HasField("accepted")


async def _invalid(call: object) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    return trailers(err.value)["conclave-error-reason"]


async def test_size_and_envelope_limits(messaging: MessagingHarness) -> None:
    """Oversize or empty ciphertexts, duplicate, self or third-party devices: INVALID_ARGUMENT."""
    alice, bob, eve = messaging.device(), messaging.device(), messaging.device()
    group = await messaging.group(alice, bob)
    stub = messaging.stub

    def group_send(data: bytes) -> object:
        return stub.SendGroupMessage(
            M.SendGroupMessageRequest(
                message_id=str(uuid.uuid4()), group_id=group.group_id, ciphertext=data
            ),
            metadata=alice.md,
        )

    assert await _invalid(group_send(b"x" * (256 * KIB + 1))) == "CIPHERTEXT_SIZE"
    assert await _invalid(group_send(b"")) == "CIPHERTEXT_SIZE"
    ok = await group_send(b"x" * (256 * KIB))  # type: ignore[misc]
    assert ok.HasField("accepted")

    def direct(*cts: M.DeviceCiphertext) -> object:
        return stub.SendDirectMessage(
            M.SendDirectMessageRequest(
                message_id=str(uuid.uuid4()), recipient_account_id=bob.account_id, ciphertexts=cts
            ),
            metadata=alice.md,
        )

    bob2 = messaging.device(bob.account_id)
    assert await _invalid(direct(_ct(bob, b"x" * (96 * KIB + 1)))) == "CIPHERTEXT_SIZE"
    assert await _invalid(direct(_ct(bob, b"a"), _ct(bob, b"b"))) == "DUPLICATE_DEVICE"
    assert await _invalid(direct(_ct(bob, b"a"), _ct(eve, b"b"))) == "THIRD_ACCOUNT"
    assert await _invalid(direct(_ct(bob, b"a"), _ct(alice, b"b"))) == "SELF_DEVICE"
    many = [_ct(messaging.device(bob.account_id)) for _ in range(33)]
    await _invalid(direct(*many))
    await _invalid(direct(_ct(bob, b"a", M.CIPHERTEXT_KIND_UNSPECIFIED)))
    await _invalid(direct())
    fine = await direct(_ct(bob, b"x" * (96 * KIB)), _ct(bob2))  # type: ignore[misc]
    assert fine.HasField("accepted")


async def test_revoked_session_stream_gets_session_closed(messaging: MessagingHarness) -> None:
    """A session.revoked event closes its stream: session_closed, then UNAUTHENTICATED."""
    bob = messaging.device()
    listener = await messaging.subscribe(bob)
    event = events_pb2.SessionRevoked(
        event_id=str(uuid.uuid4()),
        account_id=bob.account_id,
        session_id=bob.session_id,
        device_id=bob.device_id,
        reason=auth_pb2.SESSION_END_REASON_LOGOUT,
    )
    await messaging.runtime.resources.js.publish(
        "conclave.events.session.revoked",
        event.SerializeToString(),
        headers={"Nats-Msg-Id": event.event_id},
    )
    async with asyncio.timeout(1.0):  # the contract: within one second
        await listener.done.wait()
    assert listener.items[-1].session_closed.reason == auth_pb2.SESSION_END_REASON_LOGOUT
    assert listener.error is not None
    assert listener.error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_newer_stream_of_a_device_replaces_the_older(messaging: MessagingHarness) -> None:
    """A second Subscribe from one device ends the first with ABORTED."""
    bob = messaging.device()
    first = await messaging.subscribe(bob)
    second = await messaging.subscribe(bob)
    async with asyncio.timeout(2):
        await first.done.wait()
    assert first.error is not None and first.error.code() == grpc.StatusCode.ABORTED
    assert not second.done.is_set()


async def test_ack_rejects_foreign_and_malformed_tokens(messaging: MessagingHarness) -> None:
    """Tokens of another device or of no shape at all are INVALID_ARGUMENT."""
    alice, bob = messaging.device(), messaging.device()
    group = await messaging.group(alice, bob)
    await messaging.send(alice, group.group_id)
    listener = await messaging.subscribe(bob)
    (got,) = await listener.wait_for(1)
    call = messaging.stub.AckMessages(
        M.AckMessagesRequest(delivery_tokens=[got.delivery_token]), metadata=alice.md
    )
    assert await _invalid(call) == "FOREIGN_DELIVERY_TOKEN"
    for bad in ("", "x", "a.b.c", f"{bob.device_id}.direct.-1"):
        call = messaging.stub.AckMessages(
            M.AckMessagesRequest(delivery_tokens=[bad]), metadata=bob.md
        )
        await _invalid(call)


def _kinds(listener: object) -> list[tuple[str, int | str]]:
    """(kind, version or message id) of every durable or notice item, in order."""
    out: list[tuple[str, int | str]] = []
    for item in listener.items:  # type: ignore[attr-defined]
        if item.HasField("membership_change"):
            out.append(("change", item.membership_change.membership_version))
        elif item.HasField("message"):
            out.append(("message", item.message.message_id))
    return out


async def test_membership_changes_reach_member_streams_in_order(
    messaging: MessagingHarness,
) -> None:
    """Changes are durable items in order with messages; a new member's first item is its
    own addition; a removed member gets its removal as its last (token-less) item."""
    admin, bob, carol = messaging.device(), messaging.device(), messaging.device()
    group = await messaging.group(admin, bob)
    l_bob = await messaging.subscribe(bob)
    l_carol = await messaging.subscribe(carol)
    m1 = await messaging.send(admin, group.group_id)
    await messaging.stub.AddMembers(
        M.AddMembersRequest(group_id=group.group_id, account_ids=[carol.account_id]),
        metadata=admin.md,
    )
    m2 = await messaging.send(admin, group.group_id)
    await messaging.stub.RemoveMembers(
        M.RemoveMembersRequest(group_id=group.group_id, account_ids=[bob.account_id]),
        metadata=admin.md,
    )
    await l_carol.wait_for(1)
    async with asyncio.timeout(5):
        while len(_kinds(l_bob)) < 5 or len(_kinds(l_carol)) < 3:
            l_bob.changed.clear()
            await asyncio.sleep(0.05)
    v = group.membership_version
    assert _kinds(l_bob) == [
        ("change", v),
        ("message", m1),
        ("change", v + 1),
        ("message", m2),
        ("change", v + 2),
    ]
    assert _kinds(l_carol) == [("change", v + 1), ("message", m2), ("change", v + 2)]
    removal = [i for i in l_bob.items if i.HasField("membership_change")][-1]
    assert list(removal.membership_change.removed_account_ids) == [bob.account_id]
    assert removal.delivery_token == ""  # live notice: bob is no longer in the log's audience
    added = next(i for i in l_carol.items if i.HasField("membership_change"))
    assert list(added.membership_change.added_account_ids) == [carol.account_id]
    assert added.delivery_token  # durable: acknowledged like a message
    assert await _ack(messaging, carol, added) == 1


async def test_stream_pauses_at_max_unacknowledged(messaging: MessagingHarness) -> None:
    """With max_unacknowledged = 2 the stream holds further items until an ack arrives."""
    alice, bob = messaging.device(), messaging.device()
    group = await messaging.group(alice, bob)
    bob_listener = await messaging.subscribe(bob)  # default window: takes the creation item
    (creation,) = [i for i in bob_listener.items if i.HasField("membership_change")]
    await _ack(messaging, bob, creation)
    await bob_listener.close()
    sent = [await messaging.send(alice, group.group_id) for _ in range(5)]
    listener = Listener(
        messaging.stub.Subscribe(M.SubscribeRequest(max_unacknowledged=2), metadata=bob.md)
    )
    listener.task = asyncio.create_task(listener.run())
    messaging.listeners.append(listener)
    got = await listener.wait_for(2)
    await asyncio.sleep(0.3)
    assert listener.ids() == sent[:2]  # paused: two outstanding
    await _ack(messaging, bob, got[0])  # one slot opens
    await listener.wait_for(3)
    await asyncio.sleep(0.2)
    assert listener.ids() == sent[:3]
    await _ack(messaging, bob, listener.messages[2])  # cumulative: frees every slot
    assert [m.message.message_id for m in await listener.wait_for(5)] == sent
    out_of_range = messaging.stub.Subscribe(
        M.SubscribeRequest(max_unacknowledged=10_001), metadata=bob.md
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in out_of_range:
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_removed_device_loses_mailbox_and_cursors(messaging: MessagingHarness) -> None:
    """conclave.events.device.removed deletes the device's undelivered copies and cursors."""
    alice, bob = messaging.device(), messaging.device()
    group = await messaging.group(alice, bob)
    await messaging.stub.SendDirectMessage(
        M.SendDirectMessageRequest(
            message_id=str(uuid.uuid4()),
            recipient_account_id=bob.account_id,
            ciphertexts=[_ct(bob, b"never-read")],
        ),
        metadata=alice.md,
    )
    listener = await messaging.subscribe(bob)
    await _ack(messaging, bob, listener.items[0])  # a cursor row for the group
    await listener.close()
    resources = messaging.runtime.resources
    async with asyncio.timeout(5):  # the closed stream has recorded how far it delivered
        while not await resources.pool.fetchval(
            "SELECT count(*) FROM cursors WHERE device_id = $1 AND delivered_seq > 0",
            uuid.UUID(bob.device_id),
        ):
            await asyncio.sleep(0.02)
    event = events_pb2.DeviceRemoved(
        event_id=str(uuid.uuid4()),
        device=types_pb2.DeviceAddress(account_id=bob.account_id, device_id=bob.device_id),
        origin=types_pb2.SERVICE_NAME_AUTH,
    )
    await resources.js.publish(
        "conclave.events.device.removed",
        event.SerializeToString(),
        headers={"Nats-Msg-Id": event.event_id},
    )
    mailbox = streams.device_subject(bob.device_id)
    # The durable consumer may first work through older removals (shared test NATS).
    async with asyncio.timeout(15):
        while True:
            left = [s async for s in streams.read_after(resources.js, "MSG_DIRECT", mailbox, 0)]
            rows = await resources.pool.fetchval(
                "SELECT count(*) FROM cursors WHERE device_id = $1", uuid.UUID(bob.device_id)
            )
            if not left and rows == 0:
                break
            await asyncio.sleep(0.05)
    assert group.member_count == 2  # membership is the account's, untouched
