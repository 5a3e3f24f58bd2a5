"""AuthClient against a fake stub: session storage, transparent refresh, error mapping."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from conclave.auth.v1 import auth_pb2
from conclave_client.auth_client import (
    AuthClient,
    ClientError,
    NotLoggedIn,
    SessionEnded,
    error_from_rpc,
)
from conclave_client.credentials import CredentialStore

from tests.unit.client.fakes import FakeAuthStub, as_stub, rpc_error

PASSWORD = "correct horse battery staple"


class Clock:
    def __init__(self) -> None:
        self.value = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.value


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake(clock: Clock) -> FakeAuthStub:
    stub = FakeAuthStub(now=clock)
    stub.Register(auth_pb2.RegisterRequest(username="alice", password=PASSWORD))
    stub.calls.clear()
    return stub


def make_client(tmp_path: Path, fake: FakeAuthStub, clock: Clock) -> AuthClient:
    return AuthClient("fake:1", CredentialStore(tmp_path / "home"), stub=as_stub(fake), now=clock)


def stored(tmp_path: Path) -> dict[str, object]:
    data = json.loads((tmp_path / "home" / "credentials.json").read_text())
    assert isinstance(data, dict)
    return data


def test_register_returns_secret_and_codes(tmp_path: Path, clock: Clock) -> None:
    fake = FakeAuthStub(now=clock)
    reg = make_client(tmp_path, fake, clock).register("Bob", PASSWORD)
    assert reg.username == "bob"
    assert len(reg.recovery_codes) == 10
    assert reg.otpauth_uri.startswith("otpauth://totp/")
    assert reg.enrollment_expire_time == clock.value + timedelta(hours=24)
    assert not (tmp_path / "home" / "credentials.json").exists()  # no session yet


def test_login_stores_session(tmp_path: Path, fake: FakeAuthStub, clock: Clock) -> None:
    client = make_client(tmp_path, fake, clock)
    result = client.login("alice", PASSWORD, totp_code=FakeAuthStub.TOTP, device_name="laptop")
    assert result.new_device and result.totp_enrollment_confirmed
    data = stored(tmp_path)
    session = fake.sessions[result.session_id]
    assert data["refresh_token"] == session.refresh_token
    assert data["access_token"] == session.access_token
    assert data["device_id"] == result.device_id
    assert data["username"] == "alice"
    assert data["access_token_expire_time"] == "2026-11-27T10:05:00Z"


def test_relogin_reuses_device(tmp_path: Path, fake: FakeAuthStub, clock: Clock) -> None:
    client = make_client(tmp_path, fake, clock)
    first = client.login("alice", PASSWORD, totp_code=FakeAuthStub.TOTP)
    assert client.logout() is True
    assert stored(tmp_path)["device_id"] == first.device_id
    second = client.login("ALICE", PASSWORD, totp_code=FakeAuthStub.TOTP)
    assert second.device_id == first.device_id and not second.new_device


def test_logout_remove_device_forgets_device(
    tmp_path: Path, fake: FakeAuthStub, clock: Clock
) -> None:
    client = make_client(tmp_path, fake, clock)
    first = client.login("alice", PASSWORD, totp_code=FakeAuthStub.TOTP)
    client.logout(remove_device=True)
    assert stored(tmp_path)["device_id"] == ""
    second = client.login("alice", PASSWORD, totp_code=FakeAuthStub.TOTP)
    assert second.new_device and second.device_id != first.device_id


def test_removed_device_is_forgotten(tmp_path: Path, fake: FakeAuthStub, clock: Clock) -> None:
    client = make_client(tmp_path, fake, clock)
    first = client.login("alice", PASSWORD, totp_code=FakeAuthStub.TOTP)
    client.logout()
    fake.accounts["alice"].devices.pop(first.device_id)
    with pytest.raises(ClientError, match="device was removed"):
        client.login("alice", PASSWORD, totp_code=FakeAuthStub.TOTP)
    assert client.login("alice", PASSWORD, totp_code=FakeAuthStub.TOTP).new_device


def test_other_user_logged_in_is_refused(tmp_path: Path, fake: FakeAuthStub, clock: Clock) -> None:
    client = make_client(tmp_path, fake, clock)
    client.login("alice", PASSWORD, totp_code=FakeAuthStub.TOTP)
    with pytest.raises(ClientError, match="logged in as alice"):
        client.login("bob", PASSWORD, totp_code=FakeAuthStub.TOTP)
    assert "Login" not in fake.calls[1:]


def test_exactly_one_second_factor(tmp_path: Path, fake: FakeAuthStub, clock: Clock) -> None:
    client = make_client(tmp_path, fake, clock)
    with pytest.raises(ClientError, match="exactly one"):
        client.login("alice", PASSWORD)
    with pytest.raises(ClientError, match="exactly one"):
        client.login("alice", PASSWORD, totp_code="1", recovery_code="2")
    assert fake.calls == []


def test_not_logged_in(tmp_path: Path, fake: FakeAuthStub, clock: Clock) -> None:
    client = make_client(tmp_path, fake, clock)
    with pytest.raises(NotLoggedIn, match=r"not logged in \(run: conclave login USERNAME\)"):
        client.list_sessions()
    with pytest.raises(NotLoggedIn):
        client.authorized_metadata()


def test_fresh_token_is_used_without_refresh(
    tmp_path: Path, fake: FakeAuthStub, clock: Clock
) -> None:
    client = make_client(tmp_path, fake, clock)
    client.login("alice", PASSWORD, totp_code=FakeAuthStub.TOTP)
    clock.value += timedelta(minutes=4)
    assert len(client.list_sessions()) == 1
    assert "RefreshSession" not in fake.calls


def test_refresh_before_expiry_persists_before_use(
    tmp_path: Path, fake: FakeAuthStub, clock: Clock
) -> None:
    client = make_client(tmp_path, fake, clock)
    login = client.login("alice", PASSWORD, totp_code=FakeAuthStub.TOTP)
    old_refresh = stored(tmp_path)["refresh_token"]
    clock.value += timedelta(minutes=4, seconds=45)  # within the refresh margin
    seen_on_disk: list[object] = []

    def check(name: str) -> None:
        if name == "ListSessions":
            seen_on_disk.append(stored(tmp_path)["refresh_token"])

    fake.on_call = check
    sessions = client.list_sessions()
    assert [s.current for s in sessions] == [True]
    session = fake.sessions[login.session_id]
    assert fake.calls.count("RefreshSession") == 1
    assert seen_on_disk == [session.refresh_token] and session.refresh_token != old_refresh
    assert stored(tmp_path)["access_token"] == session.access_token


def test_refresh_after_expiry(tmp_path: Path, fake: FakeAuthStub, clock: Clock) -> None:
    client = make_client(tmp_path, fake, clock)
    client.login("alice", PASSWORD, totp_code=FakeAuthStub.TOTP)
    clock.value += timedelta(hours=1)
    metadata = client.authorized_metadata()
    assert metadata == (("authorization", f"Bearer {stored(tmp_path)['access_token']}"),)
    assert fake.calls.count("RefreshSession") == 1


def test_unauthenticated_refreshes_once_and_retries(
    tmp_path: Path, fake: FakeAuthStub, clock: Clock
) -> None:
    client = make_client(tmp_path, fake, clock)
    client.login("alice", PASSWORD, totp_code=FakeAuthStub.TOTP)
    fake.expire_access_tokens()  # looks valid locally, refused by the server
    assert client.revoke_other_sessions() == 0
    assert fake.calls[-3:] == ["RevokeOtherSessions", "RefreshSession", "RevokeOtherSessions"]


def test_unauthenticated_twice_is_an_error(
    tmp_path: Path, fake: FakeAuthStub, clock: Clock
) -> None:
    client = make_client(tmp_path, fake, clock)
    client.login("alice", PASSWORD, totp_code=FakeAuthStub.TOTP)

    def always_refuse(*args: object, **kwargs: object) -> object:
        fake.calls.append("ListSessions")
        raise rpc_error(grpc.StatusCode.UNAUTHENTICATED, "token refused")

    fake.ListSessions = always_refuse  # type: ignore[method-assign,assignment]
    with pytest.raises(ClientError, match="token refused"):
        client.list_sessions()
    assert fake.calls.count("RefreshSession") == 1


def test_fresh_auth_required_is_not_retried(
    tmp_path: Path, fake: FakeAuthStub, clock: Clock
) -> None:
    client = make_client(tmp_path, fake, clock)
    client.login("alice", PASSWORD, totp_code=FakeAuthStub.TOTP)
    fake.fail["ListSessions"] = rpc_error(
        grpc.StatusCode.UNAUTHENTICATED, "fresh authentication required", "FRESH_AUTH_REQUIRED"
    )
    with pytest.raises(ClientError) as info:
        client.list_sessions()
    assert info.value.reason == "FRESH_AUTH_REQUIRED"
    assert "RefreshSession" not in fake.calls


def test_refresh_token_reuse_ends_session_locally(
    tmp_path: Path, fake: FakeAuthStub, clock: Clock
) -> None:
    client = make_client(tmp_path, fake, clock)
    login = client.login("alice", PASSWORD, totp_code=FakeAuthStub.TOTP)
    fake.sessions[login.session_id].used_refresh_tokens.add(str(stored(tmp_path)["refresh_token"]))
    clock.value += timedelta(minutes=10)
    with pytest.raises(SessionEnded, match="used twice") as info:
        client.list_sessions()
    assert info.value.reason == "REFRESH_TOKEN_REUSED"
    data = stored(tmp_path)
    assert data["refresh_token"] == "" and data["session_id"] == ""
    assert data["device_id"] == login.device_id
    with pytest.raises(NotLoggedIn):
        client.list_sessions()


def test_failed_refresh_keeps_tokens_when_unreachable(
    tmp_path: Path, fake: FakeAuthStub, clock: Clock
) -> None:
    client = make_client(tmp_path, fake, clock)
    client.login("alice", PASSWORD, totp_code=FakeAuthStub.TOTP)
    before = stored(tmp_path)
    clock.value += timedelta(minutes=10)
    fake.fail["RefreshSession"] = rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused")
    with pytest.raises(ClientError, match="unreachable at fake:1"):
        client.list_sessions()
    assert stored(tmp_path) == before


def test_another_process_refreshed_first(tmp_path: Path, fake: FakeAuthStub, clock: Clock) -> None:
    home = tmp_path / "home"
    one = make_client(tmp_path, fake, clock)
    one.login("alice", PASSWORD, totp_code=FakeAuthStub.TOTP)
    two = AuthClient("fake:1", CredentialStore(home), stub=as_stub(fake), now=clock)
    clock.value += timedelta(minutes=10)
    one.authorized_metadata()
    two.authorized_metadata()  # re-reads the rotated file: no second refresh
    assert fake.calls.count("RefreshSession") == 1


def test_logout_when_session_already_gone(tmp_path: Path, fake: FakeAuthStub, clock: Clock) -> None:
    client = make_client(tmp_path, fake, clock)
    login = client.login("alice", PASSWORD, totp_code=FakeAuthStub.TOTP)
    fake.sessions[login.session_id].revoked = True
    assert client.logout() is False
    assert stored(tmp_path)["session_id"] == ""


def test_logout_unreachable_keeps_session(tmp_path: Path, fake: FakeAuthStub, clock: Clock) -> None:
    client = make_client(tmp_path, fake, clock)
    client.login("alice", PASSWORD, totp_code=FakeAuthStub.TOTP)
    fake.fail["Logout"] = rpc_error(grpc.StatusCode.UNAVAILABLE, "down")
    with pytest.raises(ClientError):
        client.logout()
    assert stored(tmp_path)["session_id"] != ""


def test_revoke_own_session_logs_out(tmp_path: Path, fake: FakeAuthStub, clock: Clock) -> None:
    client = make_client(tmp_path, fake, clock)
    login = client.login("alice", PASSWORD, totp_code=FakeAuthStub.TOTP)
    assert client.revoke_session(login.session_id) is True
    with pytest.raises(NotLoggedIn):
        client.list_sessions()


def test_audit_pages_up_to_limit(tmp_path: Path, fake: FakeAuthStub, clock: Clock) -> None:
    client = make_client(tmp_path, fake, clock)
    for _ in range(3):
        client.login("alice", PASSWORD, totp_code=FakeAuthStub.TOTP)
    events = client.audit(limit=2)
    assert [e.kind for e in events] == ["LOGIN_SUCCEEDED"] * 2
    assert len(client.audit(limit=700)) == 3
    assert len(client.audit(limit=5, kinds=["login_succeeded"])) == 3
    assert client.audit(limit=5, kinds=["AUDIT_EVENT_KIND_LOGOUT"]) == []
    with pytest.raises(ClientError, match="unknown audit event kind"):
        client.audit(kinds=["NOPE"])


def test_error_mapping() -> None:
    err = error_from_rpc(
        rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many attempts", "RATE_LIMITED", 7),
        "x:1",
    )
    assert (err.code, err.reason, err.retry_after) == ("RESOURCE_EXHAUSTED", "RATE_LIMITED", 7)
    assert str(err) == "too many attempts (retry in 7 s)"
    weak = error_from_rpc(
        rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "password too short", "WEAK_PASSWORD"), "x:1"
    )
    assert str(weak) == "password too short" and weak.reason == "WEAK_PASSWORD"
    down = error_from_rpc(rpc_error(grpc.StatusCode.UNAVAILABLE, "connect failed"), "x:1")
    assert str(down) == "auth service unreachable at x:1 (check: conclave status)"
