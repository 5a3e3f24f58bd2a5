"""Group lifecycle, admin rules, member cap, paging and membership events."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from conclave.common.v1.types_pb2 import PageRequest
from conclave.events.v1 import events_pb2
from conclave.messaging.v1 import messaging_pb2 as M
from nats.js import api

from tests.integration.messaging.conftest import MAX_MEMBERS, MessagingHarness
from tests.support import trailers

pytestmark = pytest.mark.integration


async def _code(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def test_group_lifecycle_versions_and_roles(messaging: MessagingHarness) -> None:
    """Create, add, promote, demote, remove, leave: versions rise, roles and counts follow."""
    stub = messaging.stub
    admin, bob, carol, dave = (messaging.device() for _ in range(4))
    gid = str(uuid.uuid4())
    created = await stub.CreateGroup(
        M.CreateGroupRequest(
            group_id=gid,
            encrypted_metadata=b"\x01sealed-name",
            member_account_ids=[bob.account_id, bob.account_id, admin.account_id],
        ),
        metadata=admin.md,
    )
    group = created.group
    assert group.group_id == gid and group.member_count == 2
    assert group.my_role == M.MEMBER_ROLE_ADMIN and group.max_members == MAX_MEMBERS
    assert group.encrypted_metadata == b"\x01sealed-name"
    # A retry by the creator is idempotent; another creator cannot take the id.
    again = await stub.CreateGroup(M.CreateGroupRequest(group_id=gid), metadata=admin.md)
    assert again.group.membership_version == group.membership_version
    taken = stub.CreateGroup(M.CreateGroupRequest(group_id=gid), metadata=carol.md)
    assert await _code(taken) == grpc.StatusCode.ALREADY_EXISTS

    seen = await stub.GetGroup(M.GetGroupRequest(group_id=gid), metadata=bob.md)
    assert seen.group.my_role == M.MEMBER_ROLE_MEMBER

    added = await stub.AddMembers(
        M.AddMembersRequest(group_id=gid, account_ids=[carol.account_id, bob.account_id]),
        metadata=admin.md,
    )
    assert list(added.added_account_ids) == [carol.account_id]
    assert list(added.already_member_account_ids) == [bob.account_id]
    assert added.membership_version == group.membership_version + 1

    promoted = await stub.SetMemberRole(
        M.SetMemberRoleRequest(group_id=gid, account_id=bob.account_id, role=M.MEMBER_ROLE_ADMIN),
        metadata=admin.md,
    )
    assert promoted.membership_version == added.membership_version + 1
    same = await stub.SetMemberRole(
        M.SetMemberRoleRequest(group_id=gid, account_id=bob.account_id, role=M.MEMBER_ROLE_ADMIN),
        metadata=admin.md,
    )
    assert same.membership_version == promoted.membership_version  # no-op

    removed = await stub.RemoveMembers(
        M.RemoveMembersRequest(group_id=gid, account_ids=[carol.account_id, dave.account_id]),
        metadata=bob.md,
    )
    assert list(removed.removed_account_ids) == [carol.account_id]
    assert list(removed.not_member_account_ids) == [dave.account_id]

    updated = await stub.UpdateGroup(
        M.UpdateGroupRequest(group_id=gid, encrypted_metadata=b"new"), metadata=bob.md
    )
    assert updated.group.encrypted_metadata == b"new"

    members = await stub.ListMembers(M.ListMembersRequest(group_id=gid), metadata=admin.md)
    assert members.total_count == 2
    assert {m.account_id: m.role for m in members.members} == {
        admin.account_id: M.MEMBER_ROLE_ADMIN,
        bob.account_id: M.MEMBER_ROLE_ADMIN,
    }
    creator = next(m for m in members.members if m.account_id == admin.account_id)
    assert creator.added_by_account_id == ""

    # Bob demotes admin; now Bob is the last admin and cannot leave or demote himself.
    await stub.SetMemberRole(
        M.SetMemberRoleRequest(
            group_id=gid, account_id=admin.account_id, role=M.MEMBER_ROLE_MEMBER
        ),
        metadata=bob.md,
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.LeaveGroup(M.LeaveGroupRequest(group_id=gid), metadata=bob.md)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert trailers(err.value)["conclave-error-reason"] == "LAST_ADMIN"
    demote_self = stub.SetMemberRole(
        M.SetMemberRoleRequest(group_id=gid, account_id=bob.account_id, role=M.MEMBER_ROLE_MEMBER),
        metadata=bob.md,
    )
    assert await _code(demote_self) == grpc.StatusCode.FAILED_PRECONDITION

    await stub.LeaveGroup(M.LeaveGroupRequest(group_id=gid), metadata=admin.md)
    await stub.LeaveGroup(M.LeaveGroupRequest(group_id=gid), metadata=bob.md)  # last: deleted
    gone = stub.GetGroup(M.GetGroupRequest(group_id=gid), metadata=bob.md)
    assert await _code(gone) == grpc.StatusCode.NOT_FOUND


async def test_membership_changes_are_published_as_events(messaging: MessagingHarness) -> None:
    """Every change reaches conclave.events.group.membership with its version (outbox)."""
    js = messaging.runtime.resources.js
    admin, bob = messaging.device(), messaging.device()
    received: list[events_pb2.GroupMembership] = []
    sub = await js.subscribe(
        "conclave.events.group.membership",
        ordered_consumer=True,
        config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.NEW),
    )
    group = await messaging.group(admin)
    await messaging.stub.AddMembers(
        M.AddMembersRequest(group_id=group.group_id, account_ids=[bob.account_id]),
        metadata=admin.md,
    )
    await messaging.stub.RemoveMembers(
        M.RemoveMembersRequest(group_id=group.group_id, account_ids=[bob.account_id]),
        metadata=admin.md,
    )
    async with asyncio.timeout(5):
        while len(received) < 3:
            msg = await sub.next_msg(timeout=5)
            event = events_pb2.GroupMembership.FromString(msg.data)
            if event.change.group_id == group.group_id:
                received.append(event)
    await sub.unsubscribe()
    changes = [e.change for e in received]
    assert [c.membership_version for c in changes] == [1, 2, 3]
    assert list(changes[0].added_account_ids) == [admin.account_id]
    assert list(changes[1].added_account_ids) == [bob.account_id]
    assert list(changes[2].removed_account_ids) == [bob.account_id]
    assert all(c.actor_account_id == admin.account_id for c in changes)
    assert all(e.event_id and e.HasField("occur_time") for e in received)


async def test_member_cap_and_batch_limits(messaging: MessagingHarness) -> None:
    """Adding past the cap is RESOURCE_EXHAUSTED and changes nothing; lists are bounded."""
    admin = messaging.device()
    group = await messaging.group(admin)
    many = [str(uuid.uuid4()) for _ in range(MAX_MEMBERS)]
    too_many = messaging.stub.AddMembers(
        M.AddMembersRequest(group_id=group.group_id, account_ids=many), metadata=admin.md
    )
    assert await _code(too_many) == grpc.StatusCode.RESOURCE_EXHAUSTED
    fits = await messaging.stub.AddMembers(
        M.AddMembersRequest(group_id=group.group_id, account_ids=many[:-1]), metadata=admin.md
    )
    assert len(fits.added_account_ids) == MAX_MEMBERS - 1
    got = await messaging.stub.GetGroup(
        M.GetGroupRequest(group_id=group.group_id), metadata=admin.md
    )
    assert got.group.member_count == MAX_MEMBERS
    oversize = messaging.stub.AddMembers(
        M.AddMembersRequest(
            group_id=group.group_id, account_ids=[str(uuid.uuid4()) for _ in range(1001)]
        ),
        metadata=admin.md,
    )
    assert await _code(oversize) == grpc.StatusCode.INVALID_ARGUMENT
    big = messaging.stub.UpdateGroup(
        M.UpdateGroupRequest(group_id=group.group_id, encrypted_metadata=b"x" * (16 * 1024 + 1)),
        metadata=admin.md,
    )
    assert await _code(big) == grpc.StatusCode.INVALID_ARGUMENT


async def test_paging_of_groups_and_members(messaging: MessagingHarness) -> None:
    """ListMyGroups and ListMembers page without gaps or repeats; foreign tokens fail."""
    me = messaging.device()
    others = [messaging.device() for _ in range(5)]
    ids = sorted([(await messaging.group(me, *others)).group_id for _ in range(3)])
    seen: list[str] = []
    token = ""
    while True:
        page = await messaging.stub.ListMyGroups(
            M.ListMyGroupsRequest(page=PageRequest(page_size=2, page_token=token)), metadata=me.md
        )
        seen += [g.group_id for g in page.groups]
        token = page.page.next_page_token
        if not token:
            break
    assert seen == ids
    members: list[str] = []
    token = ""
    while True:
        mpage = await messaging.stub.ListMembers(
            M.ListMembersRequest(group_id=ids[0], page=PageRequest(page_size=4, page_token=token)),
            metadata=others[0].md,
        )
        members += [m.account_id for m in mpage.members]
        token = mpage.page.next_page_token
        if not token:
            break
    assert sorted(members) == sorted([me.account_id, *(o.account_id for o in others)])
    bad = messaging.stub.ListMyGroups(
        M.ListMyGroupsRequest(page=PageRequest(page_token="bm9wZQ")), metadata=me.md
    )
    assert await _code(bad) == grpc.StatusCode.INVALID_ARGUMENT
