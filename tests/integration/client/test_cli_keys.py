"""``conclave login`` publishes the device's keys; ``conclave keys status|verify``, for real.

Every command is a separate CLI process against the whole stack (see test_cli_auth.py). The
key-transparency log key is pinned the way a user pins it: ``CONCLAVE_KT_LOG_KEY``, here the
public half of the stack's own log signing key.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from conclave.keys.v1 import keys_pb2, keys_pb2_grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.integration.client.test_cli_auth import User
from tests.integration.stack.conftest import RunningStack

pytestmark = pytest.mark.integration


def log_key(stack: RunningStack) -> str:
    """The stack's log public key, hex (what an operator publishes for clients to pin)."""
    pem = (stack.data_dir / "secrets" / "kt-tree-signing-ed25519.pem").read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key.public_key().public_bytes_raw().hex()


class KeyUser(User):
    """A CLI user whose environment pins a log key (``pinned``; None: no key pinned)."""

    pinned: str | None = None
    recovery_codes: list[str]

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = self.stack.client_env()
        env.pop("CONCLAVE_KT_LOG_KEY", None)
        if self.pinned is not None:
            env["CONCLAVE_KT_LOG_KEY"] = self.pinned
        env.update(CONCLAVE_HOME=str(self.home), PYTHONIOENCODING="utf-8", COLUMNS="160")
        return subprocess.run(
            [sys.executable, "-c", "from conclave_client.cli import main; main()", *args],
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    def login_again(self) -> dict[str, Any]:
        """Logs in once more with the next recovery code (the TOTP code may be spent)."""
        self.ok("logout")
        code = self.recovery_codes.pop(0)
        reply = self.json(
            "login", self.username, "--recovery-code", code, "--password-stdin",
            stdin=self.password + "\n",
        )  # fmt: skip
        assert isinstance(reply, dict)
        return reply

    def metadata(self) -> tuple[tuple[str, str]]:
        """Call metadata with the access token the CLI stored."""
        return (("authorization", f"Bearer {self.credentials()['access_token']}"),)


@dataclass
class Pair:
    """Two registered users, logged in once (the stack allows 10 registrations per hour
    from one address, shared by every test on it, so these tests register only two)."""

    alice: KeyUser
    bob: KeyUser
    alice_login: dict[str, Any]
    bob_login: dict[str, Any]


def user(stack: RunningStack, home: Path) -> KeyUser:
    person = KeyUser(stack, home)
    person.pinned = log_key(stack)
    person.recovery_codes = list(person.register()["recovery_codes"])
    return person


@pytest.fixture(scope="module")
def pair(stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> Pair:
    base = tmp_path_factory.mktemp("keys-cli")
    alice, bob = user(stack, base / "alice"), user(stack, base / "bob")
    return Pair(alice, bob, alice.login(), bob.login())


def test_login_publishes_keys_and_relogin_keeps_them(stack: RunningStack, pair: Pair) -> None:
    alice, bob, login = pair.alice, pair.bob, pair.alice_login
    keys = login["keys"]
    assert keys["published"] is True and keys["action"] == "published"
    assert keys["new_identity"] is True
    assert (keys["one_time_prekeys"], keys["pq_one_time_prekeys"]) == (100, 100)
    device_db = alice.home / "device.db"
    assert stat.S_IMODE(device_db.stat().st_mode) == 0o600

    with grpc.insecure_channel(stack.grpc["keys"]) as channel:
        stub = keys_pb2_grpc.KeyServiceStub(channel)
        counts = stub.GetPrekeyCounts(
            keys_pb2.GetPrekeyCountsRequest(), metadata=alice.metadata(), timeout=10
        )
        (mine,) = counts.devices
        assert mine.device_id == login["device_id"]
        assert (mine.one_time_prekeys, mine.pq_one_time_prekeys) == (100, 100)
        assert mine.signed_prekey_id != 0 and mine.pq_last_resort_prekey_id != 0
        assert not mine.low

    (status,) = alice.json("keys", "status")
    assert status["device_id"] == login["device_id"] and status["current"] is True
    assert (status["one_time_prekeys"], status["pq_one_time_prekeys"]) == (100, 100)
    assert 0 <= status["signed_prekey_age_seconds"] < 120 and status["low"] is False
    assert login["device_id"] in alice.ok("keys", "status")

    # Logging in again keeps the device and its keys: nothing generated, nothing uploaded.
    again = alice.login_again()
    assert again["device_id"] == login["device_id"] and again["new_device"] is False
    assert again["keys"]["action"] == "unchanged" and again["keys"]["new_identity"] is False
    assert again["keys"]["fingerprint"] == keys["fingerprint"]
    assert again["keys"]["one_time_uploaded"] == 0

    # Someone claims bundles until fewer than 10 one-time keys are left: the next login
    # tops both kinds back up to 100.
    with grpc.insecure_channel(stack.grpc["keys"]) as channel:
        stub = keys_pb2_grpc.KeyServiceStub(channel)
        for _ in range(91):
            stub.ClaimPrekeyBundles(
                keys_pb2.ClaimPrekeyBundlesRequest(account_id=login["account_id"]),
                metadata=bob.metadata(),
                timeout=10,
            )
    (low,) = alice.json("keys", "status")
    assert (low["one_time_prekeys"], low["pq_one_time_prekeys"]) == (9, 9)
    assert low["low"] is True
    topped = alice.login_again()["keys"]
    assert topped["action"] == "topped_up" and topped["fingerprint"] == keys["fingerprint"]
    assert (topped["one_time_uploaded"], topped["pq_one_time_uploaded"]) == (91, 91)
    assert (topped["one_time_prekeys"], topped["pq_one_time_prekeys"]) == (100, 100)


def test_keys_verify_shows_fingerprints_and_detects_a_forked_head(
    stack: RunningStack, pair: Pair
) -> None:
    alice, bob, bob_keys = pair.alice, pair.bob, pair.bob_login["keys"]

    verified = alice.json("keys", "verify", bob.username)
    assert verified["verified"] is True and verified["username"] == bob.username
    (device,) = verified["devices"]
    assert device["fingerprint"] == bob_keys["fingerprint"]
    assert device["leaf_index"] == bob_keys["leaf_index"]
    head = verified["tree_head"]
    assert head["tree_size"] > device["leaf_index"]

    human = alice.ok("keys", "verify", bob.username)
    assert bob_keys["fingerprint"] in human and "Verified 1 device" in human

    # Without a pinned log key nothing is trusted.
    alice.pinned = None
    unpinned = alice.run("keys", "verify", bob.username)
    assert unpinned.returncode == 1 and unpinned.stdout == ""
    assert unpinned.stderr.startswith("conclave: error: no key-transparency log key pinned")
    # A wrong pinned key: the head's signature does not verify.
    alice.pinned = "11" * 32
    wrong = alice.run("keys", "verify", bob.username)
    assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1
    assert "key transparency check failed" in wrong.stderr
    alice.pinned = log_key(stack)

    unknown = alice.run("keys", "verify", "nobody_" + bob.username)
    assert unknown.returncode == 1
    assert unknown.stderr == f"conclave: error: no account named nobody_{bob.username}\n"

    # The remembered head is replaced by another tree of the same size: whatever the
    # server shows next cannot be a consistent extension of it, so verify fails.
    heads_path = alice.home / "kt-heads.json"
    heads = json.loads(heads_path.read_text())
    (remembered,) = heads["servers"].values()
    remembered["root_hash"] = bytes(32).hex()
    heads_path.write_text(json.dumps(heads))
    forked = alice.run("keys", "verify", bob.username)
    assert forked.returncode == 1 and forked.stdout == ""
    assert forked.stderr.startswith(
        f"conclave: error: key transparency check failed for {bob.username}: "
    )
    assert forked.stderr.count("\n") == 1
    forked_json = alice.run("keys", "verify", bob.username, "--json")
    assert forked_json.returncode == 1 and forked_json.stdout == ""
