"""Disappearing messages on the device: what to delete, and when.

The server sets ``MessageDelivery.expire_time`` on every message; a message is a
*disappearing* one when ``expire_time - server_time`` equals a disappearing timer this
device has known for the conversation (``docs/protocol.md`` §8). For those, everything the
client kept must go at ``expire_time``: a file ``listen`` saved, and the message's record
in ``client.db``. This module keeps that schedule in ``client.db``:

* ``conversation_timers``: every non-zero timer this device has seen for a conversation
  (from ``policy_change`` pushes and ``GetEffectivePolicy``). A message keeps the timer it
  was sent with, so one sent just before a change must still match: hence all timers
  seen, not only the current one.
* ``expiring``: message id, ``expire_time`` and the saved file (if any), until swept.

:meth:`ExpiryStore.sweep` deletes what is due; :class:`Sweeper` runs it in the background
while ``listen`` waits on its stream. The clock is injectable (``clock``) so the schedule
can be tested without waiting for it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Clock = Callable[[], float]
"""Seconds since the epoch (``time.time``)."""

TIMER_TOLERANCE_SECONDS = 1.0
"""Slack when matching ``expire_time - server_time`` to a timer: the server computes
expire_time from the same instant, so only rounding to whole seconds is expected."""
SWEEP_INTERVAL_SECONDS = 5.0
"""Longest a :class:`Sweeper` sleeps between sweeps (it wakes earlier for a due item)."""


def conversation_key(peer_account_id: str = "", group_id: str = "") -> str:
    """The ``client.db`` key of a conversation: ``peer:ID`` or ``group:ID``."""
    return f"group:{group_id}" if group_id else f"peer:{peer_account_id}"


@dataclass(frozen=True)
class Expired:
    """One swept message: its id, when it expired, and the file deleted (if any)."""

    message_id: str
    expire_time: float
    path: Path | None


class ExpiryStore:
    """The disappearing-message tables of ``client.db``.

    Uses its own connection (and a lock), so a :class:`Sweeper` thread can sweep while
    the stream reader records new messages.

    Args:
        path: ``$CONCLAVE_HOME/client.db``.
        clock: Current time in epoch seconds (tests pass a clock of their own).
    """

    def __init__(self, path: Path, *, clock: Clock = time.time) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        self.clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        for statement in (
            """CREATE TABLE IF NOT EXISTS conversation_timers (conversation TEXT NOT NULL,
                timer_seconds INTEGER NOT NULL, PRIMARY KEY (conversation, timer_seconds))""",
            """CREATE TABLE IF NOT EXISTS expiring (message_id TEXT PRIMARY KEY,
                expire_time REAL NOT NULL, path TEXT)""",
            "CREATE INDEX IF NOT EXISTS expiring_by_time ON expiring (expire_time)",
        ):
            self._db.execute(statement)

    def close(self) -> None:
        """Closes the connection."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> ExpiryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def remember_timer(self, conversation: str, seconds: int) -> None:
        """Records a timer seen for ``conversation`` (0, "off", needs no record)."""
        if seconds <= 0:
            return
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO conversation_timers VALUES (?, ?)", (conversation, seconds)
            )

    def timers(self, conversation: str) -> set[int]:
        """Every non-zero timer this device has seen for ``conversation``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT timer_seconds FROM conversation_timers WHERE conversation = ?",
                (conversation,),
            ).fetchall()
        return {int(r[0]) for r in rows}

    def is_disappearing(self, conversation: str, lifetime: float) -> bool:
        """True when a message living ``lifetime`` s was sent under a known timer."""
        return any(abs(lifetime - t) <= TIMER_TOLERANCE_SECONDS for t in self.timers(conversation))

    def track(self, message_id: str, expire_time: float, path: Path | None = None) -> None:
        """Schedules ``message_id`` (and the file saved for it) for deletion at expiry."""
        with self._lock:
            self._db.execute(
                """INSERT INTO expiring VALUES (?, ?, ?) ON CONFLICT (message_id) DO UPDATE
                   SET expire_time = excluded.expire_time,
                       path = COALESCE(excluded.path, expiring.path)""",
                (message_id, expire_time, str(path) if path is not None else None),
            )

    def pending(self) -> list[Expired]:
        """Everything scheduled and not swept yet, soonest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT message_id, expire_time, path FROM expiring ORDER BY expire_time"
            ).fetchall()
        return [Expired(str(m), float(e), Path(p) if p else None) for m, e, p in rows]

    def next_due(self) -> float | None:
        """The earliest scheduled expiry, or None when nothing is scheduled."""
        with self._lock:
            row = self._db.execute("SELECT MIN(expire_time) FROM expiring").fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def sweep(self) -> list[Expired]:
        """Deletes every file and record whose ``expire_time`` has passed.

        The message's ``seen`` row goes too: the server never delivers a message after
        its expiry, so nothing is left to de-duplicate. A file already gone (the user
        deleted or moved it) is not an error. A file that cannot be deleted stays
        scheduled and is tried again at the next sweep.

        Returns:
            What was deleted.
        """
        now = self.clock()
        swept: list[Expired] = []
        with self._lock:
            rows = self._db.execute(
                "SELECT message_id, expire_time, path FROM expiring WHERE expire_time <= ?",
                (now,),
            ).fetchall()
            for message_id, expire_time, path in rows:
                target = Path(path) if path else None
                if target is not None:
                    try:
                        target.unlink()
                    except FileNotFoundError:
                        pass
                    except OSError:
                        continue
                self._db.execute("DELETE FROM expiring WHERE message_id = ?", (message_id,))
                with contextlib.suppress(sqlite3.OperationalError):  # no seen table yet
                    self._db.execute("DELETE FROM seen WHERE message_id = ?", (message_id,))
                swept.append(Expired(str(message_id), float(expire_time), target))
        return swept


class Sweeper:
    """Runs :meth:`ExpiryStore.sweep` in a daemon thread until :meth:`stop`.

    Sleeps until the next item is due, at most ``interval`` seconds (new items may be
    scheduled meanwhile), so a file is deleted within ``interval`` of its expiry.

    Args:
        store: The schedule.
        on_expired: Called (in the sweeper thread) with each deleted item.
        interval: Longest sleep between sweeps, in seconds.
    """

    def __init__(
        self,
        store: ExpiryStore,
        on_expired: Callable[[Expired], None] | None = None,
        *,
        interval: float = SWEEP_INTERVAL_SECONDS,
    ) -> None:
        self._store = store
        self._on_expired = on_expired
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="conclave-sweeper", daemon=True)

    def start(self) -> Sweeper:
        """Starts the thread; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops the thread and waits for it."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def __enter__(self) -> Sweeper:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for item in self._store.sweep():
                    if self._on_expired is not None:
                        self._on_expired(item)
                due = self._store.next_due()
            except sqlite3.Error:
                due = None  # locked or closing: try again next round
            wait = self._interval
            if due is not None:
                wait = min(wait, max(due - self._store.clock(), 0.05))
            self._stop.wait(wait)


__all__ = [
    "SWEEP_INTERVAL_SECONDS",
    "Clock",
    "Expired",
    "ExpiryStore",
    "Sweeper",
    "conversation_key",
]
