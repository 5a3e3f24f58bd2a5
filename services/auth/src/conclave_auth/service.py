"""gRPC layer of the auth service: validates shapes, calls the manager, builds responses.

RPCs not defined here answer ``UNIMPLEMENTED`` naming what is missing (see
:func:`conclave_kit.pending.add_service`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import nats.errors
from conclave.auth.v1 import auth_pb2 as A
from conclave.keys.v1 import keys_pb2
from conclave_kit.auth import current_claims
from conclave_kit.errors import Unavailable
from google.protobuf.duration_pb2 import Duration
from nats.aio.client import Client as NatsClient

from conclave_auth.manager import AuthManager, DeviceRequest, IssuedSession

PENDING = "nothing: every AuthService RPC is built"
IDENTITY_SUBJECT = "conclave.internal.keys.identity"


def _source(context: Any) -> str:
    """The caller's address without the port (``ipv4:1.2.3.4:5678`` → ``1.2.3.4``).

    Behind a proxy this is the proxy: deployments put the per-source limits at the edge.
    """
    peer = str(context.peer() or "unknown")
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    return peer


def _tokens(issued: IssuedSession) -> A.SessionTokens:
    tokens = A.SessionTokens(
        access_token=issued.access_token,
        refresh_token=issued.refresh_token,
        session_id=issued.session_id,
        account_id=issued.account_id,
        device_id=issued.device_id,
    )
    tokens.access_token_expire_time.FromDatetime(issued.access_expires_at)
    tokens.refresh_token_expire_time.FromDatetime(issued.refresh_expires_at)
    tokens.session_expire_time.FromDatetime(issued.session_expires_at)
    return tokens


def _factor(request: Any) -> tuple[str | None, str | None]:
    which = request.WhichOneof("second_factor")
    return (
        request.totp_code if which == "totp_code" else None,
        request.recovery_code if which == "recovery_code" else None,
    )


class AuthServiceServicer:
    """Implements conclave.auth.v1.AuthService (the manager is set once connected)."""

    def __init__(self) -> None:
        self.manager: AuthManager | None = None
        self.nats: NatsClient | None = None

    async def _identity(self, account_id: str, device_id: str) -> tuple[bytes, bytes] | None:
        """Asks the key directory (NATS request/reply) for a device's identity key."""
        if self.nats is None:
            raise Unavailable("auth is starting")
        request = keys_pb2.LookupIdentityKeysRequest(account_id=account_id, device_id=device_id)
        try:
            msg = await self.nats.request(IDENTITY_SUBJECT, request.SerializeToString(), timeout=2)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            raise Unavailable("the key directory did not answer; retry shortly") from None
        reply = keys_pb2.LookupIdentityKeysResponse.FromString(msg.data)
        for device in reply.devices:
            if device.device_id == device_id:
                key = device.identity_key
                return bytes(key.signing_public_key), bytes(key.agreement_public_key)
        return None

    async def IssueSenderCertificate(
        self, request: A.IssueSenderCertificateRequest, context: Any
    ) -> A.IssueSenderCertificateResponse:
        """See auth.proto."""
        certificate, expires, key_id = await self._m.sender_certificate(
            current_claims(), self._identity
        )
        response = A.IssueSenderCertificateResponse(certificate=certificate, key_id=key_id)
        response.expire_time.FromDatetime(expires)
        return response

    @property
    def _m(self) -> AuthManager:
        if self.manager is None:
            raise Unavailable("auth is starting")
        return self.manager

    async def Register(self, request: A.RegisterRequest, context: Any) -> A.RegisterResponse:
        """See auth.proto."""
        return await self._m.register(request.username, request.password, _source(context))

    async def ConfirmTotpEnrollment(
        self, request: A.ConfirmTotpEnrollmentRequest, context: Any
    ) -> A.ConfirmTotpEnrollmentResponse:
        """See auth.proto."""
        issued = await self._m.confirm_enrollment(
            request.enrollment_token,
            request.totp_code,
            DeviceRequest(request.device.name, request.device.platform),
            _source(context),
        )
        return A.ConfirmTotpEnrollmentResponse(tokens=_tokens(issued))

    async def Login(self, request: A.LoginRequest, context: Any) -> A.LoginResponse:
        """See auth.proto."""
        totp, recovery = _factor(request)
        issued, new_device, confirmed, remaining = await self._m.login(
            username=request.username,
            password=request.password,
            totp_code=totp,
            recovery_code=recovery,
            device=DeviceRequest(request.device.name, request.device.platform),
            device_id=request.device_id,
            source=_source(context),
        )
        return A.LoginResponse(
            tokens=_tokens(issued),
            new_device=new_device,
            approval_state=issued.approval_state,  # type: ignore[arg-type]
            totp_enrollment_confirmed=confirmed,
            recovery_codes_remaining=remaining,
        )

    async def RefreshSession(
        self, request: A.RefreshSessionRequest, context: Any
    ) -> A.RefreshSessionResponse:
        """See auth.proto."""
        issued = await self._m.refresh(request.refresh_token, _source(context))
        return A.RefreshSessionResponse(
            tokens=_tokens(issued),
            approval_state=issued.approval_state,  # type: ignore[arg-type]
        )

    async def Reauthenticate(
        self, request: A.ReauthenticateRequest, context: Any
    ) -> A.ReauthenticateResponse:
        """See auth.proto."""
        totp, recovery = _factor(request)
        token, expires = await self._m.reauthenticate(
            current_claims(), request.password, totp, recovery
        )
        response = A.ReauthenticateResponse(access_token=token)
        response.access_token_expire_time.FromDatetime(expires)
        response.fresh_until_time.FromSeconds(
            int(datetime.now().timestamp() + self._m.fresh_auth_seconds)
        )
        return response

    async def Logout(self, request: A.LogoutRequest, context: Any) -> A.LogoutResponse:
        """See auth.proto."""
        await self._m.logout(current_claims(), request.remove_device)
        return A.LogoutResponse()

    async def GetAccount(self, request: A.GetAccountRequest, context: Any) -> A.GetAccountResponse:
        """See auth.proto."""
        return await self._m.get_account(current_claims())

    async def LookupAccounts(
        self, request: A.LookupAccountsRequest, context: Any
    ) -> A.LookupAccountsResponse:
        """See auth.proto."""
        refs = await self._m.lookup_accounts(
            current_claims(), list(request.usernames), list(request.account_ids)
        )
        return A.LookupAccountsResponse(accounts=refs)

    async def ListSessions(
        self, request: A.ListSessionsRequest, context: Any
    ) -> A.ListSessionsResponse:
        """See auth.proto."""
        return A.ListSessionsResponse(sessions=await self._m.list_sessions(current_claims()))

    async def RevokeSession(
        self, request: A.RevokeSessionRequest, context: Any
    ) -> A.RevokeSessionResponse:
        """See auth.proto."""
        await self._m.revoke_session(current_claims(), request.session_id, request.remove_device)
        return A.RevokeSessionResponse()

    async def RevokeOtherSessions(
        self, request: A.RevokeOtherSessionsRequest, context: Any
    ) -> A.RevokeOtherSessionsResponse:
        """See auth.proto."""
        count = await self._m.revoke_others(current_claims(), request.remove_devices)
        return A.RevokeOtherSessionsResponse(revoked_count=count)

    async def RenameDevice(
        self, request: A.RenameDeviceRequest, context: Any
    ) -> A.RenameDeviceResponse:
        """See auth.proto."""
        device = await self._m.rename_device(current_claims(), request.device_id, request.name)
        return A.RenameDeviceResponse(device=device)

    async def SetDeviceApprovalPolicy(
        self, request: A.SetDeviceApprovalPolicyRequest, context: Any
    ) -> A.SetDeviceApprovalPolicyResponse:
        """See auth.proto."""
        required = await self._m.set_approval_policy(current_claims(), request.required)
        return A.SetDeviceApprovalPolicyResponse(required=required)

    async def ListPendingDevices(
        self, request: A.ListPendingDevicesRequest, context: Any
    ) -> A.ListPendingDevicesResponse:
        """See auth.proto."""
        return A.ListPendingDevicesResponse(devices=await self._m.pending_devices(current_claims()))

    async def ApproveDevice(
        self, request: A.ApproveDeviceRequest, context: Any
    ) -> A.ApproveDeviceResponse:
        """See auth.proto."""
        device = await self._m.approve_device(current_claims(), request.device_id, request.approve)
        return A.ApproveDeviceResponse(device=device)

    async def ChangePassword(
        self, request: A.ChangePasswordRequest, context: Any
    ) -> A.ChangePasswordResponse:
        """See auth.proto."""
        count = await self._m.change_password(
            current_claims(), request.new_password, request.end_other_sessions
        )
        return A.ChangePasswordResponse(revoked_count=count)

    async def ChangeTotp(self, request: A.ChangeTotpRequest, context: Any) -> A.ChangeTotpResponse:
        """See auth.proto."""
        return await self._m.change_totp(current_claims())

    async def ConfirmTotpChange(
        self, request: A.ConfirmTotpChangeRequest, context: Any
    ) -> A.ConfirmTotpChangeResponse:
        """See auth.proto."""
        count = await self._m.confirm_totp_change(
            current_claims(), request.totp_code, request.end_other_sessions
        )
        return A.ConfirmTotpChangeResponse(revoked_count=count)

    async def RegenerateRecoveryCodes(
        self, request: A.RegenerateRecoveryCodesRequest, context: Any
    ) -> A.RegenerateRecoveryCodesResponse:
        """See auth.proto."""
        codes = await self._m.regenerate_recovery_codes(current_claims())
        return A.RegenerateRecoveryCodesResponse(recovery_codes=codes)

    async def ListAuditEvents(
        self, request: A.ListAuditEventsRequest, context: Any
    ) -> A.ListAuditEventsResponse:
        """See auth.proto."""
        events, next_token = await self._m.audit_page(
            current_claims(),
            [int(k) for k in request.kinds],
            request.page.page_size,
            request.page.page_token,
        )
        response = A.ListAuditEventsResponse(events=events)
        response.page.next_page_token = next_token
        return response

    async def GetTokenVerificationKeys(
        self, request: A.GetTokenVerificationKeysRequest, context: Any
    ) -> A.GetTokenVerificationKeysResponse:
        """See auth.proto."""
        return A.GetTokenVerificationKeysResponse(
            keys=self._m.verification_keys(), cache_ttl=Duration(seconds=300)
        )
