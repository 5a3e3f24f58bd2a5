"""gRPC layer of the retention service: thin, translating requests to the domain and back.

RPCs not defined here answer ``UNIMPLEMENTED`` naming what is missing (see
:func:`conclave_kit.pending.add_service`); each arrives with its capability's issue.
"""

from __future__ import annotations

from typing import Any

from conclave.retention.v1 import retention_pb2 as R
from conclave_kit.auth import current_claims
from conclave_kit.errors import InvalidArgument, Unavailable

from conclave_retention.manager import RetentionManager

PENDING = "purge runs, GDPR export and account erasure (issue #7, not built yet)"


class RetentionServiceServicer:
    """Implements conclave.retention.v1.RetentionService (manager set once connected)."""

    def __init__(self) -> None:
        self.manager: RetentionManager | None = None

    @property
    def _m(self) -> RetentionManager:
        if self.manager is None:
            raise Unavailable("retention is starting")
        return self.manager

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
