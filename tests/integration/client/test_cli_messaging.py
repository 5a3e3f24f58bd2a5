"""``conclave send|listen|group`` end to end: two users, one with two devices, real stack.

Every command is a separate CLI process (see test_cli_auth.py) with its own
``CONCLAVE_HOME``; alice's second device is a second home logging in as alice. Every
plaintext must arrive exactly once on every device it is meant for: on the recipient's
devices and on the sender's other device, for 1:1 and group messages alike, and a
removed member must not get what is sent after its removal.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.integration.client.test_cli_auth import User
from tests.integration.stack.conftest import RunningStack

pytestmark = pytest.mark.integration


class Device(User):
    """One CLI home; ``recovery_codes`` lets a second home log in as the same user."""

    recovery_codes: list[str]

    def start_listen(self, *args: str) -> subprocess.Popen[str]:
        env = self.stack.client_env()
        env.update(CONCLAVE_HOME=str(self.home), PYTHONIOENCODING="utf-8")
        return subprocess.Popen(
            [sys.executable, "-c", "from conclave_client.cli import main; main()", "listen",
             "--json", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip

    def listen(self, count: int, timeout: float = 40) -> list[dict[str, Any]]:
        """Runs ``listen --json --count N``; returns the objects printed."""
        done = self.run("listen", "--json", "--count", str(count), "--timeout", str(timeout))
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert done.stderr == "", done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    def nothing_left(self) -> None:
        """A listen of 3 s shows nothing: every message was delivered once and acked."""
        done = self.run("listen", "--json", "--timeout", "3")
        assert done.returncode == 0, done.stderr
        assert done.stdout == "" and done.stderr == ""


def second_device(first: Device, home: Path) -> Device:
    other = Device(first.stack, home)
    other.username, other.password, other.totp = first.username, first.password, first.totp
    code = first.recovery_codes.pop(0)
    reply = other.json(
        "login", other.username, "--recovery-code", code, "--password-stdin",
        stdin=other.password + "\n",
    )  # fmt: skip
    assert reply["new_device"] is True and reply["keys"]["action"] == "published"
    return other


def texts(messages: list[dict[str, Any]]) -> Counter[str]:
    return Counter(m["text"] for m in messages)


def test_direct_and_group_messages_arrive_once_on_every_device(
    stack: RunningStack, tmp_path: Path
) -> None:
    alice, bob = Device(stack, tmp_path / "alice1"), Device(stack, tmp_path / "bob")
    alice.recovery_codes = list(alice.register()["recovery_codes"])
    bob.register()
    alice.login()
    bob.login()
    phone = second_device(alice, tmp_path / "alice2")

    # 1:1 in every direction, from both of alice's devices.
    sent = alice.json("send", bob.username, "hello bob")
    assert sent["devices"] == 2  # bob's device + alice's phone
    bob.json("send", alice.username, "hi alice")
    phone.json("send", bob.username, "from the phone")

    # A group of all three devices; alice's sender key reaches bob and the phone first.
    created = alice.json("group", "create", "team", bob.username)
    assert created["name"] == "team"
    alice.json("send", "#team", "team hello")

    got_bob = bob.listen(3)
    assert texts(got_bob) == Counter({"hello bob": 1, "from the phone": 1, "team hello": 1})
    by_text = {m["text"]: m for m in got_bob}
    assert by_text["hello bob"]["from"] == alice.username
    assert by_text["hello bob"]["conversation"] == alice.username
    assert by_text["team hello"]["conversation"] == "#team"
    assert len({m["id"] for m in got_bob}) == 3

    got_alice = alice.listen(2)
    assert texts(got_alice) == Counter({"hi alice": 1, "from the phone": 1})
    copy = next(m for m in got_alice if m["text"] == "from the phone")
    assert copy["from"] == alice.username and copy["conversation"] == bob.username
    assert copy["outgoing"] is True

    got_phone = phone.listen(3)
    assert texts(got_phone) == Counter({"hello bob": 1, "hi alice": 1, "team hello": 1})
    assert {m["conversation"] for m in got_phone} == {bob.username, "#team"}

    # Members learnt the group's name from the sender-key frame and can send to it.
    bob.json("send", "#team", "bob to team")
    phone.json("send", "#team", "phone to team")
    assert texts(alice.listen(2)) == Counter({"bob to team": 1, "phone to team": 1})
    assert texts(bob.listen(1)) == Counter({"phone to team": 1})
    assert texts(phone.listen(1)) == Counter({"bob to team": 1})

    members = alice.json("group", "members", "team")
    assert {(m["username"], m["role"]) for m in members} == {
        (alice.username, "admin"),
        (bob.username, "member"),
    }

    # bob did not add alice, yet sees her name (resolved by account id on the server).
    assert {m["username"] for m in bob.json("group", "members", "team")} == {
        alice.username,
        bob.username,
    }

    # Removal: alice rotates her sender key; bob gets nothing sent afterwards.
    assert alice.json("group", "remove", "team", bob.username)["removed"] == [bob.username]
    alice.json("send", "#team", "after removal")
    assert texts(phone.listen(1)) == Counter({"after removal": 1})
    for device in (alice, bob, phone):
        device.nothing_left()

    # Live: a listener already waiting prints the message as it arrives.
    waiting = phone.start_listen("--count", "1", "--timeout", "40")
    time.sleep(2)  # let it subscribe (the message would come from the backlog otherwise)
    bob.json("send", alice.username, "live one")
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    (live,) = [json.loads(line) for line in out.splitlines()]
    assert (live["text"], live["from"], live["conversation"]) == (
        "live one",
        bob.username,
        bob.username,
    )
    assert texts(alice.listen(1)) == Counter({"live one": 1})

    # Errors are one line.
    unknown = alice.run("send", "nobody_" + bob.username, "x")
    assert unknown.returncode == 1
    assert unknown.stderr == f"conclave: error: no account named nobody_{bob.username}\n"
    no_group = alice.run("send", "#nope", "x")
    assert no_group.returncode == 1 and no_group.stderr.startswith("conclave: error: ")
    short = bob.run("listen", "--count", "1", "--timeout", "1")
    assert short.returncode == 1
    assert short.stderr == "conclave: error: 0 of 1 messages arrived within 1 s\n"
