"""``conclave retention`` and disappearing messages in ``listen``, on the real stack.

Every command is a separate CLI process with its own ``CONCLAVE_HOME`` (as in
test_cli_messaging.py). A conversation's disappearing timer set with the CLI must reach a
listening peer as a ``policy_change``, mark the messages sent under it (``disappearing``,
``expire_time`` = server time + timer), and the files ``listen`` saved for them must be
deleted once due. The schedule's clock is injected instead of waiting 30 s.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conclave_client.disappearing import Expired, ExpiryStore, Sweeper

from tests.integration.client.test_cli_messaging import Device
from tests.integration.stack.conftest import RunningStack

pytestmark = pytest.mark.integration


def parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def lifetime(message: dict[str, Any]) -> float:
    return parse_time(message["expire_time"]) - parse_time(message["server_time"])


def policy(reply: dict[str, Any], name: str) -> tuple[int, str]:
    value = reply["policy"][name]
    return value["seconds"], value["source"]


def test_disappearing_timer_reaches_listener_and_saved_files_are_swept(
    stack: RunningStack, tmp_path: Path
) -> None:
    alice, bob = Device(stack, tmp_path / "alice"), Device(stack, tmp_path / "bob")
    for user in (alice, bob):
        user.register()
        user.login()
    source = tmp_path / "secret.txt"
    source.write_bytes(b"gone in thirty seconds\n")

    # bob listens; alice sets a 30 s timer on their conversation.
    waiting = bob.start_listen("--count", "2", "--timeout", "60")
    time.sleep(2)  # let it subscribe: policy changes are pushed live only
    reply = alice.json("retention", "set", bob.username, "--disappearing", "30s")
    assert policy(reply, "disappearing_message_timer") == (30, "conversation")
    assert reply["disappearing"] is True and reply["conversation"] == bob.username

    assert waiting.stdout is not None
    change = json.loads(waiting.stdout.readline())  # before anything is sent
    assert change == {
        "type": "policy_change",
        "conversation": alice.username,
        "group_id": None,
        "disappearing_message_timer": 30,
        "disappearing": True,
        "changed_by": alice.username,
        "changed_by_account_id": alice.credentials()["account_id"],
        "change_time": change["change_time"],
    }

    alice.json("send", bob.username, "this disappears")
    alice.json("send-file", bob.username, str(source))
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert err == ""
    text, file = (json.loads(line) for line in out.splitlines())
    received = time.time()
    for message in (text, file):
        assert message["disappearing"] is True
        assert abs(lifetime(message) - 30) <= 1
        assert 10 < parse_time(message["expire_time"]) - received <= 31
    assert text["text"] == "this disappears"
    saved = Path(file["file"])
    assert saved.read_bytes() == source.read_bytes()

    # The schedule in client.db: nothing is due now; at expire_time the file goes.
    expire = parse_time(file["expire_time"])
    with ExpiryStore(bob.home / "client.db") as store:
        assert store.sweep() == []
        assert saved.exists()
        assert {p.message_id for p in store.pending()} == {text["id"], file["id"]}
    with ExpiryStore(bob.home / "client.db", clock=lambda: expire + 1) as store:
        swept = {item.message_id: item.path for item in store.sweep()}
        assert swept == {text["id"]: None, file["id"]: saved}
        assert store.pending() == []
    assert not saved.exists()

    # The background sweeper (listen runs one) deletes a file as soon as it is due.
    doomed = bob.home / "downloads" / "doomed.txt"
    doomed.write_text("x")
    got: list[Expired] = []
    done = threading.Event()

    def on_expired(item: Expired) -> None:
        got.append(item)
        done.set()

    with ExpiryStore(bob.home / "client.db", clock=lambda: time.time() + 3600) as store:
        store.track("m-doomed", time.time() + 60, doomed)
        with Sweeper(store, on_expired, interval=0.1):
            assert done.wait(10)
    assert [g.path for g in got] == [doomed] and not doomed.exists()

    # listen sweeps what fell due while it was not running, and says so.
    late = bob.home / "downloads" / "late.txt"
    late.write_text("x")
    with ExpiryStore(bob.home / "client.db") as store:
        store.track("m-late", time.time() - 5, late)
    done_listen = bob.run("listen", "--json", "--timeout", "2")
    assert done_listen.returncode == 0 and done_listen.stderr == ""
    (deleted,) = [json.loads(line) for line in done_listen.stdout.splitlines()]
    assert deleted["type"] == "disappeared" and deleted["file"] == str(late)
    assert not late.exists()

    # Offline: the timer comes from GetEffectivePolicy; the human line says when it goes.
    alice.json("send", bob.username, "while you were away")
    human = bob.run("listen", "--count", "1", "--timeout", "30")
    assert human.returncode == 0, human.stderr
    assert re.search(r": while you were away \(disappears in \d{1,2} s\)$", human.stdout.strip())

    # Either party turns it off; a listener sees the change, and later messages stay.
    alice_listen = alice.start_listen("--count", "1", "--timeout", "60")
    time.sleep(2)
    off = bob.json("retention", "set", alice.username, "--disappearing", "off")
    assert policy(off, "disappearing_message_timer") == (0, "conversation")
    assert off["disappearing"] is False
    assert alice_listen.stdout is not None
    seen = json.loads(alice_listen.stdout.readline())
    assert (seen["type"], seen["disappearing_message_timer"], seen["changed_by"]) == (
        "policy_change",
        0,
        bob.username,
    )
    bob.json("send", alice.username, "this stays")
    out, err = alice_listen.communicate(timeout=60)
    assert alice_listen.returncode == 0 and err == ""
    (stays,) = [json.loads(line) for line in out.splitlines()]
    assert stays["text"] == "this stays" and stays["disappearing"] is False
    assert stays["expire_time"] is not None and lifetime(stays) > 3600  # undelivered TTL
    with ExpiryStore(alice.home / "client.db") as store:
        assert store.pending() == []


def test_policy_change_is_printed_readably(stack: RunningStack, tmp_path: Path) -> None:
    alice, bob = Device(stack, tmp_path / "alice"), Device(stack, tmp_path / "bob")
    for user in (alice, bob):
        user.register()
        user.login()
    env = stack.client_env()
    env.update(CONCLAVE_HOME=str(bob.home), PYTHONIOENCODING="utf-8")
    human = subprocess.Popen(
        [sys.executable, "-c", "from conclave_client.cli import main; main()", "listen",
         "--count", "1", "--timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    time.sleep(2)  # let it subscribe
    alice.json("retention", "set", bob.username, "--disappearing", "1h")
    time.sleep(1)  # the push goes through retention's event; the message must come after
    alice.json("send", bob.username, "hourly")
    out, err = human.communicate(timeout=60)
    assert human.returncode == 0 and err == ""
    first, second = out.splitlines()
    assert re.fullmatch(
        rf"\d\d:\d\d:\d\d {alice.username} disappearing messages: 1 h, set by {alice.username}",
        first,
    )
    assert re.fullmatch(
        rf"\d\d:\d\d:\d\d {alice.username}: hourly \(disappears in (59|60) min\)", second
    )


def test_retention_show_set_round_trip_and_bounds(stack: RunningStack, tmp_path: Path) -> None:
    alice, bob = Device(stack, tmp_path / "alice"), Device(stack, tmp_path / "bob")
    for user in (alice, bob):
        user.register()
        user.login()

    account = alice.json("retention", "show")
    assert account["conversation"] is None and account["disappearing"] is False
    assert {v["source"] for v in account["policy"].values()} == {"deployment"}
    timer = account["policy"]["disappearing_message_timer"]
    assert (timer["seconds"], timer["minimum"], timer["maximum"]) == (0, 30, 2_419_200)

    # set changes only what is given; the level's other values stay.
    reply = alice.json("retention", "set", "--undelivered-ttl", "2d")
    assert policy(reply, "undelivered_message_ttl") == (172_800, "account")
    reply = alice.json("retention", "set", "--disappearing", "1h", "--media-ttl", "7d")
    assert policy(reply, "disappearing_message_timer") == (3600, "account")
    assert policy(reply, "undelivered_message_ttl") == (172_800, "account")
    assert policy(reply, "media_ttl") == (604_800, "account")
    reply = alice.json("retention", "set", "--undelivered-ttl", "inherit")
    assert policy(reply, "undelivered_message_ttl")[1] == "deployment"
    assert policy(alice.json("retention", "show"), "media_ttl") == (604_800, "account")

    # A conversation inherits the account's timer until it sets its own (shared by both).
    assert policy(alice.json("retention", "show", bob.username), "disappearing_message_timer") == (
        3600,
        "account",
    )
    reply = alice.json("retention", "set", bob.username, "--disappearing", "off")
    assert policy(reply, "disappearing_message_timer") == (0, "conversation")
    assert policy(bob.json("retention", "show", alice.username), "disappearing_message_timer") == (
        0,
        "conversation",
    )

    # Human output: a table with value and origin.
    shown = alice.ok("retention", "show", bob.username)
    assert f"Retention with {bob.username}" in shown
    assert re.search(r"disappearing messages\s+off\s+conversation\s+off, 30 s to 28 d", shown)
    assert "audit log" not in shown  # account-level only
    assert re.search(r"disappearing messages\s+1 h\s+account", alice.ok("retention", "show"))

    # Groups: any admin sets it, a member reads it and may not change it.
    group = alice.json("group", "create", "crew", bob.username)
    reply = alice.json("retention", "set", "#crew", "--disappearing", "1d")
    assert policy(reply, "disappearing_message_timer") == (86_400, "conversation")
    ref = "#" + group["group_id"]
    assert policy(bob.json("retention", "show", ref), "disappearing_message_timer") == (
        86_400,
        "conversation",
    )
    alice.json("send", "#crew", "for a day")  # its timer read with GetEffectivePolicy
    (daily,) = bob.listen(1)
    assert (daily["conversation"], daily["disappearing"]) == ("#crew", True)
    assert abs(lifetime(daily) - 86_400) <= 1
    denied = bob.run("retention", "set", ref, "--disappearing", "off")
    assert denied.returncode == 1 and denied.stderr.count("\n") == 1, denied.stderr
    assert denied.stderr.startswith("conclave: error: ")

    # Out of bounds: the server's INVALID_ARGUMENT, in the command's terms, one line.
    for args, expected in (
        (["--disappearing", "10s"], "conclave: error: --disappearing is below the deployment "
         "minimum of 30 s (off turns it off)\n"),
        (["--disappearing", "5w"], "conclave: error: --disappearing is above the deployment "
         "maximum of 2419200 s (28 days)\n"),
    ):  # fmt: skip
        done = alice.run("retention", "set", bob.username, *args)
        assert (done.returncode, done.stderr) == (1, expected)
    done = alice.run("retention", "set", "--audit-log-ttl", "1s")
    assert done.returncode == 1 and done.stderr.startswith(
        "conclave: error: --audit-log-ttl is below the deployment minimum"
    )
    done = alice.run("retention", "set", bob.username, "--audit-log-ttl", "30d")
    assert (done.returncode, done.stderr) == (
        1,
        "conclave: error: --audit-log-ttl is account-level only (leave out USER|#GROUP)\n",
    )
    done = alice.run("retention", "set", bob.username)
    assert done.returncode == 1 and done.stderr.startswith("conclave: error: nothing to set")
    done = alice.run("retention", "set", "--disappearing", "soon")
    assert done.returncode == 2 and "'soon' is not a duration" in done.stderr
    done = alice.run("retention", "show", "nobody_" + bob.username)
    assert (done.returncode, done.stderr) == (
        1,
        f"conclave: error: no account named nobody_{bob.username}\n",
    )
    # Nothing changed by the refused attempts.
    assert policy(alice.json("retention", "show", bob.username), "disappearing_message_timer") == (
        0,
        "conversation",
    )
