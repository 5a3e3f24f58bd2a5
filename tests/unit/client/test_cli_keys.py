"""Key publication at login and the ``keys`` commands: flows and output shapes (fake stubs)."""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import stat
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from conclave_client import cli, keys_client
from conclave_client.auth_client import AuthClient
from conclave_client.credentials import CredentialStore
from conclave_client.keys_client import (
    KeysClient,
    LogKeyError,
    VerifiedAccount,
    parse_log_key,
    pinned_log_key,
    registration_id,
    rotate_signed_prekeys,
)
from conclave_client.transparency import EquivocationError, TreeHead, VerifiedDevice
from conclave_crypto import CryptoStore, Device

from tests.unit.client.fakes import FakeAuthStub, as_stub, rpc_error
from tests.unit.client.fakes_keys import LOG_PUBLIC_KEY, FakeKeysStub, as_keys_stub

PASSWORD = "correct horse battery staple"
LOG_KEY_HEX = "ab" * 32

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("CONCLAVE_HOME", str(path))
    monkeypatch.delenv("CONCLAVE_KT_LOG_KEY", raising=False)
    return path


@pytest.fixture
def auth(home: Path, monkeypatch: pytest.MonkeyPatch) -> FakeAuthStub:
    stub = FakeAuthStub()

    def factory(args: argparse.Namespace) -> AuthClient:
        return AuthClient("fake:1", CredentialStore(home), stub=as_stub(stub))

    monkeypatch.setattr(cli, "make_auth_client", factory)
    return stub


@pytest.fixture
def keys(auth: FakeAuthStub, home: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKeysStub:
    stub = FakeKeysStub(auth)

    def factory(args: argparse.Namespace, client: AuthClient) -> KeysClient:
        return KeysClient("fake:2", client, home=home, stub=as_keys_stub(stub))

    monkeypatch.setattr(cli, "make_keys_client", factory)
    return stub


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


def login(run: Run, *extra: str, register: bool = True) -> dict[str, Any]:
    if register:
        assert run("register", "alice", "--password-stdin", stdin=PASSWORD + "\n")[0] == 0
    code, out, err = run(
        "login", "alice", "--code", FakeAuthStub.TOTP, "--password-stdin", "--json", *extra,
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert (code, err) == (0, ""), err
    result = json.loads(out)
    assert isinstance(result, dict)
    return result


# -- login publishes -----------------------------------------------------------------------


def test_login_of_a_new_device_publishes_its_keys(keys: FakeKeysStub, run: Run, home: Path) -> None:
    result = login(run)
    assert keys.calls == ["LookupIdentityKeys", "PublishIdentityKey", "UploadPrekeys"]
    assert result["keys"] == {
        "published": True,
        "action": "published",
        "new_identity": True,
        "fingerprint": result["keys"]["fingerprint"],
        "one_time_uploaded": 100,
        "pq_one_time_uploaded": 100,
        "one_time_prekeys": 100,
        "pq_one_time_prekeys": 100,
        "leaf_index": 0,
        "signed_prekeys_rotated": False,
    }
    device = keys.devices[(result["account_id"], result["device_id"])]
    assert (len(device.one_time), len(device.pq_one_time)) == (100, 100)
    assert device.registration_id == registration_id(device.signing + device.agreement)
    assert result["keys"]["fingerprint"] == keys_client.fingerprint(
        device.signing + device.agreement
    )
    # The private halves are in the device state file, private to the owner.
    path = home / "device.db"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with CryptoStore.open(path) as store:
        stored = store.load_device()
    assert stored.identity.public.signing == device.signing
    assert set(device.one_time) <= set(stored.prekeys.one_time_prekeys)
    assert set(device.pq_one_time) <= set(stored.prekeys.kem_prekeys)
    assert stored.sessions.address.device_id == result["device_id"]


def test_login_again_keeps_keys_and_tops_up_when_low(keys: FakeKeysStub, run: Run) -> None:
    first = login(run)
    assert run("logout")[0] == 0
    keys.calls.clear()
    again = login(run, register=False)
    assert keys.calls == ["LookupIdentityKeys", "GetPrekeyCounts"]
    assert again["keys"]["action"] == "unchanged" and again["keys"]["new_identity"] is False
    assert again["keys"]["fingerprint"] == first["keys"]["fingerprint"]

    keys.claim(first["account_id"], 95)  # 5 of each left: below the low-water mark
    assert run("logout")[0] == 0
    topped = login(run, register=False)["keys"]
    assert topped["action"] == "topped_up" and topped["fingerprint"] == first["keys"]["fingerprint"]
    assert (topped["one_time_uploaded"], topped["pq_one_time_uploaded"]) == (95, 95)
    assert (topped["one_time_prekeys"], topped["pq_one_time_prekeys"]) == (100, 100)


def test_login_rotates_old_signed_prekeys(keys: FakeKeysStub, run: Run, home: Path) -> None:
    first = login(run)
    device = keys.devices[(first["account_id"], first["device_id"])]
    old_spk, old_lr = device.signed_prekey_id, device.last_resort_id
    assert run("logout")[0] == 0
    fresh = login(run, register=False)["keys"]  # a day old at most: kept
    assert fresh["signed_prekeys_rotated"] is False and device.signed_prekey_id == old_spk

    device.signed_uploaded -= timedelta(days=8)
    assert run("logout")[0] == 0
    keys.calls.clear()
    code, out, _ = run(
        "login", "alice", "--code", FakeAuthStub.TOTP, "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert code == 0 and "Rotated the signed X25519 and last-resort ML-KEM-1024 prekeys." in out
    assert keys.calls == ["LookupIdentityKeys", "GetPrekeyCounts", "UploadPrekeys"]
    assert device.signed_prekey_id not in (0, old_spk) and device.last_resort_id != old_lr
    assert (len(device.one_time), len(device.pq_one_time)) == (100, 100)  # none added
    with CryptoStore.open(home / "device.db") as store:
        prekeys = store.load_device().prekeys
    # The new keys are current; the previous ones stay for messages already on their way.
    assert prekeys.current_signed_prekey_id == device.signed_prekey_id
    assert prekeys.last_resort_kem_id == device.last_resort_id
    assert old_spk in prekeys.signed_prekeys and old_lr in prekeys.kem_prekeys


def test_login_human_output_mentions_the_keys(keys: FakeKeysStub, run: Run) -> None:
    run("register", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    code, out, _ = run(
        "login", "alice", "--code", FakeAuthStub.TOTP, "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert code == 0
    assert "Published this device's keys (100 one-time X25519 and 100 one-time ML-KEM-1024 " in out
    assert re.search(r"\n  Identity fingerprint: ([0-9a-f]{4} ){15}[0-9a-f]{4}\n", out)


def test_removed_device_gets_a_new_identity(keys: FakeKeysStub, run: Run, home: Path) -> None:
    first = login(run)
    assert run("logout", "--remove-device")[0] == 0
    assert not (home / "device.db").exists()
    second = login(run, register=False)
    assert second["device_id"] != first["device_id"]
    assert second["keys"]["new_identity"] is True
    assert second["keys"]["fingerprint"] != first["keys"]["fingerprint"]


def test_state_of_another_device_is_replaced(keys: FakeKeysStub, run: Run, home: Path) -> None:
    """A device.db left by another device (e.g. of another account) is not reused."""
    first = login(run)
    assert run("logout")[0] == 0
    creds = json.loads((home / "credentials.json").read_text())
    creds["device_id"] = ""
    (home / "credentials.json").write_text(json.dumps(creds))
    second = login(run, register=False)
    assert second["device_id"] != first["device_id"]
    assert second["keys"]["action"] == "published" and second["keys"]["new_identity"] is True


def test_publication_waits_for_approval(keys: FakeKeysStub, run: Run) -> None:
    keys.fail["PublishIdentityKey"] = rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION, "device awaits approval", "DEVICE_APPROVAL_PENDING"
    )
    result = login(run)
    assert result["keys"] == {"published": False, "approval_pending": True}


def test_unreachable_keys_service_fails_the_login_in_one_line(keys: FakeKeysStub, run: Run) -> None:
    run("register", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    keys.fail["LookupIdentityKeys"] = rpc_error(grpc.StatusCode.UNAVAILABLE, "")
    code, out, err = run(
        "login", "alice", "--code", FakeAuthStub.TOTP, "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert (code, out) == (1, "")
    assert err == (
        "conclave: error: logged in, but this device's keys were not published: keys service "
        "unreachable at fake:2 (check: conclave status) (log in again to retry)\n"
    )
    # The session stays; logging in again publishes.
    assert run("sessions")[0] == 0


# -- keys status -------------------------------------------------------------------------


def test_keys_status_json_and_table(keys: FakeKeysStub, run: Run) -> None:
    result = login(run)
    code, out, err = run("keys", "status", "--json")
    assert (code, err) == (0, "")
    (device,) = json.loads(out)
    assert set(device) == {
        "device_id",
        "current",
        "one_time_prekeys",
        "pq_one_time_prekeys",
        "signed_prekey_id",
        "signed_prekey_uploaded",
        "signed_prekey_age_seconds",
        "pq_last_resort_prekey_id",
        "pq_last_resort_uploaded",
        "low",
    }
    assert device["device_id"] == result["device_id"] and device["current"] is True
    assert (device["one_time_prekeys"], device["pq_one_time_prekeys"]) == (100, 100)
    assert device["signed_prekey_age_seconds"] < 60 and device["low"] is False
    assert device["signed_prekey_uploaded"].endswith("Z")

    keys.claim(result["account_id"], 95)
    code, out, _ = run("keys", "status")
    assert code == 0
    assert result["device_id"] in out and "X25519" in out and "ML-KEM" in out
    assert re.search(r"\*\s+" + re.escape(result["device_id"]) + r"\s+5\s+5\s+\d+ s", out)
    assert "run low on one-time prekeys" in out


def test_keys_commands_need_a_session(keys: FakeKeysStub, run: Run) -> None:
    for argv in (["keys", "status"], ["keys", "verify", "bob", "--log-key", LOG_KEY_HEX]):
        code, out, err = run(*argv)
        assert (code, out) == (1, "")
        assert err == "conclave: error: not logged in (run: conclave login USERNAME)\n"


# -- keys verify -------------------------------------------------------------------------

HEAD = TreeHead(7, bytes(range(32)), 1_700_000_000_000, "log-1", bytes(64))
BOB = VerifiedDevice("dev-b", bytes(32), bytes([1]) * 32, leaf_index=3, tree_size=7)


def fake_verify(
    monkeypatch: pytest.MonkeyPatch, outcome: VerifiedAccount | Exception
) -> list[bytes]:
    pinned: list[bytes] = []

    def verify(self: KeysClient, username: str, log_key: bytes, heads: object = None) -> Any:
        pinned.append(log_key)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(KeysClient, "verify", verify)
    return pinned


def test_keys_verify_json(keys: FakeKeysStub, run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    login(run)
    pinned = fake_verify(monkeypatch, VerifiedAccount("bob", "acc-b", (BOB,), HEAD))
    monkeypatch.setenv("CONCLAVE_KT_LOG_KEY", LOG_KEY_HEX)
    code, out, err = run("keys", "verify", "bob", "--json")
    assert (code, err) == (0, "")
    assert pinned == [bytes.fromhex(LOG_KEY_HEX)]
    assert json.loads(out) == {
        "username": "bob",
        "account_id": "acc-b",
        "verified": True,
        "tree_head": {
            "tree_size": 7,
            "root_hash": bytes(range(32)).hex(),
            "timestamp_ms": 1_700_000_000_000,
            "key_id": "log-1",
        },
        "devices": [
            {
                "device_id": "dev-b",
                "fingerprint": BOB.digest,
                "identity_key": (bytes(32) + bytes([1]) * 32).hex(),
                "leaf_index": 3,
                "tree_size": 7,
            }
        ],
    }


def test_keys_verify_human(keys: FakeKeysStub, run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    login(run)
    fake_verify(monkeypatch, VerifiedAccount("bob", "acc-b", (BOB,), HEAD))
    code, out, _ = run("keys", "verify", "bob", "--log-key", LOG_KEY_HEX)
    assert code == 0
    assert out.startswith("Verified 1 device of bob in the key-transparency log (log size 7).")
    assert f"  device dev-b\n    {BOB.digest}\n" in out
    assert len(BOB.digest.split()) == 16

    fake_verify(monkeypatch, VerifiedAccount("bob", "acc-b", (), None))
    code, out, _ = run("keys", "verify", "bob", "--log-key", LOG_KEY_HEX)
    assert (code, out) == (0, "bob has no published device: nothing to verify.\n")


def test_keys_verify_failure_is_one_line(
    keys: FakeKeysStub, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    login(run)
    fake_verify(monkeypatch, EquivocationError("s:1 presented two different trees of 7 leaves"))
    for extra in ((), ("--json",)):
        code, out, err = run("keys", "verify", "bob", "--log-key", LOG_KEY_HEX, *extra)
        assert (code, out) == (1, "")
        assert err == (
            "conclave: error: key transparency check failed for bob: "
            "s:1 presented two different trees of 7 leaves\n"
        )


def test_keys_verify_needs_a_pinned_log_key(keys: FakeKeysStub, run: Run) -> None:
    login(run)
    code, out, err = run("keys", "verify", "bob")
    assert (code, out) == (1, "")
    assert err.startswith("conclave: error: no key-transparency log key pinned (set ")
    assert err.count("\n") == 1
    code, _, err = run("keys", "verify", "bob", "--log-key", "abcd")
    assert code == 1 and "must be 32 bytes" in err


def test_keys_verify_unknown_user(keys: FakeKeysStub, run: Run) -> None:
    login(run)
    code, out, err = run("keys", "verify", "nobody", "--log-key", LOG_KEY_HEX)
    assert (code, out, err) == (1, "", "conclave: error: no account named nobody\n")


def test_keys_log_key(keys: FakeKeysStub, run: Run) -> None:
    login(run)
    code, out, _ = run("keys", "log-key", "--json")
    assert code == 0
    assert json.loads(out) == {
        "key_id": "log-1",
        "log_public_key": LOG_PUBLIC_KEY.hex(),
        "verified": False,
    }
    code, out, _ = run("keys", "log-key")
    assert code == 0 and LOG_PUBLIC_KEY.hex() in out


def test_parse_log_key_forms() -> None:
    raw = bytes(range(32))
    assert parse_log_key(raw.hex()) == raw
    assert parse_log_key(raw.hex().upper()) == raw
    assert parse_log_key(base64.b64encode(raw).decode()) == raw
    for bad in ("", "zz", raw.hex()[:-2], base64.b64encode(raw[:31]).decode()):
        with pytest.raises(LogKeyError):
            parse_log_key(bad)
    assert pinned_log_key(None, {"CONCLAVE_KT_LOG_KEY": raw.hex()}) == raw
    assert pinned_log_key(LOG_KEY_HEX, {"CONCLAVE_KT_LOG_KEY": raw.hex()}) != raw
    with pytest.raises(LogKeyError):
        pinned_log_key(None, {})


def test_registration_id_range() -> None:
    for seed in range(50):
        value = registration_id(bytes([seed]) * 64)
        assert 1 <= value <= 2**31 - 1


def test_parse_keys_commands() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["keys", "verify", "bob", "--json", "--log-key", "k"])
    assert (args.username, args.json, args.log_key) == ("bob", True, "k")
    assert parser.parse_args(["--json", "keys", "status"]).json is True
    with pytest.raises(SystemExit):
        parser.parse_args(["keys"])


def test_unreadable_remembered_heads_fail_verification(
    keys: FakeKeysStub, auth: FakeAuthStub, run: Run, home: Path
) -> None:
    login(run)
    (home / "kt-heads.json").write_text('{"version": 1, "servers": {"fake:2": {}}}')
    code, out, err = run("keys", "verify", "alice", "--log-key", LOG_KEY_HEX)
    assert (code, out) == (1, "")
    assert err.startswith("conclave: error: key transparency check failed for alice: ")
    assert "kt-heads.json cannot be read (KeyError)" in err and err.count("\n") == 1


def test_rotation_keeps_one_previous_key_of_each_kind() -> None:
    device = Device.create("acc", "dev")
    for _ in range(3):
        spk, last_resort = rotate_signed_prekeys(device)
    prekeys = device.prekeys
    assert prekeys.current_signed_prekey_id == spk.key_id
    assert prekeys.last_resort_kem_id == last_resort.key_id
    assert len(prekeys.signed_prekeys) == 2
    assert len([k for k in prekeys.kem_prekeys.values() if k.last_resort]) == 2
