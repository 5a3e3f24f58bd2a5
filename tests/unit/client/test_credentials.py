"""credentials.json: private permissions, atomic durable writes, round trip."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conclave_client.credentials import (
    Credentials,
    CredentialsError,
    CredentialStore,
    normalise_username,
)

WHEN = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)


def sample() -> Credentials:
    return Credentials(
        account_id="acc-1",
        username="alice",
        device_id="dev-1",
        session_id="ses-1",
        access_token="access-secret",
        access_token_expire_time=WHEN,
        refresh_token="refresh-secret",
        refresh_token_expire_time=WHEN,
        session_expire_time=WHEN,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_round_trip_and_permissions(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = CredentialStore(home)
    assert store.load() is None
    store.save(sample())
    assert mode(home) == 0o700
    assert mode(store.path) == 0o600
    assert store.load() == sample()
    assert sorted(p.name for p in home.iterdir()) == ["credentials.json"]


def test_default_home_is_conclave_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONCLAVE_HOME", str(tmp_path / "h"))
    store = CredentialStore()
    store.save(sample())
    assert (tmp_path / "h" / "credentials.json").exists()
    assert mode(tmp_path / "h") == 0o700


def test_permissions_hold_under_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = CredentialStore(tmp_path / "home")
        store.save(sample())
        store.save(sample())
    finally:
        os.umask(old)
    assert mode(store.path) == 0o600
    assert mode(tmp_path / "home") == 0o700


def test_loose_directory_is_tightened(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    CredentialStore(home).save(sample())
    assert mode(home) == 0o700


def test_shared_sticky_directory_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "shared"
    home.mkdir()
    home.chmod(0o1777)
    with pytest.raises(CredentialsError, match="private directory"):
        CredentialStore(home).save(sample())
    assert not (home / "credentials.json").exists()


def test_loose_file_is_tightened_on_load(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "home")
    store.save(sample())
    store.path.chmod(0o644)
    assert store.load() == sample()
    assert mode(store.path) == 0o600


def test_crash_before_rename_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CredentialStore(tmp_path / "home")
    store.save(sample())
    before = store.path.read_bytes()

    def crash(src: str, dst: str) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    rotated = sample().with_tokens(
        access_token="a2",
        access_token_expire_time=WHEN,
        refresh_token="r2",
        refresh_token_expire_time=WHEN,
        session_id="ses-1",
        device_id="dev-1",
        session_expire_time=WHEN,
    )
    with pytest.raises(OSError, match="power cut"):
        store.save(rotated)
    assert store.path.read_bytes() == before
    assert sorted(p.name for p in store.home.iterdir()) == ["credentials.json"]


def test_write_is_fsynced_before_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    CredentialStore(tmp_path / "home").save(sample())
    assert events == ["fsync-file", "rename", "fsync-dir"]


def test_logged_out_keeps_device_unless_removed() -> None:
    out = sample().logged_out()
    assert not out.logged_in
    assert (out.account_id, out.username, out.device_id) == ("acc-1", "alice", "dev-1")
    assert out.access_token == out.refresh_token == out.session_id == ""
    assert sample().logged_out(keep_device=False).device_id == ""


def test_repr_hides_tokens() -> None:
    text = repr(sample())
    assert "access-secret" not in text
    assert "refresh-secret" not in text


def test_corrupt_file_is_an_error(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "home")
    store.save(sample())
    store.path.write_text("{not json")
    with pytest.raises(CredentialsError):
        store.load()
    store.path.write_text('{"version": 99}')
    with pytest.raises(CredentialsError, match="unknown format"):
        store.load()


def test_lock_file_is_private(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "home")
    with store.locked():
        store.save(sample())
    with store.locked():
        assert store.load() == sample()
    assert mode(tmp_path / "home" / "credentials.lock") == 0o600


def test_normalise_username() -> None:
    assert normalise_username("Alice") == normalise_username("ALICE") == "alice"
    assert normalise_username("ｂｏｂ") == "bob"  # noqa: RUF001 (full-width look-alike)
