"""gRPC layer of the retention service: thin, translating requests to the domain and back.

Every RPC of the contract is implemented; :data:`PENDING` is what
:func:`conclave_kit.pending.add_service` would name for one that is not.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from conclave.retention.v1 import retention_pb2 as R
from conclave.retention.v1 import retention_pb2_grpc
from conclave_kit.auth import current_claims
from conclave_kit.errors import InvalidArgument, Unavailable

from conclave_retention.erasure import ErasureManager
from conclave_retention.manager import RetentionManager, caller_account
from conclave_retention.operations import Operations, budget
from conclave_retention.peers import bearer_metadata

PENDING = "nothing (every RetentionService RPC is built)"


class RetentionServiceServicer(retention_pb2_grpc.RetentionServiceServicer):
    """Implements conclave.retention.v1.RetentionService (managers set once connected)."""

    def __init__(self) -> None:
        self.manager: RetentionManager | None = None
        self.operations: Operations | None = None
        self.erasure: ErasureManager | None = None

    @property
    def _m(self) -> RetentionManager:
        if self.manager is None:
            raise Unavailable("retention is starting")
        return self.manager

    @property
    def _ops(self) -> Operations:
        if self.operations is None:
            raise Unavailable("retention is starting")
        return self.operations

    @property
    def _erasure(self) -> ErasureManager:
        if self.erasure is None:
            raise Unavailable("retention is starting")
        return self.erasure

    async def GetDeploymentPolicy(
        self, request: R.GetDeploymentPolicyRequest, context: Any
    ) -> R.GetDeploymentPolicyResponse:
        """See retention.proto."""
        current_claims()
        return self._m.deployment_policy()

    async def GetEffectivePolicy(
        self, request: R.GetEffectivePolicyRequest, context: Any
    ) -> R.GetEffectivePolicyResponse:
        """See retention.proto."""
        ref = request.conversation if request.HasField("conversation") else None
        effective = await self._m.effective(current_claims(), ref)
        return R.GetEffectivePolicyResponse(effective=effective)

    async def SetAccountPolicy(
        self, request: R.SetAccountPolicyRequest, context: Any
    ) -> R.SetAccountPolicyResponse:
        """See retention.proto."""
        effective = await self._m.set_account(current_claims(), request.policy)
        return R.SetAccountPolicyResponse(effective=effective)

    async def SetConversationPolicy(
        self, request: R.SetConversationPolicyRequest, context: Any
    ) -> R.SetConversationPolicyResponse:
        """See retention.proto."""
        if not request.HasField("conversation"):
            raise InvalidArgument("conversation is required", reason="NO_CONVERSATION")
        effective = await self._m.set_conversation(
            current_claims(), request.conversation, request.policy
        )
        return R.SetConversationPolicyResponse(effective=effective)

    async def RunPurge(self, request: R.RunPurgeRequest, context: Any) -> R.RunPurgeResponse:
        """See retention.proto (operator only, enforced by the auth mode)."""
        current_claims()
        return await self._ops.run_purge(
            [int(k) for k in request.kinds], bearer_metadata(context), budget(context)
        )

    async def ExportMyData(
        self, request: R.ExportMyDataRequest, context: Any
    ) -> AsyncIterator[R.ExportMyDataResponse]:
        """See retention.proto: all sections are collected before the first chunk."""
        claims = current_claims()
        caller_account(claims)
        chunks = await self._ops.export(claims, bearer_metadata(context), budget(context))
        for chunk in chunks:
            yield R.ExportMyDataResponse(json_chunk=chunk)

    async def DeleteAccount(
        self, request: R.DeleteAccountRequest, context: Any
    ) -> R.DeleteAccountResponse:
        """See retention.proto."""
        claims = current_claims()
        caller_account(claims)
        return await self._erasure.delete_account(claims, bearer_metadata(context), request)

    async def GetErasureStatus(
        self, request: R.GetErasureStatusRequest, context: Any
    ) -> R.GetErasureStatusResponse:
        """See retention.proto (no token: the erasure id is the credential)."""
        return await self._erasure.status(request.erasure_id)
