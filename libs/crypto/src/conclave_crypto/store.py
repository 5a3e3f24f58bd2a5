"""Local persistence of a :class:`~conclave_crypto.device.Device` in SQLite (protocol.md §12).

* The file is created with mode 0600 and re-chmodded on every open (it holds private keys).
* The schema is versioned with ``PRAGMA user_version``; :data:`MIGRATIONS` upgrades older
  files step by step inside one transaction; a file from a *newer* version is refused.
* Values are JSON documents (hex for bytes) whose shape is each class's ``to_json``.
  Schema 2 keeps one row per pairwise address and per (group, sender), so a client can
  persist only what a message changed (``save_device(dev, addresses=[...], groups=[])``).
* :meth:`CryptoStore.save_device` writes the whole device in one transaction, so a crash
  never leaves half-saved ratchet state (which could otherwise re-use message keys).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from conclave_crypto.device import Device
from conclave_crypto.errors import StateError
from conclave_crypto.keys import IdentityKeyPair, PreKeyStore
from conclave_crypto.manager import DeviceAddress, SessionManager
from conclave_crypto.sender_keys import GroupSessions

SCHEMA_VERSION = 2


def _migrate_0_to_1(db: sqlite3.Connection) -> None:
    # Individual execute() calls: executescript() would COMMIT our migration transaction.
    for statement in (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE identity (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            user_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            keys TEXT NOT NULL,
            prekeys TEXT NOT NULL
        )""",
        "CREATE TABLE session_manager (id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT NULL)",
        "CREATE TABLE sender_keys (id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT NULL)",
    ):
        db.execute(statement)


def _migrate_1_to_2(db: sqlite3.Connection) -> None:
    """Split the schema-1 blobs into one row per pairwise address and per sender chain set.

    Lets a client persist just the session that changed after each message.
    """
    for statement in (
        """CREATE TABLE sessions (
            user_id TEXT NOT NULL, device_id TEXT NOT NULL, sessions TEXT NOT NULL,
            PRIMARY KEY (user_id, device_id)
        )""",
        "CREATE TABLE own_sender_keys (group_id TEXT PRIMARY KEY, chain TEXT NOT NULL)",
        """CREATE TABLE received_sender_keys (
            group_id TEXT NOT NULL, user_id TEXT NOT NULL, device_id TEXT NOT NULL,
            chains TEXT NOT NULL, PRIMARY KEY (group_id, user_id, device_id)
        )""",
    ):
        db.execute(statement)
    row = db.execute("SELECT state FROM session_manager WHERE id = 1").fetchone()
    if row is not None:
        state = json.loads(row[0])
        for user, dev, sessions in state.pop("records"):
            db.execute("INSERT INTO sessions VALUES (?, ?, ?)", (user, str(dev), _dumps(sessions)))
        db.execute("UPDATE session_manager SET state = ? WHERE id = 1", (_dumps(state),))
    row = db.execute("SELECT state FROM sender_keys WHERE id = 1").fetchone()
    if row is not None:
        groups = json.loads(row[0])
        for gid, chain in groups["own"].items():
            db.execute("INSERT INTO own_sender_keys VALUES (?, ?)", (gid, _dumps(chain)))
        for gid, user, dev, chains in groups["received"]:
            db.execute(
                "INSERT INTO received_sender_keys VALUES (?, ?, ?, ?)",
                (gid, user, str(dev), _dumps(chains)),
            )
    db.execute("DROP TABLE sender_keys")


#: version N -> function migrating a version N file to N+1.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    0: _migrate_0_to_1,
    1: _migrate_1_to_2,
}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class CryptoStore:
    """A SQLite state file for one device."""

    def __init__(self, path: Path, db: sqlite3.Connection) -> None:
        self.path = path
        self._db = db

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> CryptoStore:
        """Open (creating with mode 0600 if needed) and migrate a state file.

        Raises:
            StateError: if the file is from a newer version or not a state file.
        """
        p = Path(path)
        fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, stat.S_IRUSR | stat.S_IWUSR)
        finally:
            os.close(fd)
        db = sqlite3.connect(p, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode = DELETE")
            db.execute("PRAGMA secure_delete = ON")
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            db.close()
            raise StateError("not a Conclave state file") from exc
        if version > SCHEMA_VERSION:
            db.close()
            raise StateError(f"state file version {version} is newer than {SCHEMA_VERSION}")
        if version < SCHEMA_VERSION:
            try:
                db.execute("BEGIN IMMEDIATE")
                for v in range(version, SCHEMA_VERSION):
                    MIGRATIONS[v](db)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                db.execute("ROLLBACK")
                db.close()
                raise StateError("migration failed") from exc
        return cls(p, db)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __enter__(self) -> CryptoStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        """``PRAGMA user_version`` of the open file."""
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def has_device(self) -> bool:
        """Whether an identity has been saved."""
        return self._db.execute("SELECT 1 FROM identity").fetchone() is not None

    def save_device(
        self,
        device: Device,
        *,
        addresses: Iterable[DeviceAddress] | None = None,
        groups: Iterable[str] | None = None,
    ) -> None:
        """Persist the device atomically (one transaction).

        Args:
            device: the device.
            addresses: if given, only these pairwise session rows are rewritten (use after
                encrypting/decrypting for a few addresses); None rewrites all of them.
            groups: likewise for sender-key rows of these groups; None rewrites all.

        Identity, pre-keys and the session manager's bookkeeping (known identities, device
        lists, replay cache) are always written: they change with every first message.
        """
        sm = device.sessions
        gs = device.groups
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT OR REPLACE INTO identity VALUES (1, ?, ?, ?, ?)",
                (
                    sm.address.user_id,
                    sm.address.device_id,
                    _dumps(sm.identity.to_json()),
                    _dumps(sm.prekeys.to_json()),
                ),
            )
            state = sm.to_json()
            del state["records"]
            db.execute("INSERT OR REPLACE INTO session_manager VALUES (1, ?)", (_dumps(state),))
            if addresses is None:
                db.execute("DELETE FROM sessions")
                addresses = list(sm.records)
            for a in addresses:
                rec = sm.records.get(a)
                if rec is None:
                    db.execute(
                        "DELETE FROM sessions WHERE user_id = ? AND device_id = ?",
                        (a.user_id, a.device_id),
                    )
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?)",
                        (a.user_id, a.device_id, _dumps([x.to_json() for x in rec.sessions])),
                    )
            if groups is None:
                db.execute("DELETE FROM own_sender_keys")
                db.execute("DELETE FROM received_sender_keys")
                groups = {*gs.own, *(g for g, _ in gs.received)}
            for g in groups:
                db.execute("DELETE FROM own_sender_keys WHERE group_id = ?", (g,))
                db.execute("DELETE FROM received_sender_keys WHERE group_id = ?", (g,))
                if g in gs.own:
                    db.execute(
                        "INSERT INTO own_sender_keys VALUES (?, ?)",
                        (g, _dumps(gs.own[g].to_json())),
                    )
                for (gid, a), chains in gs.received.items():
                    if gid == g:
                        db.execute(
                            "INSERT INTO received_sender_keys VALUES (?, ?, ?, ?)",
                            (g, a.user_id, a.device_id, _dumps([c.to_json() for c in chains])),
                        )
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('written_by', ?)",
                (f"conclave-crypto schema {SCHEMA_VERSION}",),
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def load_device(self) -> Device:
        """Load the saved device.

        Raises:
            StateError: if nothing was saved or the content is corrupt.
        """
        db = self._db
        row = db.execute("SELECT keys, prekeys FROM identity WHERE id = 1").fetchone()
        sm_row = db.execute("SELECT state FROM session_manager WHERE id = 1").fetchone()
        if row is None or sm_row is None:
            raise StateError("no device saved in this state file")
        try:
            identity = IdentityKeyPair.from_json(json.loads(row[0]))
            prekeys = PreKeyStore.from_json(json.loads(row[1]))
            state = json.loads(sm_row[0])
            state["records"] = [
                [u, d, json.loads(v)]
                for u, d, v in db.execute("SELECT user_id, device_id, sessions FROM sessions")
            ]
            sm = SessionManager.from_json(state, identity, prekeys)
            gs = GroupSessions.from_json(
                {
                    "own": {
                        g: json.loads(c)
                        for g, c in db.execute("SELECT group_id, chain FROM own_sender_keys")
                    },
                    "received": [
                        [g, u, d, json.loads(c)]
                        for g, u, d, c in db.execute(
                            "SELECT group_id, user_id, device_id, chains FROM received_sender_keys"
                        )
                    ],
                }
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise StateError("corrupt state file") from exc
        return Device(sm, gs)


def file_mode(path: str | os.PathLike[str]) -> int:
    """Permission bits of a file (used by tests and diagnostics)."""
    with contextlib.suppress(FileNotFoundError):
        return stat.S_IMODE(os.stat(path).st_mode)
    return -1
