"""Authorization of every AuthService RPC: no token, revoked token, another user's data;
and revocation reaching another service within one second."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from conclave.auth.v1 import auth_pb2 as A
from conclave.keys.v1 import keys_pb2, keys_pb2_grpc
from conclave_kit.tokens import TokenSigner
from google.protobuf import message_factory

from tests.integration.auth.conftest import AuthHarness, bearer, other_service_spec, unique
from tests.support import start_service, trailers

pytestmark = pytest.mark.integration
AUTH = A.DESCRIPTOR.services_by_name["AuthService"]
PUBLIC = {
    "Register",
    "ConfirmTotpEnrollment",
    "Login",
    "RefreshSession",
    "GetTokenVerificationKeys",
}


async def _invoke(
    auth: AuthHarness, name: str, metadata: tuple[tuple[str, str], ...]
) -> grpc.StatusCode:
    method = AUTH.methods_by_name[name]
    request = message_factory.GetMessageClass(method.input_type)()
    call = getattr(auth.stub, name)
    try:
        await call(request, metadata=metadata)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def test_every_session_rpc_rejects_missing_and_revoked_tokens(auth: AuthHarness) -> None:
    """All non-public RPCs: UNAUTHENTICATED without a token and with a revoked one."""
    tokens = await auth.user(unique("olga"))
    await auth.stub.Logout(A.LogoutRequest(), metadata=bearer(tokens))
    for method in AUTH.methods:
        if method.name in PUBLIC:
            continue
        assert await _invoke(auth, method.name, ()) == grpc.StatusCode.UNAUTHENTICATED, method.name
        assert (
            await _invoke(auth, method.name, bearer(tokens)) == grpc.StatusCode.UNAUTHENTICATED
        ), method.name


async def test_other_users_sessions_and_devices_are_not_reachable(auth: AuthHarness) -> None:
    """Ids of another account's sessions and devices are NOT_FOUND, and nothing changes."""
    mine = await auth.user(unique("pam"))
    theirs = await auth.user(unique("quinn"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await auth.stub.RevokeSession(
            A.RevokeSessionRequest(session_id=theirs.session_id), metadata=bearer(mine)
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await auth.stub.RenameDevice(
            A.RenameDeviceRequest(device_id=theirs.device_id, name="pwned"), metadata=bearer(mine)
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await auth.stub.ListSessions(A.ListSessionsRequest(), metadata=bearer(theirs))
    assert [s.device.name for s in listed.sessions] == ["laptop"]
    audit = await auth.stub.ListAuditEvents(A.ListAuditEventsRequest(), metadata=bearer(mine))
    assert {e.session_id for e in audit.events} - {"", mine.session_id} == set()


async def test_fresh_rpcs_need_recent_authentication(auth: AuthHarness) -> None:
    """ChangePassword needs auth_time within 10 minutes; Reauthenticate renews it."""
    name = unique("rita")
    tokens = await auth.user(name)
    # The token a session carries an hour after login (refreshes keep the login's auth_time).
    signer = TokenSigner(auth.config.signing_key_id, auth.config.signing_key)
    refreshed = signer.mint(
        account_id=tokens.account_id,
        device_id=tokens.device_id,
        session_id=tokens.session_id,
        auth_time=int(time.time()) - 3600,
    )
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await auth.stub.ChangePassword(
            A.ChangePasswordRequest(new_password="another long passphrase 7"),
            metadata=bearer(refreshed),
        )
    assert stale.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert trailers(stale.value)["conclave-error-reason"] == "FRESH_AUTH_REQUIRED"
    auth.next_step()
    step_up = await auth.stub.Reauthenticate(
        A.ReauthenticateRequest(
            password="correct horse battery staple 42", totp_code=auth.code(auth.users[name])
        ),
        metadata=bearer(refreshed),
    )
    changed = await auth.stub.ChangePassword(
        A.ChangePasswordRequest(new_password="another long passphrase 7", end_other_sessions=True),
        metadata=bearer(step_up.access_token),
    )
    assert changed.revoked_count == 0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await auth.stub.Reauthenticate(
            A.ReauthenticateRequest(password="wrong wrong wrong 1", totp_code="123456"),
            metadata=bearer(step_up.access_token),
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_revocation_reaches_another_service_within_one_second(
    auth: AuthHarness, other_service: keys_pb2_grpc.KeyServiceAsyncStub
) -> None:
    """After RevokeSession, a different service rejects the session's token in < 1 s."""
    # Both sessions at real time (the other service's clock): the second device logs in
    # with a recovery code instead of waiting for the next TOTP step.
    name = unique("sam")
    registration = await auth.register(name)
    victim = (await auth.login(name, "stolen laptop")).tokens
    owner = (await auth.login(name, "phone", recovery_code=registration.recovery_codes[0])).tokens
    request = keys_pb2.GetPrekeyCountsRequest()
    await other_service.GetPrekeyCounts(request, metadata=bearer(victim))
    await auth.stub.RevokeSession(
        A.RevokeSessionRequest(session_id=victim.session_id), metadata=bearer(owner)
    )
    started = time.monotonic()
    while True:
        try:
            await other_service.GetPrekeyCounts(request, metadata=bearer(victim))
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            break
        assert time.monotonic() - started < 1.0, "revocation took longer than 1 s"
        await asyncio.sleep(0.01)
    assert time.monotonic() - started < 1.0
    await other_service.GetPrekeyCounts(request, metadata=bearer(owner))


async def test_new_device_waits_for_approval_when_policy_is_on(
    auth: AuthHarness, other_service: keys_pb2_grpc.KeyServiceAsyncStub
) -> None:
    """With approval required, a new device is held at auth until an approved one says yes;
    a rejected device is removed."""
    name = unique("uma")
    registration = await auth.register(name)
    first = (await auth.login(name, "laptop")).tokens
    await auth.stub.SetDeviceApprovalPolicy(
        A.SetDeviceApprovalPolicyRequest(required=True), metadata=bearer(first)
    )
    auth.next_step()
    reply = await auth.login(name, "new phone")
    assert reply.approval_state == A.DEVICE_APPROVAL_STATE_PENDING
    held = reply.tokens
    request = keys_pb2.GetPrekeyCountsRequest()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await other_service.GetPrekeyCounts(request, metadata=bearer(held))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert trailers(err.value)["conclave-error-reason"] == "DEVICE_APPROVAL_PENDING"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await auth.stub.ApproveDevice(
            A.ApproveDeviceRequest(device_id=held.device_id, approve=True), metadata=bearer(held)
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    pending = await auth.stub.ListPendingDevices(
        A.ListPendingDevicesRequest(), metadata=bearer(first)
    )
    assert [d.device_id for d in pending.devices] == [held.device_id]
    approved = await auth.stub.ApproveDevice(
        A.ApproveDeviceRequest(device_id=held.device_id, approve=True), metadata=bearer(first)
    )
    assert approved.device.approval_state == A.DEVICE_APPROVAL_STATE_APPROVED
    refreshed = await auth.stub.RefreshSession(
        A.RefreshSessionRequest(refresh_token=held.refresh_token)
    )
    assert refreshed.approval_state == A.DEVICE_APPROVAL_STATE_APPROVED
    await other_service.GetPrekeyCounts(request, metadata=bearer(refreshed.tokens))

    # A recovery-code login is account recovery: not held. A rejected device is removed.
    rescue = await auth.login(name, "rescue", recovery_code=registration.recovery_codes[1])
    assert rescue.approval_state == A.DEVICE_APPROVAL_STATE_APPROVED
    auth.next_step()
    intruder = (await auth.login(name, "unknown tablet")).tokens
    rejected = await auth.stub.ApproveDevice(
        A.ApproveDeviceRequest(device_id=intruder.device_id, approve=False), metadata=bearer(first)
    )
    assert not rejected.HasField("device")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await auth.stub.ListSessions(A.ListSessionsRequest(), metadata=bearer(intruder))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_services_fetch_token_keys_from_auth(
    auth: AuthHarness, service_env: dict[str, str]
) -> None:
    """A service configured with CONCLAVE_TOKEN_KEYS_FROM trusts auth's published keys."""
    env = {k: v for k, v in service_env.items() if k != "CONCLAVE_TOKEN_VERIFY_KEYS"}
    env["CONCLAVE_TOKEN_KEYS_FROM"] = f"127.0.0.1:{auth.runtime.grpc_port}"
    other = await start_service(other_service_spec("fetcher"), env)
    try:
        assert other.verifier.key_ids == {auth.config.signing_key_id}
        tokens = await auth.user(unique("tess"))
        forged = TokenSigner.generate(auth.config.signing_key_id).mint(
            account_id=tokens.account_id, device_id=tokens.device_id, session_id=tokens.session_id
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{other.grpc_port}") as channel:
            stub = keys_pb2_grpc.KeyServiceStub(channel)
            await stub.GetPrekeyCounts(keys_pb2.GetPrekeyCountsRequest(), metadata=bearer(tokens))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetPrekeyCounts(
                    keys_pb2.GetPrekeyCountsRequest(), metadata=bearer(forged)
                )
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await other.stop()
