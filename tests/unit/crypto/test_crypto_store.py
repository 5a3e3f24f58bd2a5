"""SQLite persistence: file mode, round trip, versioning and the frozen schema-1 file."""

from __future__ import annotations

import json
import pathlib
import shutil
import sqlite3

import pytest
from conclave_crypto.device import Device
from conclave_crypto.errors import DecryptionError, StateError
from conclave_crypto.manager import DeviceAddress
from conclave_crypto.store import SCHEMA_VERSION, CryptoStore, file_mode
from conclave_crypto.testing import bundle_of

DATA = pathlib.Path(__file__).parent / "data"


def test_state_file_created_with_mode_0600(tmp_path: pathlib.Path) -> None:
    """A new state file is readable and writable by its owner only."""
    path = tmp_path / "state.sqlite"
    with CryptoStore.open(path) as store:
        store.save_device(Device.create("alice", "1"))
    assert file_mode(path) == 0o600


def test_existing_state_file_is_tightened_to_0600(tmp_path: pathlib.Path) -> None:
    """Opening a state file with loose permissions resets them to 0600."""
    path = tmp_path / "state.sqlite"
    CryptoStore.open(path).close()
    path.chmod(0o644)
    CryptoStore.open(path).close()
    assert file_mode(path) == 0o600


def test_device_round_trip_keeps_working_sessions(tmp_path: pathlib.Path) -> None:
    """A saved and reloaded device continues its pairwise and group sessions."""
    alice, bob = Device.create("alice", "1"), Device.create("bob", "1")
    bob.prekey_upload(one_time=2, kem_one_time=1)
    alice.sessions.process_bundle(bundle_of(bob.sessions))
    a, b = alice.sessions.address, bob.sessions.address
    bob.sessions.decrypt(a, alice.sessions.encrypt(b, b"hello"))
    late = alice.sessions.encrypt(b, b"late")
    bob.sessions.decrypt(a, alice.sessions.encrypt(b, b"skip ahead"))
    dist = alice.sessions.encrypt(b, alice.groups.distribution("g"))
    bob.groups.process_distribution(a, bob.sessions.decrypt(a, dist))
    path = tmp_path / "bob.sqlite"
    with CryptoStore.open(path) as store:
        store.save_device(bob)
    with CryptoStore.open(path) as store:
        bob2 = store.load_device()
    assert bob2.identity.public == bob.identity.public
    assert bob2.sessions.decrypt(a, late) == b"late"
    assert bob2.sessions.decrypt(a, alice.sessions.encrypt(b, b"next")) == b"next"
    assert alice.sessions.decrypt(b, bob2.sessions.encrypt(a, b"reply")) == b"reply"
    assert bob2.groups.decrypt(a, alice.groups.encrypt("g", b"grp")) == ("g", b"grp")
    with pytest.raises(DecryptionError):  # replay still rejected after reload
        bob2.sessions.decrypt(a, late)


def test_newer_schema_refused(tmp_path: pathlib.Path) -> None:
    """A state file written by a newer version is refused instead of being misread."""
    path = tmp_path / "future.sqlite"
    CryptoStore.open(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StateError):
        CryptoStore.open(path)


def test_empty_and_garbage_files(tmp_path: pathlib.Path) -> None:
    """An empty store has no device; a non-SQLite file is a StateError."""
    with CryptoStore.open(tmp_path / "empty.sqlite") as store:
        assert not store.has_device()
        with pytest.raises(StateError):
            store.load_device()
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StateError):
        CryptoStore.open(junk)


@pytest.mark.parametrize("version", [1, 2])
def test_frozen_state_files_migrate_load_and_decrypt(tmp_path: pathlib.Path, version: int) -> None:
    """Every committed frozen state file (schema 1 from v0.1.0, schema 2) migrates and decrypts."""
    path = tmp_path / f"state_v{version}.sqlite"
    shutil.copyfile(DATA / f"state_v{version}.sqlite", path)
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == version
    expect = json.loads((DATA / f"state_v{version}_expect.json").read_text())
    with CryptoStore.open(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        dev = store.load_device()
    assert dev.sessions.address == DeviceAddress(expect["user_id"], expect["device_id"])
    assert dev.identity.public.encode().hex() == expect["identity"]
    peer = DeviceAddress(*expect["peer"])
    for ct_hex, pt in expect["pairwise"]:
        assert dev.sessions.decrypt(peer, bytes.fromhex(ct_hex)) == pt.encode()
    ct_hex, pt = expect["group"]
    assert dev.groups.decrypt(peer, bytes.fromhex(ct_hex)) == ("family", pt.encode())
    assert file_mode(path) == 0o600


def test_migration_1_to_2_splits_rows(tmp_path: pathlib.Path) -> None:
    """The 1->2 migration moves sessions and sender keys into one row each."""
    path = tmp_path / "s.sqlite"
    shutil.copyfile(DATA / "state_v1.sqlite", path)
    CryptoStore.open(path).close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 1
        assert raw.execute("SELECT COUNT(*) FROM own_sender_keys").fetchone()[0] == 1
        assert raw.execute("SELECT COUNT(*) FROM received_sender_keys").fetchone()[0] == 1
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "sender_keys" not in tables
        state = json.loads(raw.execute("SELECT state FROM session_manager").fetchone()[0])
        assert "records" not in state


def test_incremental_save_of_one_address(tmp_path: pathlib.Path) -> None:
    """Saving only the touched address persists it and leaves other rows intact."""
    alice = Device.create("alice", "1")
    bob, carol = Device.create("bob", "1"), Device.create("carol", "1")
    for peer in (bob, carol):
        peer.prekey_upload(one_time=1, kem_one_time=1)
        alice.sessions.process_bundle(bundle_of(peer.sessions))
    path = tmp_path / "alice.sqlite"
    with CryptoStore.open(path) as store:
        store.save_device(alice)
        msg = alice.sessions.encrypt(bob.sessions.address, b"one")
        store.save_device(alice, addresses=[bob.sessions.address], groups=[])
        alice.sessions.update_devices("carol", [])
        store.save_device(alice, addresses=[carol.sessions.address], groups=[])
    with CryptoStore.open(path) as store:
        again = store.load_device()
    assert set(again.sessions.records) == {bob.sessions.address}
    assert bob.sessions.decrypt(alice.sessions.address, msg) == b"one"
    nxt = again.sessions.encrypt(bob.sessions.address, b"two")
    assert bob.sessions.decrypt(alice.sessions.address, nxt) == b"two"
