"""The ``conclave`` auth commands as a user runs them, against the real stack.

Each command is a separate process (``python -c "from conclave_client.cli import main;
main()"``) with its own ``CONCLAVE_HOME`` and ``CONCLAVE_AUTH_ADDR`` pointing at the stack.
TOTP codes come from the secret that ``register --json`` prints, as an authenticator app
would compute them.
"""

from __future__ import annotations

import json
import secrets
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pyotp
import pytest
from conclave.auth.v1 import auth_pb2, auth_pb2_grpc

from tests.integration.stack.conftest import RunningStack

pytestmark = pytest.mark.integration

NOT_LOGGED_IN = "conclave: error: not logged in (run: conclave login USERNAME)\n"


@pytest.fixture(scope="module")
def auth_stack(stack: RunningStack) -> RunningStack:
    """The stack, once its auth server implements Register (skips the module before)."""
    with grpc.insecure_channel(stack.grpc["auth"]) as channel:
        try:
            auth_pb2_grpc.AuthServiceStub(channel).Register(
                auth_pb2.RegisterRequest(username="", password=""), timeout=10
            )
        except grpc.RpcError as err:
            if isinstance(err, grpc.Call) and err.code() == grpc.StatusCode.UNIMPLEMENTED:
                pytest.skip("auth server not implemented yet (Register answers UNIMPLEMENTED)")
    return stack


class User:
    """One person at one terminal: a username, a password and a private CONCLAVE_HOME."""

    def __init__(self, stack: RunningStack, home: Path) -> None:
        self.stack = stack
        self.home = home
        self.username = f"cli_{secrets.token_hex(6)}"
        self.password = f"plum-{secrets.token_urlsafe(12)}-orbit"
        self.totp: pyotp.TOTP | None = None

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = self.stack.client_env()
        env["CONCLAVE_HOME"] = str(self.home)
        env["PYTHONIOENCODING"] = "utf-8"
        env["COLUMNS"] = "160"
        return subprocess.run(
            [sys.executable, "-c", "from conclave_client.cli import main; main()", *args],
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    def ok(self, *args: str, stdin: str | None = None) -> str:
        done = self.run(*args, stdin=stdin)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        assert done.stderr == "", done.stderr
        return done.stdout

    def json(self, *args: str, stdin: str | None = None) -> Any:
        return json.loads(self.ok(*args, "--json", stdin=stdin))

    def register(self) -> dict[str, Any]:
        reply = self.json("register", self.username, "--password-stdin", stdin=self.password + "\n")
        assert isinstance(reply, dict)
        self.totp = pyotp.TOTP(reply["totp_secret"])
        return reply

    def login(self, *extra: str) -> dict[str, Any]:
        assert self.totp is not None
        reply = self.json(
            "login", self.username, "--code", self.totp.now(), "--password-stdin", *extra,
            stdin=self.password + "\n",
        )  # fmt: skip
        assert isinstance(reply, dict)
        return reply

    def credentials(self) -> dict[str, Any]:
        data = json.loads((self.home / "credentials.json").read_text())
        assert isinstance(data, dict)
        return data

    def write_credentials(self, data: dict[str, Any]) -> None:
        path = self.home / "credentials.json"
        path.write_text(json.dumps(data))
        path.chmod(0o600)


def wrong_code(totp: pyotp.TOTP) -> str:
    """A 6-digit code valid in none of the accepted steps (-1, 0, +1)."""
    now = time.time()
    valid = {totp.at(now + drift) for drift in (-60, -30, 0, 30, 60)}
    for candidate in ("000000", "111111", "222222", "333333", "444444", "555555"):
        if candidate not in valid:
            return candidate
    raise AssertionError("unreachable")


def test_register_login_sessions_audit_logout(auth_stack: RunningStack, tmp_path: Path) -> None:
    alice = User(auth_stack, tmp_path / "alice")
    reg = alice.register()
    assert {"account_id", "username", "totp_secret", "otpauth_uri", "recovery_codes"} <= set(reg)
    assert reg["username"] == alice.username
    assert reg["otpauth_uri"].startswith("otpauth://totp/")
    assert len(reg["recovery_codes"]) == 10
    assert not (alice.home / "credentials.json").exists()  # no session before TOTP

    # A wrong code: exit 1, one line, nothing stored.
    assert alice.totp is not None
    bad = alice.run(
        "login", alice.username, "--code", wrong_code(alice.totp), "--password-stdin",
        stdin=alice.password + "\n",
    )  # fmt: skip
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("conclave: error: ") and bad.stderr.count("\n") == 1
    assert alice.run("sessions").stderr == NOT_LOGGED_IN

    # The first login with a valid code confirms enrollment and opens a session.
    login = alice.login("--device-name", "alice laptop")
    assert login["totp_enrollment_confirmed"] is True and login["new_device"] is True
    assert login["account_id"] == reg["account_id"]
    assert stat.S_IMODE((alice.home / "credentials.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(alice.home.stat().st_mode) == 0o700

    sessions = alice.json("sessions")
    assert len(sessions) == 1
    (mine,) = sessions
    assert {"id", "device", "current", "last_seen"} <= set(mine)
    assert mine["id"] == login["session_id"] and mine["current"] is True
    assert mine["device"]["name"] == "alice laptop" and mine["device"]["platform"] == "CLI"
    assert login["session_id"] in alice.ok("sessions")

    kinds = [event["kind"] for event in alice.json("audit", "--limit", "50")]
    assert "LOGIN_SUCCEEDED" in kinds
    assert "LOGIN_SUCCEEDED" in alice.ok("audit")

    # Transparent refresh (1): the stored access token has expired.
    before = alice.credentials()
    expired = dict(before, access_token_expire_time="2000-01-01T00:00:00Z")
    alice.write_credentials(expired)
    assert [s["id"] for s in alice.json("sessions")] == [login["session_id"]]
    after = alice.credentials()
    assert after["session_id"] == before["session_id"]
    assert after["refresh_token"] != before["refresh_token"]
    assert after["access_token"] != before["access_token"]
    assert after["access_token_expire_time"] > "2001"

    # Transparent refresh (2): the server refuses a token that looks valid locally.
    alice.write_credentials(dict(after, access_token="not-a-token"))
    assert [s["current"] for s in alice.json("sessions")] == [True]
    assert alice.credentials()["refresh_token"] != after["refresh_token"]

    # Nothing secret leaks into normal output.
    stored = alice.credentials()
    for out in (alice.ok("sessions"), alice.ok("audit"), alice.ok("sessions", "--json")):
        assert stored["access_token"] not in out and stored["refresh_token"] not in out

    assert alice.ok("logout") == "Logged out.\n"
    gone = alice.run("sessions")
    assert (gone.returncode, gone.stdout, gone.stderr) == (1, "", NOT_LOGGED_IN)
    assert alice.credentials()["device_id"] == login["device_id"]  # kept for the next login

    # Logging in again (here with a recovery code) keeps the device.
    again = alice.json(
        "login", alice.username, "--recovery-code", reg["recovery_codes"][0], "--password-stdin",
        stdin=alice.password + "\n",
    )  # fmt: skip
    assert again["device_id"] == login["device_id"] and again["new_device"] is False
    assert again["recovery_codes_remaining"] == 9
    assert alice.json("logout", "--remove-device")["device_removed"] is True
    assert alice.credentials()["device_id"] == ""
    assert alice.run("audit").stderr == NOT_LOGGED_IN


def test_reused_refresh_token_ends_the_session(auth_stack: RunningStack, tmp_path: Path) -> None:
    bob = User(auth_stack, tmp_path / "bob")
    # The human form of register: secret, URI, QR code, recovery codes, "store these now".
    out = bob.ok("register", bob.username, "--password-stdin", stdin=bob.password + "\n")
    secret = next(line.split(":", 1)[1].strip() for line in out.splitlines() if "secret:" in line)
    assert "otpauth://totp/" in out and "STORE THESE NOW" in out
    assert any(ch in out for ch in "\u2580\u2584\u2588")
    bob.totp = pyotp.TOTP(secret)
    bob.login()
    first = bob.credentials()
    bob.write_credentials(dict(first, access_token_expire_time="2000-01-01T00:00:00Z"))
    bob.json("sessions")  # refreshes: first["refresh_token"] is now used
    # A stolen copy of the old file replays the used refresh token: the server revokes the
    # session, and the CLI says so and forgets it.
    bob.write_credentials(dict(first, access_token_expire_time="2000-01-01T00:00:00Z"))
    replay = bob.run("sessions")
    assert replay.returncode == 1 and replay.stdout == ""
    assert replay.stderr.startswith("conclave: error: session ended")
    assert replay.stderr.count("\n") == 1
    assert bob.run("sessions").stderr == NOT_LOGGED_IN
