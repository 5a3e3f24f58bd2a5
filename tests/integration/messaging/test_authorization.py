"""Authorization of every MessagingService RPC: no token, bad token, non-member, member
without the admin role, removed member."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from conclave.messaging.v1 import messaging_pb2 as M
from google.protobuf import message_factory

from tests.integration.messaging.conftest import Device, MessagingHarness

pytestmark = pytest.mark.integration
SERVICE = M.DESCRIPTOR.services_by_name["MessagingService"]
ADMIN_ONLY = {"UpdateGroup", "AddMembers", "RemoveMembers", "SetMemberRole"}
GROUP_RPCS = ADMIN_ONLY | {"GetGroup", "LeaveGroup", "ListMembers", "SendGroupMessage"}


def _request(name: str, group_id: str, target: str) -> Any:
    """A well-formed request for ``name`` aimed at ``group_id``."""
    requests: dict[str, Any] = {
        "UpdateGroup": M.UpdateGroupRequest(group_id=group_id, encrypted_metadata=b"m"),
        "GetGroup": M.GetGroupRequest(group_id=group_id),
        "AddMembers": M.AddMembersRequest(group_id=group_id, account_ids=[str(uuid.uuid4())]),
        "RemoveMembers": M.RemoveMembersRequest(group_id=group_id, account_ids=[target]),
        "SetMemberRole": M.SetMemberRoleRequest(
            group_id=group_id, account_id=target, role=M.MEMBER_ROLE_ADMIN
        ),
        "LeaveGroup": M.LeaveGroupRequest(group_id=group_id),
        "ListMembers": M.ListMembersRequest(group_id=group_id),
        "SendGroupMessage": M.SendGroupMessageRequest(
            message_id=str(uuid.uuid4()), group_id=group_id, ciphertext=b"ct"
        ),
    }
    return requests[name]


async def _status(
    harness: MessagingHarness, name: str, request: Any, md: tuple[tuple[str, str], ...]
) -> grpc.StatusCode:
    call = getattr(harness.stub, name)
    try:
        result = call(request, metadata=md, timeout=5)
        if SERVICE.methods_by_name[name].server_streaming:
            async for _ in result:
                pass
        else:
            await result
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def test_every_rpc_rejects_missing_and_foreign_tokens(messaging: MessagingHarness) -> None:
    """All RPCs: UNAUTHENTICATED without a token and with a token whose ids are not ours."""
    odd = messaging.signer.mint(account_id="acc-1", device_id="dev-1", session_id="ses-1")
    for method in SERVICE.methods:
        request = message_factory.GetMessageClass(method.input_type)()
        assert await _status(messaging, method.name, request, ()) == (
            grpc.StatusCode.UNAUTHENTICATED
        ), method.name
        code = await _status(messaging, method.name, request, (("authorization", f"Bearer {odd}"),))
        assert code == grpc.StatusCode.UNAUTHENTICATED, method.name


async def _codes(
    harness: MessagingHarness, who: Device, group_id: str, target: str
) -> dict[str, grpc.StatusCode]:
    return {
        name: await _status(harness, name, _request(name, group_id, target), who.md)
        for name in sorted(GROUP_RPCS)
    }


async def test_group_rpcs_hide_groups_from_non_members(messaging: MessagingHarness) -> None:
    """A stranger gets NOT_FOUND from every group RPC, as for a group that does not exist."""
    admin, member, stranger = messaging.device(), messaging.device(), messaging.device()
    group = await messaging.group(admin, member)
    for gid in (group.group_id, str(uuid.uuid4())):
        codes = await _codes(messaging, stranger, gid, member.account_id)
        assert set(codes.values()) == {grpc.StatusCode.NOT_FOUND}, codes


async def test_admin_rpcs_need_the_admin_role(messaging: MessagingHarness) -> None:
    """A plain member gets PERMISSION_DENIED from admin RPCs and nothing changes."""
    admin, member = messaging.device(), messaging.device()
    group = await messaging.group(admin, member)
    for name in sorted(ADMIN_ONLY):
        request = _request(name, group.group_id, admin.account_id)
        assert await _status(messaging, name, request, member.md) == (
            grpc.StatusCode.PERMISSION_DENIED
        ), name
    after = await messaging.stub.GetGroup(
        M.GetGroupRequest(group_id=group.group_id), metadata=admin.md
    )
    assert after.group.membership_version == group.membership_version
    assert after.group.encrypted_metadata == group.encrypted_metadata


async def test_removed_member_loses_access(messaging: MessagingHarness) -> None:
    """After removal every group RPC answers NOT_FOUND to the former member."""
    admin, member = messaging.device(), messaging.device()
    group = await messaging.group(admin, member)
    await messaging.stub.RemoveMembers(
        M.RemoveMembersRequest(group_id=group.group_id, account_ids=[member.account_id]),
        metadata=admin.md,
    )
    codes = await _codes(messaging, member, group.group_id, admin.account_id)
    assert set(codes.values()) == {grpc.StatusCode.NOT_FOUND}, codes


async def test_malformed_ids_are_invalid_argument(messaging: MessagingHarness) -> None:
    """Non-UUID group, message and account ids are INVALID_ARGUMENT, never INTERNAL."""
    me = messaging.device()
    for name in sorted(GROUP_RPCS):
        request = _request(name, "not-a-uuid", "also-not")
        assert await _status(messaging, name, request, me.md) == (
            grpc.StatusCode.INVALID_ARGUMENT
        ), name
    for method in SERVICE.methods:
        if method.server_streaming:
            continue
        request = message_factory.GetMessageClass(method.input_type)()
        code = await _status(messaging, method.name, request, me.md)
        assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), method.name
