"""The device's disappearing-message schedule and the ``retention set`` duration syntax.

Pure logic on a real SQLite file (``client.db``) with an injected clock; the end-to-end
behaviour on the stack is in tests/integration/client/test_cli_retention.py.
"""

from __future__ import annotations

import argparse
import math
import sqlite3
from pathlib import Path

import pytest
from conclave_client import cli
from conclave_client.disappearing import ExpiryStore, conversation_key
from conclave_client.retention_client import INHERIT


def test_a_message_matches_any_timer_seen_for_its_conversation(tmp_path: Path) -> None:
    with ExpiryStore(tmp_path / "client.db") as store:
        alice, team = conversation_key(peer_account_id="a-1"), conversation_key(group_id="g-1")
        assert (alice, team) == ("peer:a-1", "group:g-1")
        store.remember_timer(alice, 0)  # "off" is not a timer
        assert store.timers(alice) == set()
        store.remember_timer(alice, 30)
        store.remember_timer(alice, 3600)  # changed later: messages keep their own timer
        assert store.is_disappearing(alice, 30.4)
        assert store.is_disappearing(alice, 3599.2)
        assert not store.is_disappearing(alice, 2_592_000)  # the undelivered-message TTL
        assert not store.is_disappearing(alice, 45)
        assert not store.is_disappearing(team, 30)  # timers are per conversation


def test_sweep_deletes_due_files_and_records_only(tmp_path: Path) -> None:
    now = [1_000.0]
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    due, later = downloads / "due.txt", downloads / "later.txt"
    due.write_text("x")
    later.write_text("y")
    db = tmp_path / "client.db"
    with sqlite3.connect(db) as seen:
        seen.execute("CREATE TABLE seen (message_id TEXT PRIMARY KEY, seen_at REAL)")
        seen.executemany("INSERT INTO seen VALUES (?, 0)", [("m-1",), ("m-2",), ("m-3",)])
    with ExpiryStore(db, clock=lambda: now[0]) as store:
        store.track("m-1", 990.0)  # a text message: only records to delete
        store.track("m-2", 1_000.0, due)
        store.track("m-3", 2_000.0, later)
        store.track("m-2", 1_000.0)  # scheduled again without a path: the path stays
        assert store.next_due() == 990.0
        swept = store.sweep()
        assert [(s.message_id, s.path) for s in swept] == [("m-1", None), ("m-2", due)]
        assert not due.exists() and later.exists()
        assert [p.message_id for p in store.pending()] == ["m-3"]
        later.unlink()  # the user removed it already: not an error
        now[0] = math.inf
        assert [s.message_id for s in store.sweep()] == ["m-3"]
        assert store.next_due() is None
    with sqlite3.connect(db) as seen:
        assert seen.execute("SELECT message_id FROM seen").fetchall() == []


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("30", 30), ("5m", 300), ("5 min", 300), ("1h", 3600), ("7d", 604_800),
     ("4w", 2_419_200), ("off", 0), ("inherit", INHERIT), ("1H", 3600)],
)  # fmt: skip
def test_durations(text: str, seconds: int) -> None:
    assert cli._duration_arg(allow_off=True)(text) == seconds


@pytest.mark.parametrize("text", ["soon", "1.5h", "-30s", "1h30m", ""])
def test_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli._duration_arg(allow_off=True)(text)


def test_off_is_only_for_the_timer() -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli._duration_arg(allow_off=False)("off")


def test_human_durations() -> None:
    assert [cli._timer_text(s) for s in (0, 30, 90, 3600, 86_400, 2_419_200)] == [
        "off", "30 s", "90 s", "1 h", "1 d", "28 d",
    ]  # fmt: skip
    assert [cli._remaining_text(s) for s in (29.6, 299, 3599, 86_000, 400_000)] == [
        "30 s", "5 min", "60 min", "24 h", "5 d",
    ]  # fmt: skip
