"""``conclave send|listen|group`` output and exit codes, with a fake messenger."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from conclave_client import cli
from conclave_client.messenger import MemberInfo, Message, MessengerError, Sent

WHEN = datetime(2026, 11, 27, 12, 0, 5, tzinfo=UTC)


class NoSchedule:
    """The disappearing-message schedule of a client that received none."""

    clock = staticmethod(time.time)

    def sweep(self) -> list[Any]:
        return []

    def next_due(self) -> float | None:
        return None


class FakeMessenger:
    def __init__(self, messages: Sequence[Message] = ()) -> None:
        self.messages = list(messages)
        self.sent: list[tuple[str, str, str]] = []
        self.failures: list[tuple[str, str]] = []
        self.expiry = NoSchedule()

    def __enter__(self) -> FakeMessenger:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def send_direct(self, username: str, text: str) -> Sent:
        self.sent.append(("direct", username, text))
        return Sent("m-1", WHEN, False, 2)

    def send_group(self, name: str, text: str) -> Sent:
        if name != "#team":
            raise MessengerError(f"no group named {name} on this device")
        self.sent.append(("group", name, text))
        return Sent("m-2", WHEN, False, 0)

    def listen(
        self,
        *,
        count: int | None = None,
        timeout: float | None = None,
        policy_changes: bool = False,
    ) -> Iterator[Message]:
        for i, message in enumerate(self.messages):
            if count is not None and i >= count:
                return
            if i == 0:
                self.failures.append(("bad-1", "cannot be decrypted"))
            yield message

    def create_group(self, name: str, members: Sequence[str] = ()) -> str:
        return "g-1"

    def members(self, name: str) -> list[MemberInfo]:
        return [MemberInfo("a-1", "alice", "admin"), MemberInfo("b-1", None, "member")]


def use(monkeypatch: pytest.MonkeyPatch, fake: FakeMessenger) -> None:
    def factory(args: argparse.Namespace) -> Any:
        return fake

    monkeypatch.setattr(cli, "make_messenger", factory)


def run(*argv: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(argv))
    code = exit_info.value.code
    assert isinstance(code, int)
    return code


MESSAGES = [
    Message("m-1", "alice", "a-1", "d-1", "alice", "hi bob", server_time=WHEN),
    Message("m-2", "alice", "a-1", "d-1", "#team", "hi team", group_id="g-1", server_time=WHEN),
    Message("m-3", "bob", "b-1", "d-2", "alice", "copy", server_time=WHEN, outgoing=True),
]


def test_send_routes_users_and_groups(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeMessenger()
    use(monkeypatch, fake)
    assert run("send", "bob", "hello") == 0
    assert run("send", "#team", "hello all", "--json") == 0
    assert fake.sent == [("direct", "bob", "hello"), ("group", "#team", "hello all")]
    out = capsys.readouterr().out
    assert out.startswith("Sent m-1 to bob.\n")
    sent = json.loads(out.split("\n", 1)[1])
    assert sent["id"] == "m-2" and sent["to"] == "#team"
    assert run("send", "#nope", "x") == 1
    assert capsys.readouterr().err == "conclave: error: no group named #nope on this device\n"


def test_listen_json_one_object_per_line_and_count(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use(monkeypatch, FakeMessenger(MESSAGES))
    assert run("listen", "--json", "--count", "2") == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [(m["id"], m["from"], m["conversation"], m["text"]) for m in lines] == [
        ("m-1", "alice", "alice", "hi bob"),
        ("m-2", "alice", "#team", "hi team"),
    ]
    assert captured.err == "conclave: warning: message bad-1 cannot be decrypted\n"

    use(monkeypatch, FakeMessenger(MESSAGES))
    assert run("listen") == 0
    assert capsys.readouterr().out.splitlines() == [
        "12:00:05 alice: hi bob",
        "12:00:05 #team alice: hi team",
        "12:00:05 bob -> alice: copy",
    ]

    use(monkeypatch, FakeMessenger(MESSAGES))
    assert run("listen", "--count", "5", "--timeout", "2") == 1
    assert capsys.readouterr().err.endswith("conclave: error: 3 of 5 messages arrived within 2 s\n")


def test_group_create_and_members(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use(monkeypatch, FakeMessenger())
    assert run("group", "create", "team", "bob") == 0
    assert capsys.readouterr().out == "Created group #team (g-1).\n"
    assert run("group", "members", "team") == 0
    assert capsys.readouterr().out == "alice (admin)\nb-1\n"
    assert run("group", "members", "team", "--json") == 0
    assert json.loads(capsys.readouterr().out)[0] == {
        "account_id": "a-1",
        "username": "alice",
        "role": "admin",
    }
