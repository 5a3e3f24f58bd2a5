"""Local persistence of a :class:`~conclave_crypto.device.Device` in SQLite (protocol.md §12).

* The file is created with mode 0600 and re-chmodded on every open (it holds private keys).
* The schema is versioned with ``PRAGMA user_version``; :data:`MIGRATIONS` upgrades older
  files step by step inside one transaction; a file from a *newer* version is refused.
* Values are JSON documents (hex for bytes) whose shape is each class's ``to_json``.
* :meth:`CryptoStore.save_device` writes the whole device in one transaction, so a crash
  never leaves half-saved ratchet state (which could otherwise re-use message keys).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conclave_crypto.device import Device
from conclave_crypto.errors import StateError
from conclave_crypto.keys import IdentityKeyPair, PreKeyStore
from conclave_crypto.manager import SessionManager
from conclave_crypto.sender_keys import GroupSessions

SCHEMA_VERSION = 1


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


#: version N -> function migrating a version N file to N+1.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {0: _migrate_0_to_1}


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

    def save_device(self, device: Device) -> None:
        """Persist the whole device atomically (one transaction)."""
        sm = device.sessions
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
            db.execute(
                "INSERT OR REPLACE INTO session_manager VALUES (1, ?)", (_dumps(sm.to_json()),)
            )
            db.execute(
                "INSERT OR REPLACE INTO sender_keys VALUES (1, ?)",
                (_dumps(device.groups.to_json()),),
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
        row = self._db.execute("SELECT keys, prekeys FROM identity WHERE id = 1").fetchone()
        sm_row = self._db.execute("SELECT state FROM session_manager WHERE id = 1").fetchone()
        gs_row = self._db.execute("SELECT state FROM sender_keys WHERE id = 1").fetchone()
        if row is None or sm_row is None or gs_row is None:
            raise StateError("no device saved in this state file")
        try:
            identity = IdentityKeyPair.from_json(json.loads(row[0]))
            prekeys = PreKeyStore.from_json(json.loads(row[1]))
            sm = SessionManager.from_json(json.loads(sm_row[0]), identity, prekeys)
            gs = GroupSessions.from_json(json.loads(gs_row[0]))
        except (ValueError, KeyError, TypeError) as exc:
            raise StateError("corrupt state file") from exc
        return Device(sm, gs)


def file_mode(path: str | os.PathLike[str]) -> int:
    """Permission bits of a file (used by tests and diagnostics)."""
    with contextlib.suppress(FileNotFoundError):
        return stat.S_IMODE(os.stat(path).st_mode)
    return -1
