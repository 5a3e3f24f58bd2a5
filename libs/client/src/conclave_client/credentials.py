"""Local session credentials: ``$CONCLAVE_HOME/credentials.json``.

One file per client home (one user per ``CONCLAVE_HOME``). It holds the account, the device
this home logs in as, and the current session's tokens. The refresh token is the only
credential that can keep a session alive and it is single use (every refresh rotates it), so
the file is always replaced atomically: written to a temporary file in the same directory
(mode 0600), flushed and fsync'ed, renamed over the old file, and the directory fsync'ed. A
crash leaves either the old or the new file, never a torn one. The directory is kept private
(0700).

The ``device_id`` outlives the session: after ``logout`` (without removing the device) the
next login of the same user sends it, so the server keeps the same device (and its keys).

Tokens are secrets: nothing here logs or prints them, and :class:`Credentials` hides them from
its ``repr``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import tempfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conclave_client.home import conclave_home

FILE_NAME = "credentials.json"
LOCK_NAME = "credentials.lock"
FILE_MODE = 0o600
DIR_MODE = 0o700
FORMAT_VERSION = 1


class CredentialsError(Exception):
    """The local credentials file cannot be read or written safely."""


def normalise_username(username: str) -> str:
    """Normalises a username as the server does (Unicode NFKC, then case folding).

    Only used locally, to decide whether a stored device belongs to the user logging in.

    Args:
        username: The name as typed.

    Returns:
        The normalised form.
    """
    return unicodedata.normalize("NFKC", username).casefold().strip()


def _to_text(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _from_text(value: object) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise CredentialsError(f"bad timestamp in {FILE_NAME}: {value!r}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as err:
        raise CredentialsError(f"bad timestamp in {FILE_NAME}: {value!r}") from err
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Credentials:
    """What this client home knows about its account, device and session.

    Attributes:
        account_id: Account id (UUID).
        username: Normalised username as returned by the server.
        device_id: Device id (UUID) of this home; empty until the first login.
        session_id: Current session id; empty when logged out.
        access_token: Current access token (secret); empty when logged out.
        access_token_expire_time: When the access token expires.
        refresh_token: Latest refresh token (secret, single use); empty when logged out.
        refresh_token_expire_time: When the refresh token stops working if unused.
        session_expire_time: Absolute end of the session.
    """

    account_id: str
    username: str
    device_id: str = ""
    session_id: str = ""
    access_token: str = field(default="", repr=False)
    access_token_expire_time: datetime | None = None
    refresh_token: str = field(default="", repr=False)
    refresh_token_expire_time: datetime | None = None
    session_expire_time: datetime | None = None

    @property
    def logged_in(self) -> bool:
        """True when a session (and its refresh token) is stored."""
        return bool(self.session_id and self.refresh_token)

    def logged_out(self, keep_device: bool = True) -> Credentials:
        """Returns these credentials without the session (and optionally the device).

        Args:
            keep_device: Keep ``device_id`` so the next login reuses the device.

        Returns:
            A copy with every token cleared.
        """
        return Credentials(
            account_id=self.account_id,
            username=self.username,
            device_id=self.device_id if keep_device else "",
        )

    def with_tokens(
        self,
        *,
        access_token: str,
        access_token_expire_time: datetime | None,
        refresh_token: str,
        refresh_token_expire_time: datetime | None,
        session_id: str,
        device_id: str,
        session_expire_time: datetime | None,
    ) -> Credentials:
        """Returns a copy carrying a (rotated or new) set of session tokens."""
        return replace(
            self,
            access_token=access_token,
            access_token_expire_time=access_token_expire_time,
            refresh_token=refresh_token,
            refresh_token_expire_time=refresh_token_expire_time,
            session_id=session_id,
            device_id=device_id,
            session_expire_time=session_expire_time,
        )

    def to_json(self) -> dict[str, Any]:
        """The on-disk JSON object (contains the tokens: never print it)."""
        return {
            "version": FORMAT_VERSION,
            "account_id": self.account_id,
            "username": self.username,
            "device_id": self.device_id,
            "session_id": self.session_id,
            "access_token": self.access_token,
            "access_token_expire_time": _to_text(self.access_token_expire_time),
            "refresh_token": self.refresh_token,
            "refresh_token_expire_time": _to_text(self.refresh_token_expire_time),
            "session_expire_time": _to_text(self.session_expire_time),
        }

    @classmethod
    def from_json(cls, data: object) -> Credentials:
        """Parses the on-disk JSON object.

        Args:
            data: The decoded JSON document.

        Returns:
            The credentials.

        Raises:
            CredentialsError: The document is not a credentials object of a known version.
        """
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            raise CredentialsError(f"{FILE_NAME} has an unknown format")

        def text(key: str) -> str:
            value = data.get(key, "")
            if value is None:
                return ""
            if not isinstance(value, str):
                raise CredentialsError(f"bad {key} in {FILE_NAME}")
            return value

        return cls(
            account_id=text("account_id"),
            username=text("username"),
            device_id=text("device_id"),
            session_id=text("session_id"),
            access_token=text("access_token"),
            access_token_expire_time=_from_text(data.get("access_token_expire_time")),
            refresh_token=text("refresh_token"),
            refresh_token_expire_time=_from_text(data.get("refresh_token_expire_time")),
            session_expire_time=_from_text(data.get("session_expire_time")),
        )


def write_private_atomic(path: Path, content: bytes) -> None:
    """Replaces ``path`` with ``content`` atomically and durably, readable by the owner only.

    Args:
        path: Destination file; its directory must exist.
        content: Full new content.
    """
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class CredentialStore:
    """Reads and writes ``credentials.json`` in one client home.

    Args:
        home: The client home directory; defaults to ``$CONCLAVE_HOME``.
    """

    def __init__(self, home: Path | None = None) -> None:
        self._home = home

    @property
    def home(self) -> Path:
        """The client home directory (created 0700 on first use)."""
        if self._home is None:
            self._home = conclave_home(create=True)
        else:
            self._home.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        return self._home

    @property
    def path(self) -> Path:
        """Location of ``credentials.json``."""
        return self.home / FILE_NAME

    def _ensure_private_dir(self) -> None:
        home = self.home
        info = home.stat()
        if stat.S_IMODE(info.st_mode) & 0o077 == 0:
            return
        if info.st_uid != os.getuid() or info.st_mode & stat.S_ISVTX:
            raise CredentialsError(
                f"{home} is shared with other users; point CONCLAVE_HOME at a private directory"
            )
        home.chmod(DIR_MODE)

    def load(self) -> Credentials | None:
        """Returns the stored credentials, or None when there are none.

        A file readable by others is tightened to 0600 first.

        Raises:
            CredentialsError: The file exists but cannot be parsed.
        """
        path = self.path
        try:
            info = path.stat()
        except FileNotFoundError:
            return None
        if stat.S_IMODE(info.st_mode) != FILE_MODE:
            path.chmod(FILE_MODE)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise CredentialsError(f"cannot read {path}: {err.__class__.__name__}") from err
        return Credentials.from_json(data)

    def save(self, credentials: Credentials) -> None:
        """Stores ``credentials`` atomically (temp file, fsync, rename; mode 0600)."""
        self._ensure_private_dir()
        content = json.dumps(credentials.to_json(), indent=2, sort_keys=True) + "\n"
        write_private_atomic(self.path, content.encode("utf-8"))

    def delete(self) -> None:
        """Removes the credentials file (no error if absent)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Holds an exclusive lock so concurrent CLI processes refresh one at a time.

        Two processes presenting the same refresh token would look like token theft to the
        server (which then revokes the session), so refresh happens under this lock and
        re-reads the file first.
        """
        self._ensure_private_dir()
        fd = os.open(self.home / LOCK_NAME, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
