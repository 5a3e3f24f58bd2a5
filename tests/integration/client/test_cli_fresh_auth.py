"""The CLI's FRESH-auth decisions (export; delete-account's single step), with fakes.

The live stack cannot cheaply produce every case (a stale session needs the fresh window
to pass, and each TOTP code works once), so the order of calls is checked here against
fakes standing in for the auth and retention clients (``make_auth_client`` and
``make_retention_client`` are the CLI's replacement points). The real round trips are in
tests/integration/stack/test_e2e_account_data.py.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from conclave_client import cli
from conclave_client.auth_client import ClientError
from conclave_client.credentials import Credentials
from conclave_client.retention_client import Export

FRESH = ClientError("fresh authentication required", reason="FRESH_AUTH_REQUIRED")


class FakeAuth:
    """Records re-authentications; the session is fresh once one succeeded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __enter__(self) -> FakeAuth:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def credentials(self) -> Credentials:
        return Credentials(account_id="acc-1", username="alice", session_id="s", refresh_token="r")

    def reauthenticate(self, password: str, *, totp_code: str | None = None) -> None:
        self.calls.append((password, totp_code or ""))


class FakeRetention:
    """Refuses the first ``stale`` calls with FRESH_AUTH_REQUIRED."""

    def __init__(self, stale: int) -> None:
        self.stale = stale
        self.deletes: list[tuple[str, str, str]] = []
        self.exports = 0

    def __enter__(self) -> FakeRetention:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def export(self, progress: Any = None) -> Export:
        self.exports += 1
        if self.stale:
            self.stale -= 1
            raise FRESH
        document = {"format": "conclave-export-v1", "account_id": "acc-1", "services": {}}
        return Export(json.dumps(document).encode(), document)

    def delete_account(self, password: str, code: str, confirm: str) -> tuple[str, None]:
        self.deletes.append((password, code, confirm))
        if self.stale:
            self.stale -= 1
            raise FRESH
        return "E" * 43, None


def run(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    auth: FakeAuth,
    retention: FakeRetention,
    argv: list[str],
    stdin: str = "",
) -> tuple[int, str, str]:
    monkeypatch.setattr(cli, "make_auth_client", lambda args: auth)
    monkeypatch.setattr(cli, "make_retention_client", lambda args, a: retention)
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    out, err = capsys.readouterr()
    return int(done.value.code or 0), out, err


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CONCLAVE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home").mkdir(mode=0o700)
    (tmp_path / "home" / "device.db").write_bytes(b"keys")
    return tmp_path / "home"


def test_fresh_session_spends_no_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    auth, retention = FakeAuth(), FakeRetention(stale=0)
    code, out, _ = run(
        monkeypatch, capsys, auth, retention,
        ["export", "-o", "x.json", "--json", "--password-stdin", "--code", "111111"], "pw\n",
    )  # fmt: skip
    assert code == 0 and auth.calls == [] and retention.exports == 1
    assert json.loads(out)["file"] == str(tmp_path / "x.json")


def test_stale_export_re_authenticates_then_retries(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    auth, retention = FakeAuth(), FakeRetention(stale=1)
    code, _, err = run(
        monkeypatch, capsys, auth, retention,
        ["export", "-o", "x.json", "--password-stdin", "--code", "111111"], "pw\n",
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert auth.calls == [("pw", "111111")] and retention.exports == 2


def test_delete_sends_password_and_code_once_whatever_the_session_age(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], home: Path
) -> None:
    """DeleteAccount is its own step-up (password + code in the request): no separate
    re-authentication, one code, local state removed afterwards."""
    auth, retention = FakeAuth(), FakeRetention(stale=0)
    argv = ["delete-account", "--confirm", "alice", "--password-stdin", "--code", "111111", "--yes"]
    code, out, err = run(monkeypatch, capsys, auth, retention, argv, "pw\n")
    assert (code, err) == (0, "")
    assert auth.calls == []
    assert retention.deletes == [("pw", "111111", "alice")]
    assert f"erasure id {'E' * 43}" in out and "Removed this device's local state" in out
    assert not (home / "device.db").exists()


def test_delete_guards_before_any_call(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    auth, retention = FakeAuth(), FakeRetention(stale=0)
    code, _, err = run(
        monkeypatch, capsys, auth, retention,
        ["delete-account", "--confirm", "bob", "--password-stdin", "--code", "1", "--yes"], "pw\n",
    )  # fmt: skip
    assert code == 1 and "--confirm must be this account's username (alice)" in err
    code, _, err = run(
        monkeypatch, capsys, auth, retention,
        ["delete-account", "--confirm", "alice", "--code", "1"],
    )  # fmt: skip
    assert (
        code == 1 and err == "conclave: error: add --yes to delete the account without a question\n"
    )
    assert retention.deletes == [] and auth.calls == []
