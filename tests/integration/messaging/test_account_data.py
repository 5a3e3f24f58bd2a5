"""Account erasure and export of the messaging server (issue #7)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from conclave.common.v1 import account_data_pb2 as D
from conclave.common.v1 import account_data_pb2_grpc
from conclave.events.v1 import events_pb2
from conclave.messaging.v1 import messaging_pb2 as M
from conclave_kit.nats_bus import EVENTS_STREAM
from conclave_messaging import account_data, streams
from nats.js.errors import NotFoundError

from tests.integration.messaging.conftest import Device, MessagingHarness
from tests.integration.messaging.test_retention import send_direct

pytestmark = pytest.mark.integration


@pytest.fixture
async def db(service_env: dict[str, str]) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the test database."""
    conn = await asyncpg.connect(service_env["CONCLAVE_DATABASE_URL"])
    yield conn
    await conn.close()


async def rows_naming(db: asyncpg.Connection, account_id: str) -> list[str]:
    """``table: row`` for every row of the messaging schema whose text holds the id."""
    tables = await db.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'messaging'"
    )
    found = []
    for t in tables:
        name = t["table_name"]
        # The whole row as text: uuid, uuid[] and text columns show the id, bytea columns
        # (protobuf payloads) its UTF-8 bytes in hex.
        rows = await db.fetch(f'SELECT x::text AS row FROM messaging."{name}" x')
        for r in rows:
            if account_id in r["row"] or account_id.encode().hex() in r["row"]:
                found.append(f"{name}: {r['row'][:200]}")
    return found


async def messages_naming(harness: MessagingHarness, account_id: str) -> list[str]:
    """``stream/seq`` of every stored message whose bytes or headers hold the id."""
    js = harness.runtime.resources.js
    needle = account_id.encode()
    found = []
    for stream in (streams.DIRECT_STREAM, streams.GROUPS_STREAM):
        info = await js.stream_info(stream)
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                msg = await js.get_msg(stream, seq=seq)
            except NotFoundError:
                continue
            headers = json.dumps(msg.headers or {}).encode()
            if needle in (msg.data or b"") or needle in headers:
                found.append(f"{stream}/{seq}")
    return found


async def _ack_all(
    harness: MessagingHarness, device: Device, items: list[M.SubscribeResponse]
) -> None:
    await harness.stub.AckMessages(
        M.AckMessagesRequest(delivery_tokens=[i.delivery_token for i in items]),
        metadata=device.md,
    )


async def test_erasure_leaves_nothing_that_names_the_account(
    messaging: MessagingHarness, db: asyncpg.Connection
) -> None:
    """Groups, cursors, mailboxes, sent items and membership changes naming it all go."""
    alice, bob, carol = messaging.device(), messaging.device(), messaging.device()
    alice2 = messaging.device(alice.account_id)  # never subscribes: no cursor
    bob2 = messaging.device(bob.account_id)
    # Alice created `shared` (its only admin) and added Carol; `solo` has only her; in
    # `bobs` Bob added and then removed her (changes naming her remain in its log).
    shared = await messaging.group(alice, bob)
    await messaging.stub.AddMembers(
        M.AddMembersRequest(group_id=shared.group_id, account_ids=[carol.account_id]),
        metadata=alice.md,
    )
    solo = await messaging.group(alice)
    bobs = await messaging.group(bob, alice, carol)
    await messaging.send(alice, bobs.group_id)
    await messaging.stub.RemoveMembers(
        M.RemoveMembersRequest(group_id=bobs.group_id, account_ids=[alice.account_id]),
        metadata=bob.md,
    )
    await messaging.send(alice, shared.group_id)
    await messaging.send(alice, solo.group_id)
    kept = await messaging.send(carol, shared.group_id)
    await send_direct(messaging, alice, bob, bob2, alice2)
    await send_direct(messaging, bob, alice, alice2, bob2)  # Bob's own copy names Alice
    await send_direct(messaging, alice, bob, sealed=True)
    listener = await messaging.subscribe(alice)
    await _ack_all(messaging, alice, await listener.wait_for(2))
    await listener.close()
    bob_stream = await messaging.subscribe(bob)
    assert await rows_naming(db, alice.account_id)
    assert await messages_naming(messaging, alice.account_id)

    items = await messaging.provider.erase(alice.account_id)
    assert items > 0
    assert await rows_naming(db, alice.account_id) == []
    assert await messages_naming(messaging, alice.account_id) == []

    # `shared` lives on with Bob (longest-standing member) as admin; `solo` is gone.
    group = (
        await messaging.stub.GetGroup(M.GetGroupRequest(group_id=shared.group_id), metadata=bob.md)
    ).group
    assert group.my_role == M.MEMBER_ROLE_ADMIN
    assert group.member_count == 2
    assert group.membership_version > shared.membership_version
    async with asyncio.timeout(5):
        while True:
            changes = [
                i.membership_change
                for i in bob_stream.items
                if i.HasField("membership_change")
                and i.membership_change.group_id == shared.group_id
                and i.membership_change.membership_version == group.membership_version
            ]
            if changes:
                break
            bob_stream.changed.clear()
            await bob_stream.changed.wait()
    (change,) = changes
    assert not change.removed_account_ids and not change.actor_account_id
    assert list(change.promoted_account_ids) == [bob.account_id]
    assert (
        await db.fetchval(
            "SELECT count(*) FROM messaging.groups WHERE group_id = $1", uuid.UUID(solo.group_id)
        )
        == 0
    )
    # Other members' messages stay.
    carol_row = await db.fetchval(
        "SELECT count(*) FROM messaging.stored_messages WHERE message_id = $1", uuid.UUID(kept)
    )
    assert carol_row == 1
    # Idempotent: a second run finds nothing left.
    assert await messaging.provider.erase(alice.account_id) == 0


async def test_account_deleted_event_erases_and_reports_completion(
    messaging: MessagingHarness, db: asyncpg.Connection
) -> None:
    """conclave.events.account.deleted drives erase(); erasure.completed is published."""
    alice, bob = messaging.device(), messaging.device()
    await messaging.group(alice, bob)
    await send_direct(messaging, bob, alice)
    js = messaging.runtime.resources.js
    erasure_id = "e" * 43
    completed = await js.subscribe("conclave.events.erasure.completed", stream=EVENTS_STREAM)
    event = events_pb2.AccountDeleted(
        event_id=str(uuid.uuid4()), account_id=alice.account_id, erasure_id=erasure_id
    )
    await js.publish(
        "conclave.events.account.deleted",
        event.SerializeToString(),
        headers={"Nats-Msg-Id": event.event_id},
    )
    async with asyncio.timeout(10):
        while True:
            msg = await completed.next_msg(timeout=10)
            done = events_pb2.ErasureCompleted.FromString(msg.data)
            if done.erasure_id == erasure_id and done.account_id == alice.account_id:
                break
    assert done.items_deleted > 0
    assert await rows_naming(db, alice.account_id) == []
    await completed.unsubscribe()


async def test_export_lists_groups_cursors_pending_and_sent_metadata(
    messaging: MessagingHarness,
) -> None:
    """The messaging section: no ciphertext, only ids, times, sizes and positions."""
    alice, bob = messaging.device(), messaging.device()
    group = await messaging.group(alice, bob)
    group_msg = await messaging.send(bob, group.group_id)
    direct_in = await send_direct(messaging, bob, alice)
    sent = await send_direct(messaging, alice, bob)
    listener = await messaging.subscribe(alice)
    got = await listener.wait_for(2)
    # Acknowledge the group message only: the 1:1 copy stays pending.
    await _ack_all(messaging, alice, [i for i in got if i.message.message_id == group_msg])
    await listener.close()

    stub = account_data_pb2_grpc.AccountDataServiceStub(messaging.channel)
    chunks = [
        c.json_chunk
        async for c in stub.ExportAccountData(D.ExportAccountDataRequest(), metadata=alice.md)
    ]
    section = json.loads(b"".join(chunks))
    (exported,) = section["groups"]
    assert exported["group_id"] == group.group_id
    assert exported["role"] == "MEMBER_ROLE_ADMIN"
    assert exported["membership_version"] == group.membership_version
    assert exported["member_count"] == 2
    assert exported["created_by"] == alice.account_id  # the creator joins without "added_by"
    assert exported["added_by"] is None
    assert {"joined_at", "created_at", "updated_at", "max_members", "encrypted_metadata"} <= set(
        exported
    )
    assert section["groups_created_and_left"] == []
    cursors = {c["conversation"]: c for c in section["device_cursors"]}
    assert cursors[group.group_id]["device_id"] == alice.device_id
    assert cursors[group.group_id]["acked_seq"] > 0
    pending = section["pending_messages"]
    assert [p["message_id"] for p in pending] == [direct_in]
    assert pending[0]["device_id"] == alice.device_id
    assert pending[0]["conversation"] == {"peer_account_id": bob.account_id}
    assert pending[0]["ciphertext_bytes"] == 2
    assert pending[0]["expire_time"] > pending[0]["server_time"]
    (mine,) = section["sent_messages_stored"]
    assert mine["message_id"] == sent and mine["to_device"] == bob.device_id
    assert "ciphertext" not in json.dumps(section).replace("ciphertext_bytes", "")


async def test_a_failing_delete_does_not_stop_the_others_and_erasure_retries(
    messaging: MessagingHarness, db: asyncpg.Connection
) -> None:
    """One item JetStream refuses to delete keeps its row; the rest go; erase() raises so
    the account.deleted event is redelivered."""
    alice, bob = messaging.device(), messaging.device()
    await send_direct(messaging, alice, bob)
    # A row pointing into a stream that does not exist: every delete of it fails.
    await db.execute(
        "INSERT INTO messaging.stored_messages (stream, seq, subject, named_account_ids,"
        " size_bytes, expires_at) VALUES ('MSG_MISSING', 1, 'x', ARRAY[$1::uuid], 1, now())",
        alice.account_id,
    )
    with pytest.raises(account_data.JetStreamDeleteError):
        await messaging.provider.erase(alice.account_id)
    left = await db.fetch(
        "SELECT stream FROM messaging.stored_messages WHERE named_account_ids @> ARRAY[$1::uuid]",
        alice.account_id,
    )
    assert [r["stream"] for r in left] == ["MSG_MISSING"]  # the real copy went
    await db.execute("DELETE FROM messaging.stored_messages WHERE stream = 'MSG_MISSING'")
    assert await messaging.provider.erase(alice.account_id) == 0
