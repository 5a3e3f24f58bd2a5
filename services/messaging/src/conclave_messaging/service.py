"""gRPC layer of the messaging service: thin, translating requests to the domain and back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from conclave.messaging.v1 import messaging_pb2 as M
from conclave.messaging.v1 import messaging_pb2_grpc
from conclave_kit.auth import current_claims
from conclave_kit.errors import InvalidArgument, Unavailable

from conclave_messaging.account_data import MessagingAccountData
from conclave_messaging.fanout import MAX_UNACKED, Hub
from conclave_messaging.manager import MessagingManager, caller


class MessagingServiceServicer(messaging_pb2_grpc.MessagingServiceServicer):
    """Implements conclave.messaging.v1.MessagingService (wired once connected).

    Every RPC is implemented, so it subclasses the generated base and mypy checks each
    signature against the contract (docs/decisions/0001).
    """

    def __init__(self) -> None:
        self.manager: MessagingManager | None = None
        self.hub: Hub | None = None
        self.account_data: MessagingAccountData | None = None

    @property
    def _m(self) -> MessagingManager:
        if self.manager is None:
            raise Unavailable("messaging is starting")
        return self.manager

    @property
    def _hub(self) -> Hub:
        if self.hub is None:
            raise Unavailable("messaging is starting")
        return self.hub

    async def CreateGroup(
        self, request: M.CreateGroupRequest, context: Any
    ) -> M.CreateGroupResponse:
        """See messaging.proto."""
        group = await self._m.create_group(
            caller(current_claims()),
            request.group_id,
            request.encrypted_metadata,
            list(request.member_account_ids),
        )
        return M.CreateGroupResponse(group=group)

    async def UpdateGroup(
        self, request: M.UpdateGroupRequest, context: Any
    ) -> M.UpdateGroupResponse:
        """See messaging.proto."""
        group = await self._m.update_group(
            caller(current_claims()), request.group_id, request.encrypted_metadata
        )
        return M.UpdateGroupResponse(group=group)

    async def GetGroup(self, request: M.GetGroupRequest, context: Any) -> M.GetGroupResponse:
        """See messaging.proto."""
        group = await self._m.get_group(caller(current_claims()), request.group_id)
        return M.GetGroupResponse(group=group)

    async def ListMyGroups(
        self, request: M.ListMyGroupsRequest, context: Any
    ) -> M.ListMyGroupsResponse:
        """See messaging.proto."""
        groups, token = await self._m.list_my_groups(
            caller(current_claims()), request.page.page_size, request.page.page_token
        )
        response = M.ListMyGroupsResponse(groups=groups)
        response.page.next_page_token = token
        return response

    async def AddMembers(self, request: M.AddMembersRequest, context: Any) -> M.AddMembersResponse:
        """See messaging.proto."""
        return await self._m.add_members(
            caller(current_claims()), request.group_id, list(request.account_ids)
        )

    async def RemoveMembers(
        self, request: M.RemoveMembersRequest, context: Any
    ) -> M.RemoveMembersResponse:
        """See messaging.proto."""
        return await self._m.remove_members(
            caller(current_claims()), request.group_id, list(request.account_ids)
        )

    async def SetMemberRole(
        self, request: M.SetMemberRoleRequest, context: Any
    ) -> M.SetMemberRoleResponse:
        """See messaging.proto."""
        version = await self._m.set_member_role(
            caller(current_claims()), request.group_id, request.account_id, int(request.role)
        )
        return M.SetMemberRoleResponse(membership_version=version)

    async def LeaveGroup(self, request: M.LeaveGroupRequest, context: Any) -> M.LeaveGroupResponse:
        """See messaging.proto."""
        await self._m.leave_group(caller(current_claims()), request.group_id)
        return M.LeaveGroupResponse()

    async def ListMembers(
        self, request: M.ListMembersRequest, context: Any
    ) -> M.ListMembersResponse:
        """See messaging.proto."""
        members, token, total = await self._m.list_members(
            caller(current_claims()),
            request.group_id,
            request.page.page_size,
            request.page.page_token,
        )
        response = M.ListMembersResponse(members=members, total_count=total)
        response.page.next_page_token = token
        return response

    async def SendDirectMessage(
        self, request: M.SendDirectMessageRequest, context: Any
    ) -> M.SendDirectMessageResponse:
        """See messaging.proto."""
        return await self._m.send_direct(caller(current_claims()), request)

    async def SendGroupMessage(
        self, request: M.SendGroupMessageRequest, context: Any
    ) -> M.SendGroupMessageResponse:
        """See messaging.proto."""
        return await self._m.send_group(caller(current_claims()), request)

    async def Subscribe(
        self, request: M.SubscribeRequest, context: Any
    ) -> AsyncIterator[M.SubscribeResponse]:
        """See messaging.proto."""
        who = caller(current_claims())
        if not 0 <= request.max_unacknowledged <= MAX_UNACKED:
            raise InvalidArgument(f"max_unacknowledged must be 0 to {MAX_UNACKED}")
        async for item in self._hub.subscribe(who, request.max_unacknowledged):
            yield item

    async def AckMessages(
        self, request: M.AckMessagesRequest, context: Any
    ) -> M.AckMessagesResponse:
        """See messaging.proto."""
        count = await self._m.ack(caller(current_claims()), list(request.delivery_tokens))
        return M.AckMessagesResponse(acknowledged_count=count)
