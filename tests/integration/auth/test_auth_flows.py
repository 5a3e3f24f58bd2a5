"""Auth service behaviour a user notices: 2FA is mandatory, codes and tokens work once."""

from __future__ import annotations

import asyncio
import json
import re
import uuid

import grpc
import pytest
from conclave.auth.v1 import auth_pb2 as A
from conclave.common.v1 import account_data_pb2 as D
from conclave.common.v1.account_data_pb2_grpc import AccountDataServiceStub
from conclave.common.v1.types_pb2 import PageRequest
from conclave_kit.tokens import TokenSigner

from tests.integration.auth.conftest import PASSWORD, AuthHarness, bearer, unique
from tests.support import trailers

pytestmark = pytest.mark.integration


async def _code(err: pytest.ExceptionInfo[grpc.aio.AioRpcError]) -> grpc.StatusCode:
    return err.value.code()


async def test_register_then_first_login_confirms_totp(auth: AuthHarness) -> None:
    """Register gives secret, URI and 10 recovery codes; the first TOTP login confirms."""
    name = unique("alice")
    reg = await auth.register(name.upper())
    assert reg.username == name
    assert reg.otpauth_uri.startswith("otpauth://totp/Conclave%3A")
    assert len(reg.recovery_codes) == 10
    reply = await auth.login(name)
    assert reply.totp_enrollment_confirmed and reply.new_device
    assert reply.recovery_codes_remaining == 10
    sessions = await auth.stub.ListSessions(A.ListSessionsRequest(), metadata=bearer(reply.tokens))
    assert [s.current for s in sessions.sessions] == [True]
    auth.next_step()
    again = await auth.login(name, device_id=reply.tokens.device_id)
    assert not again.totp_enrollment_confirmed and not again.new_device


async def test_confirm_enrollment_with_token(auth: AuthHarness) -> None:
    """ConfirmTotpEnrollment opens the first session; the token works only once."""
    reg = await auth.register(unique("bob"))
    request = A.ConfirmTotpEnrollmentRequest(
        enrollment_token=reg.enrollment_token,
        totp_code=auth.code(reg.totp_secret),
        device=A.DeviceInfo(name="phone"),
    )
    reply = await auth.stub.ConfirmTotpEnrollment(request)
    assert reply.tokens.access_token
    auth.next_step()
    request.totp_code = auth.code(reg.totp_secret)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await auth.stub.ConfirmTotpEnrollment(request)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_no_session_without_confirmed_totp(auth: AuthHarness) -> None:
    """Wrong codes and recovery codes cannot open the first session."""
    name = unique("carol")
    reg = await auth.register(name)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await auth.login(name, recovery_code=reg.recovery_codes[0])
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    wrong = f"{(int(auth.code(reg.totp_secret)) + 1) % 1_000_000:06d}"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await auth.login(name, totp_code=wrong)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    row = await auth.runtime.resources.pool.fetchrow(
        "SELECT totp_confirmed_at, (SELECT count(*) FROM sessions s "
        "WHERE s.account_id = a.account_id) AS n FROM accounts a WHERE username = $1",
        name,
    )
    assert row is not None and row["totp_confirmed_at"] is None and row["n"] == 0


async def test_one_code_fifty_parallel_submissions_one_success(auth: AuthHarness) -> None:
    """50 parallel logins with the same valid code: exactly one session is opened."""
    name = unique("dave")
    await auth.register(name)
    code = auth.code(auth.users[name])
    results = await asyncio.gather(
        *(auth.login(name, totp_code=code) for _ in range(50)), return_exceptions=True
    )
    ok = [r for r in results if isinstance(r, A.LoginResponse)]
    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ok) == 1
    assert len(errors) == 49
    assert {e.code() for e in errors} <= {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
    audit = await auth.stub.ListAuditEvents(
        A.ListAuditEventsRequest(kinds=[A.AUDIT_EVENT_KIND_TOTP_REPLAYED]),
        metadata=bearer(ok[0].tokens),
    )
    assert len(audit.events) >= 1  # replays are audited


async def test_recovery_code_works_once(auth: AuthHarness) -> None:
    """After TOTP is confirmed a recovery code logs in once and is then spent."""
    name = unique("erin")
    reg = await auth.register(name)
    await auth.login(name)
    reply = await auth.login(name, device="spare", recovery_code=reg.recovery_codes[3].lower())
    assert reply.recovery_codes_remaining == 9
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await auth.login(name, device="spare", recovery_code=reg.recovery_codes[3])
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_refresh_rotates_and_reuse_revokes_family(auth: AuthHarness) -> None:
    """A used refresh token presented again ends the session and all its tokens."""
    tokens = await auth.user(unique("frank"))
    second = (
        await auth.stub.RefreshSession(A.RefreshSessionRequest(refresh_token=tokens.refresh_token))
    ).tokens
    assert second.refresh_token != tokens.refresh_token
    assert second.session_id == tokens.session_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await auth.stub.RefreshSession(A.RefreshSessionRequest(refresh_token=tokens.refresh_token))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert trailers(err.value)["conclave-error-reason"] == "REFRESH_TOKEN_REUSED"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await auth.stub.RefreshSession(A.RefreshSessionRequest(refresh_token=second.refresh_token))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await auth.stub.ListSessions(A.ListSessionsRequest(), metadata=bearer(second))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_idle_timeout_and_absolute_lifetime(auth: AuthHarness) -> None:
    """Enterprise profile: 30 min idle ends a session; 12 h absolute ends even a busy one."""
    idle = await auth.user(unique("gina"))
    auth.clock.advance(31 * 60)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await auth.stub.RefreshSession(A.RefreshSessionRequest(refresh_token=idle.refresh_token))
    assert trailers(err.value)["conclave-error-reason"] == "SESSION_EXPIRED"

    busy = await auth.user(unique("hank"))
    token = busy.refresh_token
    for _ in range(25):  # refresh every 29 minutes: never idle, but 12 h passes
        auth.clock.advance(29 * 60)
        try:
            reply = await auth.stub.RefreshSession(A.RefreshSessionRequest(refresh_token=token))
        except grpc.aio.AioRpcError as failure:
            assert trailers(failure)["conclave-error-reason"] == "SESSION_EXPIRED"
            break
        token = reply.tokens.refresh_token
        assert reply.tokens.access_token_expire_time.ToDatetime() <= (
            reply.tokens.session_expire_time.ToDatetime()
        )
    else:
        pytest.fail("session outlived its absolute lifetime")


async def test_totp_attempts_rate_limited(auth: AuthHarness) -> None:
    """After five wrong codes the sixth attempt is RESOURCE_EXHAUSTED with retry-after."""
    name = unique("ivan")
    await auth.register(name)
    await auth.login(name)
    codes: list[grpc.aio.AioRpcError] = []
    for _ in range(6):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await auth.login(name, totp_code="000000" if not codes else f"{len(codes):06d}")
        codes.append(err.value)
    assert {c.code() for c in codes[:4]} == {grpc.StatusCode.UNAUTHENTICATED}
    assert codes[-1].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert 1 <= int(trailers(codes[-1])["retry-after"]) <= 6


async def test_password_hash_is_argon2id_with_owasp_parameters(auth: AuthHarness) -> None:
    """Stored hashes are Argon2id PHC strings with m >= 19 MiB, t >= 2 and a salt."""
    name = unique("judy")
    await auth.register(name)
    stored = await auth.runtime.resources.pool.fetchval(
        "SELECT password_hash FROM accounts WHERE username = $1", name
    )
    match = re.fullmatch(r"\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$[^$]{22}\$[^$]{43}", stored)
    assert match is not None
    assert int(match.group(1)) >= 19456 and int(match.group(2)) >= 2
    assert PASSWORD not in stored


async def test_usernames_collide_after_normalisation(auth: AuthHarness) -> None:
    """A fullwidth or upper-case look-alike of a taken name is ALREADY_EXISTS."""
    name = unique("kate")
    await auth.register(name)
    fullwidth = "".join(chr(ord(c) + 0xFEE0) if c.isalnum() else c for c in name.upper())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await auth.register(fullwidth)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_weak_password_has_reason(auth: AuthHarness) -> None:
    """A common password is INVALID_ARGUMENT with reason WEAK_PASSWORD."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await auth.stub.Register(A.RegisterRequest(username=unique("leo"), password="password123!"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailers(err.value)["conclave-error-reason"] == "WEAK_PASSWORD"


async def test_sessions_audit_and_revocation(auth: AuthHarness) -> None:
    """Two devices: list, rename, revoke others; the audit log tells the story."""
    name = unique("mia")
    laptop = await auth.user(name, "laptop")
    auth.next_step()
    phone = (await auth.login(name, "phone")).tokens
    listed = await auth.stub.ListSessions(A.ListSessionsRequest(), metadata=bearer(laptop))
    assert sorted(s.device.name for s in listed.sessions) == ["laptop", "phone"]
    renamed = await auth.stub.RenameDevice(
        A.RenameDeviceRequest(device_id=phone.device_id, name="work phone"), metadata=bearer(laptop)
    )
    assert renamed.device.name == "work phone"
    revoked = await auth.stub.RevokeOtherSessions(
        A.RevokeOtherSessionsRequest(), metadata=bearer(laptop)
    )
    assert revoked.revoked_count == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await auth.stub.ListSessions(A.ListSessionsRequest(), metadata=bearer(phone))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    audit = await auth.stub.ListAuditEvents(
        A.ListAuditEventsRequest(page=PageRequest(page_size=3)), metadata=bearer(laptop)
    )
    assert len(audit.events) == 3 and audit.page.next_page_token
    rest = await auth.stub.ListAuditEvents(
        A.ListAuditEventsRequest(
            page=PageRequest(page_size=100, page_token=audit.page.next_page_token)
        ),
        metadata=bearer(laptop),
    )
    kinds = [e.kind for e in [*audit.events, *rest.events]]
    for expected in (
        A.AUDIT_EVENT_KIND_REGISTERED,
        A.AUDIT_EVENT_KIND_LOGIN_SUCCEEDED,
        A.AUDIT_EVENT_KIND_NEW_DEVICE,
        A.AUDIT_EVENT_KIND_DEVICE_RENAMED,
        A.AUDIT_EVENT_KIND_SESSION_REVOKED,
    ):
        assert expected in kinds


async def test_logs_never_contain_secrets(auth: AuthHarness) -> None:
    """A full flow leaves no password, TOTP secret, code or token in the logs."""
    name = unique("nina")
    reg = await auth.register(name)
    code = auth.code(reg.totp_secret)
    reply = await auth.login(name, totp_code=code)
    await auth.stub.RefreshSession(
        A.RefreshSessionRequest(refresh_token=reply.tokens.refresh_token)
    )
    text = auth.logs.getvalue()
    assert text  # the RPCs were logged
    for secret in (
        PASSWORD,
        reg.totp_secret,
        reg.enrollment_token,
        code,
        reply.tokens.access_token,
        reply.tokens.refresh_token,
        *reg.recovery_codes,
    ):
        assert secret not in text
    for line in text.splitlines():
        json.loads(line)


async def test_export_holds_the_account_but_no_secrets(auth: AuthHarness) -> None:
    """ExportAccountData streams JSON with account, devices, sessions and audit log, and no
    password, TOTP secret, code or token."""
    name = unique("vera")
    reg = await auth.register(name)
    tokens = (await auth.login(name)).tokens
    chunks = [
        c.json_chunk
        async for c in AccountDataServiceStub(auth.channel).ExportAccountData(
            D.ExportAccountDataRequest(), metadata=bearer(tokens)
        )
    ]
    document = json.loads(b"".join(chunks))
    assert document["account"]["username"] == name
    assert [d["device_id"] for d in document["devices"]] == [tokens.device_id]
    assert any(e["kind"] == "AUDIT_EVENT_KIND_LOGIN_SUCCEEDED" for e in document["audit_log"])
    text = b"".join(chunks).decode()
    for secret in (PASSWORD, reg.totp_secret, tokens.refresh_token, *reg.recovery_codes):
        assert secret not in text


async def test_purge_ends_timed_out_sessions_and_drops_dead_data(auth: AuthHarness) -> None:
    """An operator purge ends idle sessions, deletes them once their tokens expired, and
    frees never-confirmed registrations."""
    idle = await auth.user(unique("walt"))
    unconfirmed = unique("xena")
    await auth.register(unconfirmed)
    auth.clock.advance(25 * 3600)  # past the enterprise idle timeout and the 24 h enrollment
    signer = TokenSigner(auth.config.signing_key_id, auth.config.signing_key)
    account, device, session = (str(uuid.uuid4()) for _ in range(3))
    now = int(auth.clock().timestamp())
    operator = signer.mint(
        account_id=account, device_id=device, session_id=session, roles=("operator",), now=now
    )
    user = signer.mint(account_id=account, device_id=device, session_id=session, now=now)
    stub = AccountDataServiceStub(auth.channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PurgeExpired(D.PurgeExpiredRequest(), metadata=bearer(user))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    reply = await stub.PurgeExpired(D.PurgeExpiredRequest(), metadata=bearer(operator))
    counts = {c.kind: c.items for c in reply.counts}
    assert counts[D.PURGE_KIND_SESSIONS] >= 1
    assert counts[D.PURGE_KIND_UNCONFIRMED_ACCOUNTS] >= 1
    pool = auth.runtime.resources.pool
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM sessions WHERE session_id = $1", uuid.UUID(idle.session_id)
        )
        == 0
    )
    assert (
        await pool.fetchval("SELECT count(*) FROM accounts WHERE username = $1", unconfirmed) == 0
    )
