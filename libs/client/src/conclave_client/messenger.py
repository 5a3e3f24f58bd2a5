"""End-to-end-encrypted messaging for one client home: :class:`Client`.

:class:`Client` ties the session (:class:`~conclave_client.auth_client.AuthClient`), the
device's end-to-end state (``$CONCLAVE_HOME/device.db``, written by ``conclave login``) and
the messaging, keys and auth services together:

* :meth:`Client.send_direct` resolves the user (``AuthService.LookupAccounts``), brings the
  recipient's and our own device lists up to date (``KeyService.LookupIdentityKeys``; sessions
  of removed devices are dropped, devices whose identity changed are re-keyed), claims
  prekey bundles only for devices without a session (``ClaimPrekeyBundles``), encrypts once
  per recipient device and per other device of ours, and sends one envelope. A
  ``device_mismatch`` answer is applied (claim missing, drop extra, re-key stale) and the
  send retried once with the same message id.
* :meth:`Client.listen` reads the device's ``Subscribe`` stream, decrypts, de-duplicates by
  message id (ids are remembered in ``$CONCLAVE_HOME/client.db``) and acknowledges each
  item after it was handed out.
* Disappearing messages: a message whose ``expire_time - server_time`` equals a
  disappearing timer known for its conversation (live ``policy_change`` pushes, else
  ``RetentionService.GetEffectivePolicy`` once per stream) is marked ``disappearing`` and
  scheduled in ``client.db`` for deletion at ``expire_time``
  (:mod:`conclave_client.disappearing`; ``listen`` sweeps the schedule).
* Groups use sender keys: before its first message to a group, and again whenever the
  group's membership version moved, a sender distributes its sender key over the pairwise
  sessions (one ``SendDirectMessage`` per member account, tagged ``sender_key``). When a
  member device was removed since the last distribution the chain is rotated first, so
  removed members cannot read later messages. A group message is then one ciphertext.
  Group names live only on the clients: a local name -> group id map in ``client.db``; the
  name travels to the members inside the (encrypted) sender-key frame.

Content framing (the plaintext under every pairwise or sender-key ciphertext; the crypto
library pads it): UTF-8 JSON, one object, version field ``v`` = 1::

    {"v": 1, "type": "text", "from": USERNAME, "to": USERNAME, "text": TEXT}   # 1:1
    {"v": 1, "type": "text", "from": USERNAME, "text": TEXT}                   # group
    {"v": 1, "type": "sender_key", "from": USERNAME, "group_id": UUID,
     "group_name": NAME, "key": BASE64(SenderKeyDistribution)}                  # pairwise only
    {"v": 1, "type": "file", "from": USERNAME, ["to": USERNAME,] "text": CAPTION,
     "attachment": {"v": 1, "media_id": ID, "pointer": BASE64(AttachmentPointer),
                    "name": FILE_NAME, "content_type": MIME}}                   # 1:1 or group

Type ``file`` is an addition within version 1: clients that predate it skip it as an
unknown type (the rule below), so no frame version bump was needed; the attachment record
carries its own version (:mod:`conclave_client.files`). Every field except ``v`` and
``attachment`` is a string.

``from`` and ``to`` are informational: the names shown are those the server reports for the
authenticated sender and peer account ids (``LookupAccounts``, cached in ``client.db``).
Unknown types and versions are skipped (acknowledged, not shown). State changes of
the device are saved before anything leaves it, under a lock shared by every process using
the same ``$CONCLAVE_HOME`` (``device.lock``), so ``listen`` and ``send`` can run side by side.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import sqlite3
import time
import typing
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
from conclave.common.v1 import types_pb2
from conclave.keys.v1 import keys_pb2, keys_pb2_grpc
from conclave.messaging.v1 import messaging_pb2 as M
from conclave.messaging.v1 import messaging_pb2_grpc
from conclave_crypto import (
    CryptoStore,
    DecryptionError,
    Device,
    DeviceAddress,
    IdentityKey,
    PreKeyBundle,
)

from conclave_client.auth_client import AuthClient, ClientError
from conclave_client.credentials import CredentialStore, normalise_username
from conclave_client.disappearing import ExpiryStore, conversation_key
from conclave_client.endpoints import Endpoints
from conclave_client.files import Attachment, AttachmentError
from conclave_client.home import conclave_home
from conclave_client.keys_client import DEVICE_FILE, KeysClient, registration_id
from conclave_client.retention_client import RetentionClient

DEFAULT_TIMEOUT = 15.0
FRAME_VERSION = 1
STATE_FILE = "client.db"
LOCK_FILE = "device.lock"
SEEN_TTL_SECONDS = 30 * 24 * 3600
MEMBERS_PAGE = 1000
CLAIM_WAIT_SECONDS = 120.0
"""Longest a send waits in total for the prekey-claim rate limit before failing."""

T = TypeVar("T")


class MessengerError(ClientError):
    """A messaging operation that cannot be done (unknown user or group, no keys, ...)."""


@dataclass(frozen=True)
class Message:
    """One decrypted text message.

    Attributes:
        id: Message id (UUID) chosen by the sender.
        sender: Sender username (verified against the sender account), else its account id.
        sender_account_id: Sending account.
        sender_device_id: Sending device.
        conversation: ``USERNAME`` of the other party for 1:1 messages (the recipient for
            copies of our own sends), ``#NAME`` for group messages.
        text: The text.
        group_id: Group id for group messages, else empty.
        server_time: When the server accepted it.
        outgoing: True for copies of what another device of ours sent.
        attachment: The file record of a ``file`` message (key included: never print it).
        attachment_error: Why a ``file`` message's record could not be used, else empty.
        expire_time: When the server deletes it (and, if ``disappearing``, this device).
        disappearing: True when it was sent under the conversation's disappearing timer:
            whatever the client keeps of it must be deleted at ``expire_time``.
    """

    id: str
    sender: str
    sender_account_id: str
    sender_device_id: str
    conversation: str
    text: str
    group_id: str = ""
    server_time: datetime | None = None
    outgoing: bool = False
    attachment: Attachment | None = None
    attachment_error: str = ""
    expire_time: datetime | None = None
    disappearing: bool = False

    @property
    def expired(self) -> bool:
        """True for a disappearing message whose ``expire_time`` has already passed."""
        return (
            self.disappearing
            and self.expire_time is not None
            and self.expire_time <= datetime.now(UTC)
        )

    @property
    def is_file(self) -> bool:
        """True for a ``file`` message (even when its record was unusable)."""
        return self.attachment is not None or bool(self.attachment_error)

    def to_json(self) -> dict[str, Any]:
        """The ``listen --json`` object (an attachment only as name, size and type)."""
        stamp = self.server_time
        extra: dict[str, Any] = {}
        if self.is_file:
            extra["attachment"] = self.attachment.summary() if self.attachment else None
        return {
            "id": self.id,
            "from": self.sender,
            "conversation": self.conversation,
            "text": self.text,
            "group_id": self.group_id or None,
            "from_account_id": self.sender_account_id,
            "from_device_id": self.sender_device_id,
            "outgoing": self.outgoing,
            "server_time": _iso(stamp),
            "expire_time": _iso(self.expire_time),
            "disappearing": self.disappearing,
            **extra,
        }


@dataclass(frozen=True)
class PolicyChange:
    """A conversation's disappearing timer changed (live ``policy_change`` push).

    Attributes:
        conversation: ``USERNAME`` of the other party, or ``#NAME`` for a group.
        peer_account_id: The other party of a 1:1 conversation, else empty.
        group_id: The group, else empty.
        timer_seconds: The timer now in force; 0 means disappearing messages are off.
        changed_by: Username (else account id) of who changed it.
        changed_by_account_id: Account that changed it.
        change_time: When it changed.
    """

    conversation: str
    peer_account_id: str
    group_id: str
    timer_seconds: int
    changed_by: str
    changed_by_account_id: str
    change_time: datetime | None

    def to_json(self) -> dict[str, Any]:
        """The ``listen --json`` object (``"type": "policy_change"``)."""
        return {
            "type": "policy_change",
            "conversation": self.conversation,
            "group_id": self.group_id or None,
            "disappearing_message_timer": self.timer_seconds,
            "disappearing": self.timer_seconds > 0,
            "changed_by": self.changed_by,
            "changed_by_account_id": self.changed_by_account_id,
            "change_time": _iso(self.change_time),
        }


@dataclass(frozen=True)
class Sent:
    """Outcome of a send.

    Message id, server time, whether it was a retry of a stored one, and how many device
    ciphertexts (1:1) or sender-key envelopes (groups) went out.
    """

    id: str
    server_time: datetime | None
    duplicate: bool
    devices: int


@dataclass(frozen=True)
class MemberInfo:
    """One group member: username (if known here) or account id, and role."""

    account_id: str
    username: str | None
    role: str


@dataclass
class _Pending:
    token: str
    delivery: M.MessageDelivery


@dataclass
class _GroupRow:
    group_id: str
    name: str | None
    version: int = -1
    distributed_to: set[DeviceAddress] = field(default_factory=set)


def _stamp(ts: Any, present: bool) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if present else None


def _iso(stamp: datetime | None) -> str | None:
    return stamp.isoformat().replace("+00:00", "Z") if stamp else None


def encode_frame(kind: str, **fields: object) -> bytes:
    """The content frame (see module docstring) as bytes."""
    return json.dumps({"v": FRAME_VERSION, "type": kind, **fields}, sort_keys=True).encode()


def decode_frame(data: bytes) -> dict[str, Any] | None:
    """Parses a content frame; None when it is not a frame of a version we know.

    Every field is a string except ``attachment`` (an object, checked by
    :meth:`Attachment.from_record`).
    """
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(value, dict) or value.get("v") != FRAME_VERSION:
        return None
    for k, v in value.items():
        if k == "v":
            continue
        if not (isinstance(v, str) or (k == "attachment" and isinstance(v, dict))):
            return None
    return {k: v for k, v in value.items() if k != "v"}


def ciphertext_kind(wire: bytes) -> M.CiphertextKind.ValueType:
    """PREKEY for a PQXDH initial message (``0x01 0x02 ...``), else RATCHET."""
    return M.CIPHERTEXT_KIND_PREKEY if wire[1:2] == b"\x02" else M.CIPHERTEXT_KIND_RATCHET


def bundle_from_pb(account_id: str, b: keys_pb2.PrekeyBundle) -> PreKeyBundle:
    """A KeyService bundle as the crypto library's :class:`PreKeyBundle`."""
    one_time = b.HasField("one_time_prekey")
    kem = b.HasField("pq_prekey")
    return PreKeyBundle(
        user_id=account_id,
        device_id=b.device_id,
        identity=IdentityKey(
            bytes(b.identity_key.signing_public_key), bytes(b.identity_key.agreement_public_key)
        ),
        signed_prekey_id=b.signed_prekey.key_id,
        signed_prekey=bytes(b.signed_prekey.public_key),
        signed_prekey_signature=bytes(b.signed_prekey.signature),
        one_time_prekey_id=b.one_time_prekey.key_id if one_time else None,
        one_time_prekey=bytes(b.one_time_prekey.public_key) if one_time else None,
        kem_prekey_id=b.pq_prekey.key_id if kem else None,
        kem_prekey=bytes(b.pq_prekey.public_key) if kem else None,
        kem_prekey_signature=bytes(b.pq_prekey.signature) if kem else None,
    )


class _LocalState:
    """``client.db``: seen message ids, known usernames, local group names and distributions."""

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for statement in (
            "CREATE TABLE IF NOT EXISTS seen (message_id TEXT PRIMARY KEY, seen_at REAL)",
            "CREATE TABLE IF NOT EXISTS accounts (account_id TEXT PRIMARY KEY, username TEXT)",
            """CREATE TABLE IF NOT EXISTS groups (group_id TEXT PRIMARY KEY, name TEXT UNIQUE,
                version INTEGER NOT NULL DEFAULT -1, distributed_to TEXT NOT NULL DEFAULT '[]')""",
        ):
            self._db.execute(statement)
        self._db.execute("DELETE FROM seen WHERE seen_at < ?", (time.time() - SEEN_TTL_SECONDS,))

    def close(self) -> None:
        self._db.close()

    def seen(self, message_id: str) -> bool:
        row = self._db.execute("SELECT 1 FROM seen WHERE message_id = ?", (message_id,))
        return row.fetchone() is not None

    def mark_seen(self, message_id: str) -> None:
        self._db.execute("INSERT OR IGNORE INTO seen VALUES (?, ?)", (message_id, time.time()))

    def username(self, account_id: str) -> str | None:
        row = self._db.execute("SELECT username FROM accounts WHERE account_id = ?", (account_id,))
        found = row.fetchone()
        return str(found[0]) if found else None

    def remember(self, account_id: str, username: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO accounts VALUES (?, ?)", (account_id, username))

    def group_by_name(self, name: str) -> _GroupRow | None:
        row = self._db.execute("SELECT * FROM groups WHERE name = ?", (name,)).fetchone()
        return self._row(row)

    def group(self, group_id: str) -> _GroupRow | None:
        row = self._db.execute("SELECT * FROM groups WHERE group_id = ?", (group_id,)).fetchone()
        return self._row(row)

    @staticmethod
    def _row(row: Any) -> _GroupRow | None:
        if row is None:
            return None
        targets = {DeviceAddress(u, d) for u, d in json.loads(row[3])}
        return _GroupRow(str(row[0]), row[1], int(row[2]), targets)

    def save_group(self, g: _GroupRow) -> None:
        targets = json.dumps(sorted([a.user_id, a.device_id] for a in g.distributed_to))
        self._db.execute(
            "INSERT OR REPLACE INTO groups VALUES (?, ?, ?, ?)",
            (g.group_id, g.name, g.version, targets),
        )

    def name_group(self, group_id: str, name: str) -> str:
        """Records a name for a group we were told about; suffixes it if taken locally."""
        current = self.group(group_id)
        if current is not None and current.name:
            return current.name
        taken = self.group_by_name(name)
        if taken is not None and taken.group_id != group_id:
            name = f"{name}~{group_id[:8]}"
        row = current or _GroupRow(group_id, None)
        row.name = name
        self.save_group(row)
        return name

    def forget_group(self, group_id: str) -> None:
        self._db.execute("DELETE FROM groups WHERE group_id = ?", (group_id,))


class _DeviceState:
    """The device's crypto state, reloaded when another process changed ``device.db``.

    The state file is opened for each use (under the home's lock), so a client may be used
    from any thread (one at a time).
    """

    def __init__(self, home: Path) -> None:
        self.path = home / DEVICE_FILE
        self.lock_path = home / LOCK_FILE
        if not self.path.exists():
            raise MessengerError("this device has no keys yet (run: conclave login USERNAME)")
        with CryptoStore.open(self.path) as store:
            if not store.has_device():
                raise MessengerError("this device has no keys yet (run: conclave login USERNAME)")
            self.device: Device = store.load_device()
        self._store: CryptoStore | None = None
        self._watch = sqlite3.connect(self.path, check_same_thread=False)
        self._version: int | None = self._data_version()

    def _data_version(self) -> int:
        return int(self._watch.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        self._watch.close()

    @contextlib.contextmanager
    def use(self) -> Iterator[Device]:
        """Holds the home's device lock; yields the current device state."""
        if self._store is not None:  # re-entered from inside use(): already locked
            yield self.device
            return
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with CryptoStore.open(self.path) as store:
                self._store = store
                try:
                    # data_version changes when any *other* connection committed.
                    if self._data_version() != self._version:
                        self.device = store.load_device()
                        self._version = self._data_version()
                    yield self.device
                finally:
                    self._store = None
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def save(
        self, addresses: Iterable[DeviceAddress] | None = None, groups: Iterable[str] | None = None
    ) -> None:
        """Persists (call inside :meth:`use`)."""
        assert self._store is not None, "save() outside use()"
        self._store.save_device(
            self.device,
            addresses=list(addresses) if addresses is not None else None,
            groups=list(groups) if groups is not None else None,
        )
        self._version = self._data_version()


class Client:
    """Messaging client of one ``$CONCLAVE_HOME`` (one account, one device).

    Args:
        home: The client home (default ``$CONCLAVE_HOME``).
        endpoints: Service addresses (default: resolved from the environment).
        auth: The session; by default an :class:`AuthClient` on ``home``.
        timeout: Seconds per unary RPC.

    Raises:
        NotLoggedIn: No session in this home.
        MessengerError: The device has no keys (never logged in here).
    """

    def __init__(
        self,
        home: Path | None = None,
        *,
        endpoints: Endpoints | None = None,
        auth: AuthClient | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.home = home or conclave_home(create=True)
        self.endpoints = endpoints or Endpoints.resolve()
        self._own_auth = auth is None
        self.auth = auth or AuthClient(self.endpoints["auth"], CredentialStore(self.home))
        self._timeout = timeout
        credentials = self.auth.credentials()
        self.account_id = credentials.account_id
        self.username = credentials.username
        self.device_id = credentials.device_id
        self._state = _DeviceState(self.home)
        address = self._state.device.sessions.address
        if (address.user_id, address.device_id) != (self.account_id, self.device_id):
            self._state.close()
            raise MessengerError("device.db belongs to another device (run: conclave login)")
        self._local = _LocalState(self.home / STATE_FILE)
        self._local.remember(self.account_id, self.username)
        self._keys_channel = grpc.insecure_channel(self.endpoints["keys"])
        self._keys = keys_pb2_grpc.KeyServiceStub(self._keys_channel)
        self._msg_channel = grpc.insecure_channel(self.endpoints["messaging"])
        self._msg = messaging_pb2_grpc.MessagingServiceStub(self._msg_channel)
        self._pending: list[_Pending] = []
        #: Disappearing-message schedule and known timers (``client.db``).
        self.expiry = ExpiryStore(self.home / STATE_FILE)
        # Timer in force per conversation, as learnt on the current stream: a change made
        # while no stream was open is never pushed, so this starts empty on each stream.
        self._timers: dict[str, int] = {}
        self._retention: RetentionClient | None = None
        #: Deliveries that could not be decrypted or parsed: (message id, reason).
        self.failures: list[tuple[str, str]] = []

    @classmethod
    def login(
        cls,
        username: str,
        password: str,
        *,
        totp_code: str | None = None,
        recovery_code: str | None = None,
        home: Path | None = None,
        endpoints: Endpoints | None = None,
        device_name: str | None = None,
    ) -> Client:
        """Logs in and returns a client for the new session.

        Password plus a TOTP or recovery code, as ``conclave login``; then this device's
        keys are published or topped up (:meth:`KeysClient.ensure_device_keys`).

        Raises:
            ClientError: Wrong credentials, rate limits, device awaiting approval, ...
        """
        home = home or conclave_home(create=True)
        endpoints = endpoints or Endpoints.resolve()
        auth = AuthClient(endpoints["auth"], CredentialStore(home))
        try:
            result = auth.login(
                username,
                password,
                totp_code=totp_code,
                recovery_code=recovery_code,
                device_name=device_name,
            )
            if result.approval_pending:
                raise MessengerError("this device waits for approval by one of your devices")
            with KeysClient(endpoints["keys"], auth, home=home) as keys:
                keys.ensure_device_keys(result.account_id, result.device_id)
            client = cls(home, endpoints=endpoints, auth=auth)
        except BaseException:
            auth.close()
            raise
        client._own_auth = True
        return client

    def close(self) -> None:
        """Closes channels and local files."""
        self._keys_channel.close()
        self._msg_channel.close()
        self._state.close()
        self._local.close()
        self.expiry.close()
        if self._retention is not None:
            self._retention.close()
        if self._own_auth:
            self.auth.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> DeviceAddress:
        """This device's address."""
        return DeviceAddress(self.account_id, self.device_id)

    # -- plumbing --------------------------------------------------------------------------

    def _messaging(self, call: Callable[[tuple[tuple[str, str], ...]], T]) -> T:
        return self.auth.authorized(call, service="messaging", address=self.endpoints["messaging"])

    def _msg_rpc(self, method: Callable[..., T], request: Any) -> T:
        return self._messaging(lambda md: method(request, metadata=md, timeout=self._timeout))

    def _keys_call(self, call: Callable[[tuple[tuple[str, str], ...]], T]) -> T:
        return self.auth.authorized(call, service="keys", address=self.endpoints["keys"])

    def resolve_user(self, username: str) -> str:
        """Account id of ``username``.

        Raises:
            MessengerError: No such account.
        """
        name = normalise_username(username)
        if name == self.username:
            return self.account_id
        found = self.auth.lookup_accounts([username])
        if not found:
            raise MessengerError(f"no account named {username}")
        ((canonical, account_id),) = list(found.items())[:1]
        self._local.remember(account_id, canonical)
        return account_id

    def retention(self) -> RetentionClient:
        """A RetentionService client on this session (closed with the client)."""
        if self._retention is None:
            self._retention = RetentionClient(
                self.endpoints["retention"], self.auth, timeout=self._timeout
            )
        return self._retention

    def conversation_ref(self, target: str) -> types_pb2.ConversationRef:
        """The conversation ``USER`` or ``#GROUP`` (a group known on this device, or its id).

        Raises:
            MessengerError: Unknown user or group.
        """
        if target.startswith("#"):
            return types_pb2.ConversationRef(group_id=self._group_id(target))
        return types_pb2.ConversationRef(peer_account_id=self.resolve_user(target))

    def _resolve_users(self, usernames: Sequence[str]) -> dict[str, str]:
        """Username as typed -> account id; every name must exist."""
        result: dict[str, str] = {}
        missing = []
        for i in range(0, len(usernames), 100):
            chunk = list(usernames[i : i + 100])
            found = self.auth.lookup_accounts(chunk)
            for typed in chunk:
                account = found.get(normalise_username(typed))
                if account is None:
                    missing.append(typed)
                else:
                    result[typed] = account
                    self._local.remember(account, normalise_username(typed))
        if missing:
            raise MessengerError("no account named " + ", ".join(missing))
        return result

    def _usernames(self, account_ids: Iterable[str]) -> dict[str, str]:
        """Account id -> username (cached in client.db; the rest from LookupAccounts)."""
        result: dict[str, str] = {}
        unknown: list[str] = []
        for account_id in dict.fromkeys(account_ids):
            known = self._local.username(account_id)
            if known is None:
                unknown.append(account_id)
            else:
                result[account_id] = known
        for i in range(0, len(unknown), 100):
            found = self.auth.lookup_account_ids(unknown[i : i + 100])
            for account_id, username in found.items():
                self._local.remember(account_id, username)
                result[account_id] = username
        return result

    def _display_name(self, account_id: str) -> str:
        """Username of ``account_id`` as the server knows it, else the id itself."""
        try:
            return self._usernames([account_id]).get(account_id, account_id)
        except ClientError:
            return account_id

    def _published(self, account_id: str) -> dict[str, IdentityKey]:
        request = keys_pb2.LookupIdentityKeysRequest(account_id=account_id)
        reply = self._keys_call(
            lambda md: self._keys.LookupIdentityKeys(request, metadata=md, timeout=self._timeout)
        )
        return {
            d.device_id: IdentityKey(
                bytes(d.identity_key.signing_public_key), bytes(d.identity_key.agreement_public_key)
            )
            for d in reply.devices
        }

    def _claim(self, dev: Device, account_id: str, device_id: str = "") -> list[str]:
        """Claims bundles (one device, or all when ``device_id`` is empty), starts sessions.

        Returns:
            The device ids that got a session.
        """
        request = keys_pb2.ClaimPrekeyBundlesRequest(account_id=account_id, device_id=device_id)
        waited = 0.0
        while True:
            try:
                reply = self._keys_call(
                    lambda md: self._keys.ClaimPrekeyBundles(
                        request, metadata=md, timeout=self._timeout
                    )
                )
                break
            except ClientError as err:
                if err.code == "NOT_FOUND":
                    return []
                # The claim rate (per account, all its devices together) refills within
                # seconds: a big group's first message waits rather than fails.
                if err.code != "RESOURCE_EXHAUSTED" or err.retry_after is None:
                    raise
                pause = max(float(err.retry_after), 0.5)
                if waited + pause > CLAIM_WAIT_SECONDS:
                    raise
                time.sleep(pause)
                waited += pause
        started = []
        for b in reply.bundles:
            if b.device_id == self.device_id and account_id == self.account_id:
                continue
            addr = DeviceAddress(account_id, b.device_id)
            if device_id == "" and dev.sessions.has_session(addr):
                continue
            dev.sessions.process_bundle(bundle_from_pb(account_id, b), trust_new_identity=True)
            started.append(b.device_id)
        return started

    def _sync_devices(self, dev: Device, account_id: str) -> list[DeviceAddress]:
        """Applies the published device list of ``account_id`` and starts missing sessions.

        Returns:
            Addresses whose session changed (to save).
        """
        published = self._published(account_id)
        if account_id == self.account_id:
            published.pop(self.device_id, None)
        changed: list[DeviceAddress] = []
        for device_id, identity in published.items():
            addr = DeviceAddress(account_id, device_id)
            session = dev.sessions.session(addr)
            if session is not None and session.remote_identity != identity:
                # The device re-registered (new identity): its old sessions are useless.
                dev.sessions.records.pop(addr, None)
                dev.sessions.known_identities.pop(addr, None)
                dev.sessions.identity_changes.append(addr)
                changed.append(addr)
        before = {a for a in dev.sessions.records if a.user_id == account_id}
        missing = dev.sessions.update_devices(account_id, published)
        changed += [a for a in before if a not in dev.sessions.records]
        if missing:
            if len(missing) == len(published) and len(missing) > 1:
                started = self._claim(dev, account_id)
            else:
                started = [d for a in missing for d in self._claim(dev, account_id, a.device_id)]
            gone = {a.device_id for a in missing} - set(started)
            if gone:  # unpublished between lookup and claim
                dev.sessions.update_devices(account_id, set(published) - gone)
            changed += [DeviceAddress(account_id, d) for d in started]
        return changed

    def _envelope(
        self, dev: Device, account_id: str, plaintext: bytes
    ) -> tuple[list[M.DeviceCiphertext], list[DeviceAddress]]:
        per_device = dev.sessions.encrypt_for_user(account_id, plaintext)
        out = []
        for addr, wire in per_device.items():
            session = dev.sessions.session(addr)
            assert session is not None
            out.append(
                M.DeviceCiphertext(
                    device=types_pb2.DeviceAddress(
                        account_id=addr.user_id, device_id=addr.device_id
                    ),
                    registration_id=registration_id(session.remote_identity.encode()),
                    kind=ciphertext_kind(wire),
                    ciphertext=wire,
                )
            )
        return out, list(per_device)

    def _send_envelope(self, dev: Device, account_id: str, plaintext: bytes) -> Sent:
        """Encrypts and sends one 1:1 envelope (device lists must be synced)."""
        message_id = str(uuid.uuid4())
        for attempt in range(2):
            ciphertexts, addresses = self._envelope(dev, account_id, plaintext)
            self._state.save(addresses=addresses, groups=[])  # ratchets durable before sending
            if not ciphertexts:
                return Sent(message_id, None, False, 0)
            request = M.SendDirectMessageRequest(
                message_id=message_id, recipient_account_id=account_id, ciphertexts=ciphertexts
            )
            reply = self._msg_rpc(self._msg.SendDirectMessage, request)
            if reply.HasField("accepted"):
                a = reply.accepted
                return Sent(
                    message_id,
                    _stamp(a.server_time, a.HasField("server_time")),
                    a.duplicate,
                    len(ciphertexts),
                )
            if attempt == 1:
                break
            self._apply_mismatch(dev, reply.device_mismatch)
        raise MessengerError(
            "the server kept reporting a different device list; try again in a moment"
        )

    def _apply_mismatch(self, dev: Device, mismatch: M.DeviceMismatch) -> None:
        changed: list[DeviceAddress] = []
        for d in mismatch.extra_devices:
            known = dev.sessions.devices.get(d.account_id, set()) - {d.device_id}
            before = {a for a in dev.sessions.records if a.user_id == d.account_id}
            dev.sessions.update_devices(d.account_id, known)
            changed += [a for a in before if a not in dev.sessions.records]
        for d in mismatch.stale_devices:
            addr = DeviceAddress(d.account_id, d.device_id)
            dev.sessions.records.pop(addr, None)
            dev.sessions.known_identities.pop(addr, None)
            changed.append(addr)
        for d in [*mismatch.stale_devices, *mismatch.missing_devices]:
            if d.account_id == self.account_id and d.device_id == self.device_id:
                continue
            started = self._claim(dev, d.account_id, d.device_id)
            changed += [DeviceAddress(d.account_id, s) for s in started]
        self._state.save(addresses=changed, groups=[])

    # -- 1:1 -------------------------------------------------------------------------------

    def send_direct(self, username: str, text: str, attachment: Attachment | None = None) -> Sent:
        """Sends ``text`` to every device of ``username`` and to our own other devices.

        With ``attachment`` the message is a ``file`` frame carrying the record (the media
        key goes only into the per-device ciphertexts) and ``text`` is its caption.

        Raises:
            MessengerError: Unknown user, or the user has no device with published keys.
            ClientError: A call failed.
        """
        account_id = self.resolve_user(username)
        recipient = normalise_username(username) if account_id != self.account_id else self.username
        frame = self._content_frame(text, attachment, to=recipient)
        with self._state.use() as dev:
            changed = self._sync_devices(dev, account_id)
            if account_id != self.account_id:
                changed += self._sync_devices(dev, self.account_id)
            self._state.save(addresses=changed, groups=[])
            if account_id != self.account_id and not dev.sessions.devices.get(account_id):
                raise MessengerError(f"{username} has no device with published keys yet")
            return self._send_envelope(dev, account_id, frame)

    # -- groups ----------------------------------------------------------------------------

    def _group_id(self, name: str) -> str:
        row = self._local.group_by_name(name.removeprefix("#"))
        if row is None:
            # A group whose name never reached this device can be named by its id.
            with contextlib.suppress(ValueError):
                return str(uuid.UUID(name.removeprefix("#")))
            raise MessengerError(f"no group named {name} on this device")
        return row.group_id

    def create_group(self, name: str, members: Sequence[str] = ()) -> str:
        """Creates a group with us as admin (and ``members``); returns its id.

        Raises:
            MessengerError: The name is already used on this device, or a user is unknown.
        """
        name = name.removeprefix("#")
        if not name:
            raise MessengerError("a group needs a name")
        if self._local.group_by_name(name) is not None:
            raise MessengerError(f"a group named {name} already exists on this device")
        accounts = list(self._resolve_users(list(members)).values()) if members else []
        group_id = str(uuid.uuid4())
        request = M.CreateGroupRequest(group_id=group_id, member_account_ids=accounts)
        self._messaging(
            lambda md: self._msg.CreateGroup(request, metadata=md, timeout=self._timeout)
        )
        self._local.save_group(_GroupRow(group_id, name))
        return group_id

    def add_members(self, name: str, usernames: Sequence[str]) -> tuple[list[str], list[str]]:
        """Adds users; returns (added, already members) as usernames."""
        group_id = self._group_id(name)
        accounts = self._resolve_users(list(usernames))
        request = M.AddMembersRequest(group_id=group_id, account_ids=list(accounts.values()))
        reply = self._messaging(
            lambda md: self._msg.AddMembers(request, metadata=md, timeout=self._timeout)
        )
        by_id = {a: u for u, a in accounts.items()}
        return (
            [by_id.get(a, a) for a in reply.added_account_ids],
            [by_id.get(a, a) for a in reply.already_member_account_ids],
        )

    def remove_members(self, name: str, usernames: Sequence[str]) -> tuple[list[str], list[str]]:
        """Removes users; returns (removed, not members).

        Our sender key is rotated before our next message to the group (and every other
        member rotates theirs before its next one).
        """
        group_id = self._group_id(name)
        accounts = self._resolve_users(list(usernames))
        request = M.RemoveMembersRequest(group_id=group_id, account_ids=list(accounts.values()))
        reply = self._messaging(
            lambda md: self._msg.RemoveMembers(request, metadata=md, timeout=self._timeout)
        )
        with self._state.use() as dev:
            self._forget_members(dev, group_id, reply.removed_account_ids)
        by_id = {a: u for u, a in accounts.items()}
        return (
            [by_id.get(a, a) for a in reply.removed_account_ids],
            [by_id.get(a, a) for a in reply.not_member_account_ids],
        )

    def _forget_members(self, dev: Device, group_id: str, accounts: Iterable[str]) -> None:
        removed = set(accounts)
        for key in [k for k in dev.groups.received if k[0] == group_id]:
            if key[1].user_id in removed:
                dev.groups.forget_member(group_id, key[1])
        self._state.save(addresses=[], groups=[group_id])

    def _member_ids(self, group_id: str) -> list[tuple[str, int]]:
        members: list[tuple[str, int]] = []
        token = ""
        while True:
            request = M.ListMembersRequest(
                group_id=group_id,
                page=types_pb2.PageRequest(page_size=MEMBERS_PAGE, page_token=token),
            )
            reply = self._msg_rpc(self._msg.ListMembers, request)
            members += [(m.account_id, int(m.role)) for m in reply.members]
            token = reply.page.next_page_token
            if not token or not reply.members:
                return members

    def members(self, name: str) -> list[MemberInfo]:
        """The group's members (usernames where this device knows them)."""
        group_id = self._group_id(name)
        roles: dict[int, str] = {int(M.MEMBER_ROLE_ADMIN): "admin"}
        members = self._member_ids(group_id)
        try:
            names = self._usernames(a for a, _ in members)
        except ClientError:
            names = {}
        return [MemberInfo(a, names.get(a), roles.get(r, "member")) for a, r in members]

    def groups(self) -> list[tuple[str, str]]:
        """(name, group id) of the groups this device knows by name."""
        rows = self._local._db.execute(
            "SELECT name, group_id FROM groups WHERE name IS NOT NULL ORDER BY name"
        )
        return [(str(n), str(g)) for n, g in rows]

    def _distribute(self, dev: Device, row: _GroupRow, version: int) -> int:
        """Brings our sender key to every current member device; returns envelopes sent."""
        group_id = row.group_id
        accounts = [a for a, _ in self._member_ids(group_id)]
        changed: list[DeviceAddress] = []
        for account in dict.fromkeys([self.account_id, *accounts]):
            changed += self._sync_devices(dev, account)
        self._state.save(addresses=changed, groups=[])
        current = {
            DeviceAddress(a, d)
            for a in dict.fromkeys([self.account_id, *accounts])
            for d in dev.sessions.devices.get(a, set())
        } - {self.address}
        rotate = bool(row.distributed_to - current) or group_id not in dev.groups.own
        targets = current if rotate else current - row.distributed_to
        if rotate:
            dev.groups.rotate(group_id)
        else:
            dev.groups.distribution(group_id)
        self._state.save(addresses=[], groups=[group_id])
        sent = 0
        if targets:
            key = base64.b64encode(dev.groups.distribution(group_id)).decode()
            frame = encode_frame(
                "sender_key",
                group_id=group_id,
                group_name=row.name or "",
                key=key,
                **{"from": self.username},
            )
            others = sorted({t.user_id for t in targets} - {self.account_id})
            if not others:  # only our own other devices need it: a note to self
                others = [self.account_id]
            for account in others:
                self._send_envelope(dev, account, frame)
                sent += 1
        row.version = version
        row.distributed_to = current
        self._local.save_group(row)
        return sent

    def _content_frame(self, text: str, attachment: Attachment | None, **extra: str) -> bytes:
        if attachment is None:
            return encode_frame("text", text=text, **extra, **{"from": self.username})
        return encode_frame(
            "file",
            text=text,
            attachment=attachment.to_record(),
            **extra,
            **{"from": self.username},
        )

    def send_group(self, name: str, text: str, attachment: Attachment | None = None) -> Sent:
        """Sends ``text`` to the group: one sender-key ciphertext for all member devices.

        With ``attachment`` the message is a ``file`` frame (see :meth:`send_direct`).

        The sender key is distributed first when this device has not done so for the
        group's current membership (rotated if a member device went away).

        Raises:
            MessengerError: Unknown group name.
            ClientError: A call failed (NOT_FOUND: not a member any more).
        """
        group_id = self._group_id(name)
        message_id = str(uuid.uuid4())
        frame = self._content_frame(text, attachment)
        with self._state.use() as dev:
            request_group = M.GetGroupRequest(group_id=group_id)
            group = self._messaging(
                lambda md: self._msg.GetGroup(request_group, metadata=md, timeout=self._timeout)
            ).group
            version = int(group.membership_version)
            distributed = 0
            for _ in range(3):
                row = self._local.group(group_id) or _GroupRow(group_id, None)
                if row.version != version or group_id not in dev.groups.own:
                    distributed += self._distribute(dev, row, version)
                ciphertext = dev.groups.encrypt(group_id, frame)
                self._state.save(addresses=[], groups=[group_id])
                request = M.SendGroupMessageRequest(
                    message_id=message_id,
                    group_id=group_id,
                    ciphertext=ciphertext,
                    membership_version=version,
                )
                reply = self._msg_rpc(self._msg.SendGroupMessage, request)
                if reply.HasField("accepted"):
                    a = reply.accepted
                    return Sent(
                        message_id,
                        _stamp(a.server_time, a.HasField("server_time")),
                        a.duplicate,
                        distributed,
                    )
                version = int(reply.membership_changed.current_membership_version)
        raise MessengerError("the group's membership keeps changing; try again in a moment")

    # -- receive ---------------------------------------------------------------------------

    def _ack(self, tokens: Sequence[str]) -> None:
        tokens = [t for t in tokens if t]
        if not tokens:
            return
        request = M.AckMessagesRequest(delivery_tokens=list(tokens))
        self._messaging(
            lambda md: self._msg.AckMessages(request, metadata=md, timeout=self._timeout)
        )

    def _fail(self, message_id: str, reason: str) -> None:
        self.failures.append((message_id, reason))

    def _handle(self, item: M.SubscribeResponse) -> list[tuple[str, Message | PolicyChange | None]]:
        """Processes one stream item; returns (token to ack, item to show) pairs ready."""
        token = item.delivery_token
        if item.HasField("policy_change"):
            return [(token, self._policy_change(item.policy_change))]
        if item.HasField("membership_change"):
            change = item.membership_change
            with self._state.use() as dev:
                if self.account_id in change.removed_account_ids:
                    dev.groups.forget_group(change.group_id)
                    self._state.save(addresses=[], groups=[change.group_id])
                    row = self._local.group(change.group_id)
                    if row is not None:
                        row.version, row.distributed_to = -1, set()
                        self._local.save_group(row)
                elif change.removed_account_ids:
                    self._forget_members(dev, change.group_id, change.removed_account_ids)
            return [(token, None)]
        if not item.HasField("message"):
            return [(token, None)] if token else []
        return self._handle_message(token, item.message)

    def _policy_change(self, change: M.ConversationPolicyChange) -> PolicyChange:
        ref = change.conversation
        peer = ref.peer_account_id if ref.WhichOneof("conversation") == "peer_account_id" else ""
        group_id = ref.group_id if ref.WhichOneof("conversation") == "group_id" else ""
        key = conversation_key(peer, group_id)
        seconds = int(change.disappearing_message_timer.seconds)
        self._timers[key] = seconds
        self.expiry.remember_timer(key, seconds)
        if group_id:
            row = self._local.group(group_id)
            conversation = "#" + (row.name if row is not None and row.name else group_id)
        else:
            conversation = self._display_name(peer)
        return PolicyChange(
            conversation=conversation,
            peer_account_id=peer,
            group_id=group_id,
            timer_seconds=seconds,
            changed_by=self._display_name(change.changed_by_account_id),
            changed_by_account_id=change.changed_by_account_id,
            change_time=_stamp(change.change_time, change.HasField("change_time")),
        )

    def _learn_timer(self, key: str, ref: types_pb2.ConversationRef, message_id: str) -> None:
        """Reads the conversation's timer once per stream (GetEffectivePolicy).

        A failure is reported and not cached (the next message asks again): the message
        then counts as disappearing only if it matches a timer seen earlier.
        """
        if key in self._timers:
            return
        try:
            seconds = self.retention().effective_policy(ref).disappearing_timer
        except ClientError as err:
            if err.code in ("NOT_FOUND", "PERMISSION_DENIED", "INVALID_ARGUMENT"):
                # No longer a member, the peer's account is gone, or a note to self: no
                # timer to read now; timers seen before still mark its messages.
                self._timers[key] = 0
                return
            self._fail(message_id, f"may be a disappearing one: its timer is unknown ({err})")
            return
        self._timers[key] = seconds
        self.expiry.remember_timer(key, seconds)

    def _expiry(
        self, d: M.MessageDelivery, ref: types_pb2.ConversationRef
    ) -> tuple[datetime | None, bool]:
        """(expire_time, disappearing) of a delivery; schedules a disappearing one."""
        if not (d.HasField("expire_time") and d.HasField("server_time")):
            return None, False
        expire = d.expire_time.ToDatetime(tzinfo=UTC)
        lifetime = (expire - d.server_time.ToDatetime(tzinfo=UTC)).total_seconds()
        which = ref.WhichOneof("conversation")
        key = conversation_key(
            ref.peer_account_id if which == "peer_account_id" else "",
            ref.group_id if which == "group_id" else "",
        )
        self._learn_timer(key, ref, d.message_id)
        disappearing = self.expiry.is_disappearing(key, lifetime)
        if disappearing:
            # Scheduled before it is shown or acknowledged, so a crash in between leaves
            # a record the next sweep still deletes.
            self.expiry.track(d.message_id, expire.timestamp())
        return expire, disappearing

    def _handle_message(
        self, token: str, d: M.MessageDelivery
    ) -> list[tuple[str, Message | PolicyChange | None]]:
        if self._local.seen(d.message_id):
            return [(token, None)]
        if d.sealed_sender or not d.HasField("sender"):
            self._fail(d.message_id, "sealed-sender messages are not supported by this client")
            return [(token, None)]
        sender = DeviceAddress(d.sender.account_id, d.sender.device_id)
        is_group = d.conversation.WhichOneof("conversation") == "group_id"
        ready: list[tuple[str, Message | PolicyChange | None]] = []
        with self._state.use() as dev:
            try:
                if is_group:
                    group_id = d.conversation.group_id
                    try:
                        _, plaintext = dev.groups.decrypt(sender, bytes(d.ciphertext))
                    except DecryptionError:
                        # Its sender key (or the rotated one) has not arrived yet: the 1:1
                        # mailbox and the group log are separate streams. Keep it unacked
                        # and try again after the next sender key.
                        self._pending.append(_Pending(token, d))
                        return []
                    self._state.save(addresses=[], groups=[group_id])
                else:
                    plaintext = dev.sessions.decrypt(sender, bytes(d.ciphertext))
                    self._state.save(addresses=[sender], groups=[])
            except DecryptionError:
                self._local.mark_seen(d.message_id)
                self._fail(d.message_id, "cannot be decrypted")
                return [(token, None)]
            frame = decode_frame(plaintext)
            self._local.mark_seen(d.message_id)
            if frame is None:
                self._fail(d.message_id, "unknown content format")
                return [(token, None)]
            kind = frame.get("type")
            if kind == "sender_key" and not is_group:
                try:
                    key = base64.b64decode(frame.get("key", ""), validate=True)
                    group_id = dev.groups.process_distribution(sender, key)
                except (DecryptionError, binascii.Error, ValueError):
                    self._fail(d.message_id, "bad sender key")
                    return [(token, None)]
                self._state.save(addresses=[], groups=[group_id])
                known = self._local.group(group_id)
                # A group first addressed by its id has a row without a name: name it too.
                if frame.get("group_name") and (known is None or not known.name):
                    self._local.name_group(group_id, frame["group_name"])
                ready.append((token, None))
            elif kind in ("text", "file"):
                ready.append((token, self._message(d, sender, frame, is_group)))
            else:
                ready.append((token, None))
        if kind == "sender_key":
            ready += self._retry_pending()
        return ready

    def _retry_pending(self) -> list[tuple[str, Message | PolicyChange | None]]:
        pending, self._pending = self._pending, []
        ready: list[tuple[str, Message | PolicyChange | None]] = []
        for p in pending:
            ready += self._handle_message(p.token, p.delivery)
        return ready

    def _message(
        self, d: M.MessageDelivery, sender: DeviceAddress, frame: dict[str, Any], is_group: bool
    ) -> Message:
        name = self._display_name(sender.user_id)
        outgoing = sender.user_id == self.account_id
        if is_group:
            group_id = d.conversation.group_id
            row = self._local.group(group_id)
            conversation = "#" + (row.name if row is not None and row.name else group_id)
            ref = types_pb2.ConversationRef(group_id=group_id)
        else:
            group_id = ""
            peer = d.conversation.peer_account_id or sender.user_id
            conversation = self._display_name(peer)
            ref = types_pb2.ConversationRef(peer_account_id=peer)
        expire_time, disappearing = self._expiry(d, ref)
        attachment: Attachment | None = None
        attachment_error = ""
        if frame.get("type") == "file":
            try:
                attachment = Attachment.from_record(frame.get("attachment"))
            except AttachmentError as err:
                attachment_error = str(err)
        return Message(
            id=d.message_id,
            sender=name,
            sender_account_id=sender.user_id,
            sender_device_id=sender.device_id,
            conversation=conversation,
            text=frame.get("text", ""),
            group_id=group_id,
            server_time=_stamp(d.server_time, d.HasField("server_time")),
            outgoing=outgoing,
            attachment=attachment,
            attachment_error=attachment_error,
            expire_time=expire_time,
            disappearing=disappearing,
        )

    @typing.overload
    def listen(
        self,
        *,
        count: int | None = None,
        timeout: float | None = None,
        until_caught_up: bool = False,
        policy_changes: typing.Literal[False] = False,
    ) -> Iterator[Message]: ...

    @typing.overload
    def listen(
        self,
        *,
        count: int | None = None,
        timeout: float | None = None,
        until_caught_up: bool = False,
        policy_changes: bool,
    ) -> Iterator[Message | PolicyChange]: ...

    def listen(
        self,
        *,
        count: int | None = None,
        timeout: float | None = None,
        until_caught_up: bool = False,
        policy_changes: bool = False,
    ) -> Iterator[Message | PolicyChange]:
        """Yields decrypted text messages as they arrive (backlog first).

        With ``policy_changes``, disappearing-timer changes pushed while listening are
        yielded too (:class:`PolicyChange`; they do not count towards ``count``).

        Every item is acknowledged once it was handed out (the last one when the iterator
        is closed), so what was shown is not delivered again; duplicates (same message id)
        are acknowledged and skipped. Stops after ``count`` messages, when ``timeout``
        seconds passed, or (``until_caught_up``) once the backlog waiting when the stream
        opened is processed; reconnects after UNAVAILABLE until then.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        shown = 0
        backoff = 0.5
        while count is None or shown < count:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            metadata = self.auth.authorized_metadata()
            self._pending = []  # unacknowledged: a new stream delivers them again
            self._timers = {}  # changes made while no stream was open were not pushed
            call = self._msg.Subscribe(M.SubscribeRequest(), metadata=metadata, timeout=remaining)
            unacked = ""
            try:
                caught_up = False
                for item in call:
                    backoff = 0.5
                    caught_up = caught_up or item.HasField("catch_up_complete")
                    for token, message in self._handle(item):
                        if isinstance(message, PolicyChange):
                            if policy_changes:
                                yield message
                        elif message is not None:
                            unacked = token
                            yield message
                            shown += 1
                        unacked = ""
                        self._ack([token])
                        if count is not None and shown >= count:
                            return
                    if until_caught_up and caught_up and not self._pending:
                        return
                return  # the server ended the stream
            except grpc.RpcError as err:
                code = err.code() if isinstance(err, grpc.Call) else None
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    return
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    self.auth.refresh(force=True)
                elif code != grpc.StatusCode.UNAVAILABLE:
                    raise ClientError(
                        f"delivery stream ended: {err.details() if isinstance(err, grpc.Call) else err}",  # noqa: E501
                        code=code.name if code is not None else None,
                    ) from None
                time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                call.cancel()  # type: ignore[no-untyped-call]
                if unacked:
                    with contextlib.suppress(ClientError):
                        self._ack([unacked])
