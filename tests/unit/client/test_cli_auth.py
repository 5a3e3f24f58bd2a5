"""The auth commands of the CLI: parsing, prompts, output shapes (fake stub at the boundary)."""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from conclave_client import cli
from conclave_client.auth_client import AuthClient
from conclave_client.credentials import CredentialStore
from conclave_client.keys_client import KeysClient

from tests.unit.client.fakes import FakeAuthStub, as_stub, rpc_error
from tests.unit.client.fakes_keys import FakeKeysStub, as_keys_stub

PASSWORD = "correct horse battery staple"


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeAuthStub:
    stub = FakeAuthStub()
    home = tmp_path / "home"
    monkeypatch.setenv("CONCLAVE_HOME", str(home))

    def factory(args: argparse.Namespace) -> AuthClient:
        return AuthClient("fake:1", CredentialStore(home), stub=as_stub(stub))

    monkeypatch.setattr(cli, "make_auth_client", factory)
    keys = FakeKeysStub(stub)

    def keys_factory(args: argparse.Namespace, auth: AuthClient) -> KeysClient:
        return KeysClient("fake:2", auth, home=home, stub=as_keys_stub(keys))

    monkeypatch.setattr(cli, "make_keys_client", keys_factory)

    def no_prompt(prompt: str = "") -> str:
        raise AssertionError("prompted")

    monkeypatch.setattr("getpass.getpass", no_prompt)
    return stub


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    def go(*argv: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        with pytest.raises(SystemExit) as info:
            cli.main(list(argv))
        out, err = capsys.readouterr()
        assert isinstance(info.value.code, int)
        return info.value.code, out, err

    return go


def register_and_login(run: Run) -> dict[str, Any]:
    code, _, _ = run("register", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 0
    code, out, _ = run(
        "login", "alice", "--code", FakeAuthStub.TOTP, "--password-stdin", "--json",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert code == 0
    result = json.loads(out)
    assert isinstance(result, dict)
    return result


# -- parsing ---------------------------------------------------------------------------


def test_parse_login() -> None:
    args = cli.build_parser().parse_args(
        ["login", "alice", "--code", "123456", "--password-stdin", "--device-name", "work"]
    )
    assert (args.username, args.code, args.recovery_code) == ("alice", "123456", None)
    assert args.password_stdin and args.device_name == "work" and not args.json


@pytest.mark.parametrize(
    "argv",
    [
        ["login", "alice", "--code", "1", "--recovery-code", "2"],
        ["login"],
        ["register"],
        ["sessions", "revoke"],
        ["sessions", "revoke", "abc", "--others"],
        ["audit", "--limit", "0"],
        ["audit", "--limit", "x"],
    ],
)
def test_parse_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(argv)
    assert info.value.code == 2


def test_parse_sessions_and_json_anywhere() -> None:
    parser = cli.build_parser()
    listing = parser.parse_args(["--json", "sessions"])
    assert listing.handler is cli._cmd_sessions and listing.json
    revoke = parser.parse_args(["sessions", "revoke", "abc", "--json"])
    assert revoke.handler is cli._cmd_sessions_revoke
    assert (revoke.session_id, revoke.others, revoke.json) == ("abc", False, True)
    others = parser.parse_args(["sessions", "revoke", "--others"])
    assert others.others and others.session_id is None
    audit = parser.parse_args(["audit", "--limit", "5", "--kind", "LOGOUT"])
    assert (audit.limit, audit.kind) == (5, ["LOGOUT"])
    assert parser.parse_args(["logout", "--remove-device"]).remove_device


# -- register --------------------------------------------------------------------------


def test_register_json(fake: FakeAuthStub, run: Run) -> None:
    code, out, err = run("register", "Alice", "--password-stdin", "--json", stdin=PASSWORD + "\n")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert {"account_id", "username", "totp_secret", "otpauth_uri", "recovery_codes"} <= set(data)
    assert data["username"] == "alice" and len(data["recovery_codes"]) == 10
    assert "enrollment_token" not in data


def test_register_human(fake: FakeAuthStub, run: Run) -> None:
    code, out, _ = run("register", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 0
    assert "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP" in out
    assert "otpauth://totp/Conclave:alice" in out
    assert "STORE THESE NOW" in out
    assert all(f"AAAA-BBBB-CCCC-{i:04d}" in out for i in range(10))
    assert "\u2588" in out or "\u2580" in out or "\u2584" in out  # the QR code
    assert "conclave login alice --code CODE" in out


def test_register_prompts_twice_on_a_terminal(
    fake: FakeAuthStub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter([PASSWORD, PASSWORD])
    prompts: list[str] = []

    def prompt(text: str = "") -> str:
        prompts.append(text)
        return next(answers)

    monkeypatch.setattr("getpass.getpass", prompt)
    tty = io.StringIO()
    monkeypatch.setattr(tty, "isatty", lambda: True)
    monkeypatch.setattr(sys, "stdin", tty)
    with pytest.raises(SystemExit) as info:
        cli.main(["register", "alice", "--json"])
    assert info.value.code == 0
    assert prompts == ["Password: ", "Repeat password: "]
    assert "alice" in fake.accounts


def test_register_password_mismatch(
    fake: FakeAuthStub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter([PASSWORD, PASSWORD + "x"])
    monkeypatch.setattr("getpass.getpass", lambda text="": next(answers))
    tty = io.StringIO()
    monkeypatch.setattr(tty, "isatty", lambda: True)
    monkeypatch.setattr(sys, "stdin", tty)
    with pytest.raises(SystemExit) as info:
        cli.main(["register", "alice"])
    assert info.value.code == 1
    assert capsys.readouterr().err == "conclave: error: the passwords do not match\n"
    assert fake.calls == []


def test_no_terminal_no_prompt(fake: FakeAuthStub, run: Run) -> None:
    code, out, err = run("register", "alice")
    assert code == 1 and out == ""
    assert err == (
        "conclave: error: no terminal to prompt for the password (use --password-stdin)\n"
    )


def test_weak_password_is_one_line(fake: FakeAuthStub, run: Run) -> None:
    code, out, err = run("register", "alice", "--password-stdin", stdin="short\n")
    assert (code, out) == (1, "")
    assert err == "conclave: error: password too short: at least 12 characters\n"


# -- login / logout --------------------------------------------------------------------


def test_login_json_has_no_tokens(fake: FakeAuthStub, run: Run, tmp_path: Path) -> None:
    result = register_and_login(run)
    assert result["totp_enrollment_confirmed"] is True and result["new_device"] is True
    assert set(result) >= {"account_id", "username", "session_id", "device_id"}
    stored = json.loads((tmp_path / "home" / "credentials.json").read_text())
    text = json.dumps(result)
    assert stored["access_token"] not in text and stored["refresh_token"] not in text


def test_login_without_second_factor_fails_without_prompt(fake: FakeAuthStub, run: Run) -> None:
    code, _, err = run("login", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 1
    assert err == ("conclave: error: give the second factor: --code CODE or --recovery-code CODE\n")


def test_login_wrong_code(fake: FakeAuthStub, run: Run) -> None:
    run("register", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    code, out, err = run(
        "login", "alice", "--code", "000000", "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert (code, out) == (1, "")
    assert err == "conclave: error: wrong username, password or code\n"


def test_rate_limit_says_when_to_retry(fake: FakeAuthStub, run: Run) -> None:
    fake.fail["Login"] = rpc_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "too many attempts", "RATE_LIMITED", 42
    )
    code, _, err = run(
        "login", "alice", "--code", "123456", "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert code == 1
    assert err == "conclave: error: too many attempts (retry in 42 s)\n"


def test_login_human_and_logout(fake: FakeAuthStub, run: Run) -> None:
    run("register", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    code, out, _ = run(
        "login", "alice", "--code", FakeAuthStub.TOTP, "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert code == 0
    assert out.startswith("Logged in as alice (new device ")
    assert "Authenticator confirmed" in out
    code, out, _ = run("logout")
    assert (code, out) == (0, "Logged out.\n")
    code, out, err = run("sessions")
    assert code == 1
    assert err == "conclave: error: not logged in (run: conclave login USERNAME)\n"


def test_logout_json(fake: FakeAuthStub, run: Run) -> None:
    register_and_login(run)
    code, out, _ = run("logout", "--remove-device", "--json")
    assert code == 0
    assert json.loads(out) == {
        "logged_out": True,
        "device_removed": True,
        "session_already_ended": False,
    }


@pytest.mark.parametrize(
    "argv", [["sessions"], ["logout"], ["audit"], ["sessions", "revoke", "--others"]]
)
def test_commands_need_a_session(fake: FakeAuthStub, run: Run, argv: list[str]) -> None:
    code, out, err = run(*argv)
    assert (code, out) == (1, "")
    assert err == "conclave: error: not logged in (run: conclave login USERNAME)\n"


# -- sessions / audit ------------------------------------------------------------------


def test_sessions_json_shape(fake: FakeAuthStub, run: Run) -> None:
    login = register_and_login(run)
    code, out, _ = run("sessions", "--json")
    assert code == 0
    sessions = json.loads(out)
    assert isinstance(sessions, list) and len(sessions) == 1
    (only,) = sessions
    assert {"id", "device", "current", "last_seen"} <= set(only)
    assert only["id"] == login["session_id"] and only["current"] is True
    assert only["device"]["id"] == login["device_id"] and only["device"]["platform"] == "CLI"
    assert only["last_seen"].endswith("Z")


def test_sessions_table(fake: FakeAuthStub, run: Run) -> None:
    login = register_and_login(run)
    code, out, _ = run("sessions")
    assert code == 0
    assert re.search(r"\*\s+" + re.escape(login["session_id"]), out)


def test_sessions_revoke(fake: FakeAuthStub, run: Run) -> None:
    login = register_and_login(run)
    code, out, _ = run("sessions", "revoke", "--others", "--json")
    assert (code, json.loads(out)) == (0, {"revoked_count": 0})
    code, _, err = run("sessions", "revoke", "no-such-session")
    assert (code, err) == (1, "conclave: error: no such session\n")
    code, out, _ = run("sessions", "revoke", login["session_id"])
    assert code == 0 and "you are logged out" in out
    assert run("sessions")[0] == 1


def test_audit_json_shape(fake: FakeAuthStub, run: Run) -> None:
    register_and_login(run)
    code, out, _ = run("audit", "--json", "--limit", "5")
    assert code == 0
    events = json.loads(out)
    assert [e["kind"] for e in events] == ["LOGIN_SUCCEEDED"]
    assert set(events[0]) == {
        "id", "kind", "time", "session_id", "device_id", "device_name", "detail",
    }  # fmt: skip
    code, out, _ = run("audit")
    assert code == 0 and "LOGIN_SUCCEEDED" in out


def test_no_output_carries_a_token(fake: FakeAuthStub, run: Run, tmp_path: Path) -> None:
    register_and_login(run)
    stored = json.loads((tmp_path / "home" / "credentials.json").read_text())
    outputs = [run("sessions"), run("sessions", "--json"), run("audit"), run("logout")]
    for _, out, err in outputs:
        for secret in (stored["access_token"], stored["refresh_token"]):
            assert secret not in out and secret not in err


def test_auth_address_from_environment_or_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONCLAVE_AUTH_ADDR", "auth.example:6000")
    parser = cli.build_parser()
    with cli.make_auth_client(parser.parse_args(["sessions"])) as client:
        assert client.address == "auth.example:6000"
    with cli.make_auth_client(parser.parse_args(["sessions", "--host", "h"])) as client:
        assert client.address == "h:50051"


def test_qr_code_skipped_when_terminal_cannot_show_it(monkeypatch: pytest.MonkeyPatch) -> None:
    uri = "otpauth://totp/Conclave:alice?secret=JBSWY3DPEHPK3PXP&issuer=Conclave"
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BytesIO(), encoding="ascii"))
    assert cli._qr_text(uri) is None
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BytesIO(), encoding="utf-8"))
    text = cli._qr_text(uri)
    assert text is not None and text.count("\n") > 10


def test_ended_session_is_one_line(fake: FakeAuthStub, run: Run, tmp_path: Path) -> None:
    register_and_login(run)
    path = tmp_path / "home" / "credentials.json"
    data = json.loads(path.read_text())
    for session in fake.sessions.values():
        session.used_refresh_tokens.add(data["refresh_token"])
    data["access_token_expire_time"] = "2000-01-01T00:00:00Z"
    path.write_text(json.dumps(data))
    code, out, err = run("sessions")
    assert (code, out) == (1, "")
    assert err == (
        "conclave: error: session ended: its refresh token was used twice, so the server "
        "revoked it (run: conclave login alice)\n"
    )
    assert run("sessions")[2] == "conclave: error: not logged in (run: conclave login USERNAME)\n"
