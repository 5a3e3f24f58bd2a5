"""A small synchronous client of ``conclave.keys.v1.KeyService`` for this device.

:class:`KeysClient` keeps this device's keys published and tells the owner how many are left:

* :meth:`KeysClient.ensure_device_keys` runs after every login. A new device gets a fresh
  identity, signed X25519 prekey and ML-KEM-1024 last-resort prekey from
  :mod:`conclave_crypto` (persisted in ``$CONCLAVE_HOME/device.db`` with
  :class:`~conclave_crypto.CryptoStore`, mode 0600, *before* anything is sent), publishes them
  with ``PublishIdentityKey`` (a fresh login token satisfies its FRESH auth mode) and then
  uploads 100 one-time X25519 and 100 one-time ML-KEM-1024 prekeys. A device that logs in
  again keeps its keys and only tops its one-time prekeys up to 100 when either kind fell
  below 10.
* :meth:`KeysClient.prekey_status` lists the remaining prekeys of the account's devices.
* :meth:`KeysClient.verify` proves an account's identity keys against the key-transparency
  log (:func:`conclave_client.transparency.verify_account`) with the log key pinned from
  configuration (``--log-key`` or ``CONCLAVE_KT_LOG_KEY``), remembering the last verified
  head per server in ``$CONCLAVE_HOME/kt-heads.json``.

The byte layouts of every signed key are conclave_crypto's (``keys.py``), which are those the
keys server verifies (``keys.proto``, docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import grpc
from conclave.keys.v1 import keys_pb2, keys_pb2_grpc
from conclave_crypto import CryptoStore, Device
from conclave_crypto.keys import KemPreKey

from conclave_client import transparency
from conclave_client.auth_client import AuthClient, ClientError, error_from_rpc
from conclave_client.home import conclave_home

DEFAULT_TIMEOUT = 15.0
DEVICE_FILE = "device.db"
"""This device's private end-to-end state (identity, prekeys, sessions) in ``$CONCLAVE_HOME``."""
LOG_KEY_ENV = "CONCLAVE_KT_LOG_KEY"
"""The key-transparency log's Ed25519 public key (hex or base64), pinned by configuration."""
ONE_TIME_TARGET = 100
"""One-time prekeys of each kind a device keeps on the server (the per-upload maximum)."""
LOW_WATER = 10
"""Top up when either one-time count falls below this (the server's "low" mark)."""
MAX_REGISTRATION_ID = 2**31 - 1
SIGNED_PREKEY_MAX_AGE = timedelta(days=7)
"""Rotate the signed and last-resort prekeys at the first login after they reach this age
(the server keeps a replaced one for a grace period, 7 days by default)."""

T = TypeVar("T")


class LogKeyError(ClientError):
    """No usable key-transparency log key is configured."""


def parse_log_key(text: str) -> bytes:
    """Parses a pinned log public key: 64 hex digits or base64 of 32 bytes.

    Raises:
        LogKeyError: Not a 32-byte key in either form.
    """
    value = text.strip()
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
    if len(raw) != 32:
        raise LogKeyError(
            "the key-transparency log key must be 32 bytes as 64 hex digits or base64"
        )
    return raw


def pinned_log_key(flag: str | None, environ: Mapping[str, str] | None = None) -> bytes:
    """The pinned log key: ``--log-key``, else ``CONCLAVE_KT_LOG_KEY``.

    Raises:
        LogKeyError: Neither is set, or the value is malformed.
    """
    env = os.environ if environ is None else environ
    value = flag or env.get(LOG_KEY_ENV, "")
    if not value:
        raise LogKeyError(
            f"no key-transparency log key pinned (set {LOG_KEY_ENV} or --log-key to the key "
            "your operator publishes; `conclave keys log-key` shows what the server announces)"
        )
    return parse_log_key(value)


def registration_id(identity: bytes) -> int:
    """The registration id of an identity: 31 bits of SHA-256(Encode(IK)), never 0.

    Derived rather than stored, so it changes exactly when the identity does and needs no
    state of its own; it is as random as the identity key it is computed from.
    """
    value = int.from_bytes(hashlib.sha256(identity).digest()[:4], "big") & MAX_REGISTRATION_ID
    return value or 1


def fingerprint(identity: bytes) -> str:
    """SHA-256 of Encode(IK) in 16 groups of four hex digits (what ``keys verify`` shows)."""
    value = hashlib.sha256(identity).hexdigest()
    return " ".join(value[i : i + 4] for i in range(0, len(value), 4))


def _time(stamp: object, present: bool) -> datetime | None:
    to_datetime = getattr(stamp, "ToDatetime", None)
    return to_datetime(tzinfo=UTC) if present and callable(to_datetime) else None


def _kem(key: KemPreKey) -> keys_pb2.SignedKemPrekey:
    return keys_pb2.SignedKemPrekey(
        key_id=key.key_id, public_key=key.public, signature=key.signature
    )


def _identity_pb(device: Device) -> keys_pb2.IdentityKey:
    public = device.identity.public
    return keys_pb2.IdentityKey(signing_public_key=public.signing, agreement_public_key=public.dh)


def publish_request(device: Device, device_id: str) -> keys_pb2.PublishIdentityKeyRequest:
    """PublishIdentityKey for ``device``: identity, current signed and last-resort prekeys.

    One-time prekeys go in a following UploadPrekeys (a republish never adds them).
    """
    store = device.prekeys
    if store.current_signed_prekey_id is None or store.last_resort_kem_id is None:
        raise ClientError("the local device state has no signed or last-resort prekey")
    spk = store.signed_prekeys[store.current_signed_prekey_id]
    return keys_pb2.PublishIdentityKeyRequest(
        device_id=device_id,
        identity_key=_identity_pb(device),
        registration_id=registration_id(device.identity.public.encode()),
        signed_prekey=keys_pb2.SignedEcPrekey(
            key_id=spk.key_id, public_key=spk.public, signature=spk.signature
        ),
        pq_last_resort_prekey=_kem(store.kem_prekeys[store.last_resort_kem_id]),
    )


def one_time_request(
    device: Device, device_id: str, one_time: int, pq_one_time: int
) -> keys_pb2.UploadPrekeysRequest:
    """Generates one-time prekeys in ``device`` (save it before sending) and the upload."""
    upload = device.prekey_upload(one_time=one_time, kem_one_time=pq_one_time)
    return keys_pb2.UploadPrekeysRequest(
        device_id=device_id,
        one_time_prekeys=[
            keys_pb2.EcPrekey(key_id=key_id, public_key=public)
            for key_id, public in upload.one_time_prekeys.items()
        ],
        pq_one_time_prekeys=[_kem(k) for k in upload.kem_prekeys if not k.last_resort],
    )


def rotate_signed_prekeys(
    device: Device,
) -> tuple[keys_pb2.SignedEcPrekey, keys_pb2.SignedKemPrekey]:
    """New current signed X25519 and last-resort ML-KEM prekeys in ``device`` (save it).

    The previous ones stay on the device (one of each) so first messages addressed to them
    while the server still hands them out can be answered; older ones are deleted.
    """
    store = device.prekeys
    spk = store.generate_signed_prekey(device.identity)
    store.prune_signed_prekeys(keep=2)
    last_resort = store.generate_kem_prekey(device.identity, last_resort=True)
    old = sorted(
        k for k, v in store.kem_prekeys.items() if v.last_resort and k != last_resort.key_id
    )
    for key_id in old[:-1]:
        del store.kem_prekeys[key_id]
    return (
        keys_pb2.SignedEcPrekey(key_id=spk.key_id, public_key=spk.public, signature=spk.signature),
        _kem(last_resort),
    )


@dataclass(frozen=True)
class PrekeyStatus:
    """Unclaimed prekeys of one device (GetPrekeyCounts).

    Attributes:
        device_id: Device id.
        current: True for this client home's device.
        one_time_prekeys: Unclaimed one-time X25519 prekeys.
        pq_one_time_prekeys: Unclaimed one-time ML-KEM-1024 prekeys.
        signed_prekey_id: Key id of the current signed X25519 prekey (0: none).
        signed_prekey_uploaded: When it was uploaded.
        pq_last_resort_prekey_id: Key id of the ML-KEM-1024 last-resort prekey (0: none).
        pq_last_resort_uploaded: When it was uploaded.
        low: Either one-time count is below the low-water mark.
    """

    device_id: str
    current: bool
    one_time_prekeys: int
    pq_one_time_prekeys: int
    signed_prekey_id: int
    signed_prekey_uploaded: datetime | None
    pq_last_resort_prekey_id: int
    pq_last_resort_uploaded: datetime | None
    low: bool


@dataclass(frozen=True)
class Publication:
    """What :meth:`KeysClient.ensure_device_keys` did for this device.

    Attributes:
        device_id: This device.
        action: ``published`` (identity published now), ``topped_up`` (identity already
            published; one-time prekeys added) or ``unchanged``.
        new_identity: A new identity was generated locally.
        fingerprint: SHA-256 of this device's Encode(IK) in hex groups.
        one_time_uploaded: One-time X25519 prekeys uploaded now.
        pq_one_time_uploaded: One-time ML-KEM-1024 prekeys uploaded now.
        one_time_prekeys: One-time X25519 prekeys on the server afterwards.
        pq_one_time_prekeys: One-time ML-KEM-1024 prekeys on the server afterwards.
        leaf_index: The binding's transparency-log leaf, when published now.
        signed_prekeys_rotated: New signed X25519 and last-resort ML-KEM prekeys were
            uploaded (the old ones were older than :data:`SIGNED_PREKEY_MAX_AGE`).
    """

    device_id: str
    action: str
    new_identity: bool
    fingerprint: str
    one_time_uploaded: int
    pq_one_time_uploaded: int
    one_time_prekeys: int
    pq_one_time_prekeys: int
    leaf_index: int | None = None
    signed_prekeys_rotated: bool = False


@dataclass(frozen=True)
class VerifiedAccount:
    """An account whose every identity key was proven in the transparency log.

    Attributes:
        username: Normalised username.
        account_id: Account id.
        devices: The verified devices.
        tree_head: The head remembered after the check (None if the account has no device).
    """

    username: str
    account_id: str
    devices: tuple[transparency.VerifiedDevice, ...]
    tree_head: transparency.TreeHead | None


class KeysClient:
    """KeyService client for this client home's device.

    Args:
        address: ``host:port`` of the keys service.
        auth: The session (access tokens, refresh, account lookups).
        home: The client home (default ``$CONCLAVE_HOME``).
        stub: A KeyService stub; by default one on an insecure channel (tests pass a fake).
        timeout: Seconds per RPC.
        now: Clock (UTC), injectable for tests.
    """

    def __init__(
        self,
        address: str,
        auth: AuthClient,
        *,
        home: Path | None = None,
        stub: keys_pb2_grpc.KeyServiceStub | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._now = now
        self.address = address
        self.auth = auth
        self._home = home
        self._timeout = timeout
        self._channel: grpc.Channel | None = None
        if stub is None:
            self._channel = grpc.insecure_channel(address)
            stub = keys_pb2_grpc.KeyServiceStub(self._channel)
        self._stub = stub

    @property
    def home(self) -> Path:
        """The client home directory."""
        if self._home is None:
            self._home = conclave_home(create=True)
        return self._home

    @property
    def device_path(self) -> Path:
        """This device's private state file (:class:`~conclave_crypto.CryptoStore`)."""
        return self.home / DEVICE_FILE

    def close(self) -> None:
        """Closes the channel (if this client opened it)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def __enter__(self) -> KeysClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, call: Callable[[tuple[tuple[str, str], ...]], T]) -> T:
        return self.auth.authorized(call, service="keys", address=self.address)

    # -- RPCs ------------------------------------------------------------------------------

    def prekey_status(self) -> list[PrekeyStatus]:
        """Remaining prekeys of every published device of the account (GetPrekeyCounts)."""
        current = self.auth.credentials().device_id
        request = keys_pb2.GetPrekeyCountsRequest()
        reply = self._call(
            lambda md: self._stub.GetPrekeyCounts(request, metadata=md, timeout=self._timeout)
        )
        return [
            PrekeyStatus(
                device_id=c.device_id,
                current=c.device_id == current,
                one_time_prekeys=c.one_time_prekeys,
                pq_one_time_prekeys=c.pq_one_time_prekeys,
                signed_prekey_id=c.signed_prekey_id,
                signed_prekey_uploaded=_time(
                    c.signed_prekey_upload_time, c.HasField("signed_prekey_upload_time")
                ),
                pq_last_resort_prekey_id=c.pq_last_resort_prekey_id,
                pq_last_resort_uploaded=_time(
                    c.pq_last_resort_prekey_upload_time,
                    c.HasField("pq_last_resort_prekey_upload_time"),
                ),
                low=c.low,
            )
            for c in reply.devices
        ]

    def _lookup(self, account_id: str, device_id: str = "") -> list[keys_pb2.DeviceIdentity]:
        request = keys_pb2.LookupIdentityKeysRequest(account_id=account_id, device_id=device_id)
        reply = self._call(
            lambda md: self._stub.LookupIdentityKeys(request, metadata=md, timeout=self._timeout)
        )
        return list(reply.devices)

    def _counts(self, device_id: str) -> keys_pb2.PrekeyCounts:
        request = keys_pb2.GetPrekeyCountsRequest(device_id=device_id)
        reply = self._call(
            lambda md: self._stub.GetPrekeyCounts(request, metadata=md, timeout=self._timeout)
        )
        for c in reply.devices:
            if c.device_id == device_id:
                return c
        return keys_pb2.PrekeyCounts(device_id=device_id)

    # -- this device -----------------------------------------------------------------------

    @staticmethod
    def _load_or_create(store: CryptoStore, account_id: str, device_id: str) -> tuple[Device, bool]:
        """This device's state and False, or a new identity and True if none is stored."""
        if store.has_device():
            device = store.load_device()
            address = device.sessions.address
            if (address.user_id, address.device_id) == (account_id, device_id):
                return device, False
        # Nothing stored, or the state of another device (removed, or another account
        # logged in to this home since): that device is gone, so is its state.
        device = Device.create(account_id, device_id)
        store.save_device(device)  # private keys durable before any public half leaves
        return device, True

    def ensure_device_keys(self, account_id: str, device_id: str) -> Publication:
        """Makes sure this device's identity and prekeys are published (after login).

        Args:
            account_id: The logged-in account.
            device_id: This device (from the login).

        Returns:
            What was generated and uploaded.

        Raises:
            ClientError: A call failed (e.g. ``FAILED_PRECONDITION`` while the device awaits
                approval); the local state is kept, so the next login retries.
        """
        with CryptoStore.open(self.device_path) as store:
            device, new_identity = self._load_or_create(store, account_id, device_id)
            identity = device.identity.public
            published = {d.device_id: d for d in self._lookup(account_id, device_id)}
            server = published.get(device_id)
            same = server is not None and (
                bytes(server.identity_key.signing_public_key),
                bytes(server.identity_key.agreement_public_key),
            ) == (identity.signing, identity.dh)
            leaf_index: int | None = None
            rotate = False
            if same:
                action = "unchanged"
                counts = self._counts(device_id)
                one_time, pq_one_time = counts.one_time_prekeys, counts.pq_one_time_prekeys
                rotate = self._due(counts)
            else:
                # A new device, or one whose published identity is not ours (its state was
                # lost here): publish ours. FRESH auth: the token of the login just made.
                request = publish_request(device, device_id)
                reply = self._call(
                    lambda md: self._stub.PublishIdentityKey(
                        request, metadata=md, timeout=self._timeout
                    )
                )
                action, leaf_index = "published", int(reply.leaf_index)
                one_time, pq_one_time = 0, 0
            add_ec = add_kem = 0
            if action == "published" or min(one_time, pq_one_time) < LOW_WATER:
                add_ec = max(0, ONE_TIME_TARGET - one_time)
                add_kem = max(0, ONE_TIME_TARGET - pq_one_time)
            if add_ec or add_kem or rotate:
                upload = one_time_request(device, device_id, add_ec, add_kem)
                if rotate:
                    spk, last_resort = rotate_signed_prekeys(device)
                    upload.signed_prekey.CopyFrom(spk)
                    upload.pq_last_resort_prekey.CopyFrom(last_resort)
                store.save_device(device)  # the private halves first
                after = self._call(
                    lambda md: self._stub.UploadPrekeys(upload, metadata=md, timeout=self._timeout)
                ).counts
                one_time, pq_one_time = after.one_time_prekeys, after.pq_one_time_prekeys
                if action == "unchanged" and (add_ec or add_kem):
                    action = "topped_up"
        return Publication(
            device_id=device_id,
            action=action,
            new_identity=new_identity,
            fingerprint=fingerprint(identity.encode()),
            one_time_uploaded=add_ec,
            pq_one_time_uploaded=add_kem,
            one_time_prekeys=one_time,
            pq_one_time_prekeys=pq_one_time,
            leaf_index=leaf_index,
            signed_prekeys_rotated=rotate,
        )

    def _due(self, counts: keys_pb2.PrekeyCounts) -> bool:
        """True when the signed or last-resort prekey is missing or older than the max age."""
        now = self._now()
        for key_id, stamp, present in (
            (
                counts.signed_prekey_id,
                counts.signed_prekey_upload_time,
                counts.HasField("signed_prekey_upload_time"),
            ),
            (
                counts.pq_last_resort_prekey_id,
                counts.pq_last_resort_prekey_upload_time,
                counts.HasField("pq_last_resort_prekey_upload_time"),
            ),
        ):
            uploaded = _time(stamp, present)
            if not key_id or uploaded is None or now - uploaded >= SIGNED_PREKEY_MAX_AGE:
                return True
        return False

    def forget_device(self) -> None:
        """Deletes this device's private state (after the device was removed)."""
        for suffix in ("", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                (self.home / (DEVICE_FILE + suffix)).unlink()

    # -- transparency ------------------------------------------------------------------------

    def server_log_key(self) -> tuple[str, bytes]:
        """The log key id and public key the server announces (bootstrap only: unverified)."""
        try:
            reply = self._stub.GetSignedTreeHead(
                keys_pb2.GetSignedTreeHeadRequest(), timeout=self._timeout
            )
        except grpc.RpcError as err:
            raise error_from_rpc(err, self.address, "keys") from None
        return reply.tree_head.key_id, bytes(reply.log_public_key)

    def verify(
        self,
        username: str,
        log_key: bytes,
        heads: transparency.TrustedHeadStore | None = None,
    ) -> VerifiedAccount:
        """Resolves ``username`` and proves each of its devices' keys in the log.

        Args:
            username: Whose keys.
            log_key: The pinned log public key (32 bytes).
            heads: Remembered heads (default ``$CONCLAVE_HOME/kt-heads.json``).

        Raises:
            ClientError: Unknown user, or a call failed.
            transparency.TransparencyError: A signature, inclusion or consistency check
                failed (including a rollback or a fork of the log).
        """
        found = self.auth.lookup_accounts([username])
        if not found:
            raise ClientError(f"no account named {username}")
        ((name, account_id),) = list(found.items())[:1]
        store = heads or transparency.TrustedHeadStore(self.home / "kt-heads.json")
        try:
            store.last(self.address)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise transparency.TransparencyError(
                f"{store.path} cannot be read ({err.__class__.__name__}); it holds the last "
                "verified tree heads, so check it was not tampered with"
            ) from None
        metadata = self.auth.authorized_metadata()

        async def run() -> list[transparency.VerifiedDevice]:
            async with grpc.aio.insecure_channel(self.address) as channel:
                return await transparency.verify_account(
                    keys_pb2_grpc.KeyServiceStub(channel),
                    account_id,
                    pinned_log_key=log_key,
                    server=self.address,
                    store=store,
                    metadata=metadata,
                )

        try:
            devices = asyncio.run(run())
        except grpc.RpcError as err:
            raise error_from_rpc(err, self.address, "keys") from None
        return VerifiedAccount(
            username=name,
            account_id=account_id,
            devices=tuple(devices),
            tree_head=store.last(self.address) if devices else None,
        )


def verified_json(result: VerifiedAccount) -> dict[str, object]:
    """The ``keys verify --json`` document."""
    head = result.tree_head
    return {
        "username": result.username,
        "account_id": result.account_id,
        "verified": True,
        "tree_head": None
        if head is None
        else {
            "tree_size": head.tree_size,
            "root_hash": head.root_hash.hex(),
            "timestamp_ms": head.timestamp_ms,
            "key_id": head.key_id,
        },
        "devices": [
            {
                "device_id": d.device_id,
                "fingerprint": d.digest,
                "identity_key": (d.signing_public_key + d.agreement_public_key).hex(),
                "leaf_index": d.leaf_index,
                "tree_size": d.tree_size,
            }
            for d in result.devices
        ],
    }


def status_json(devices: Sequence[PrekeyStatus], now: datetime) -> list[dict[str, object]]:
    """The ``keys status --json`` document."""

    def iso(value: datetime | None) -> str | None:
        if value is None:
            return None
        return value.replace(microsecond=0).isoformat().replace("+00:00", "Z")

    def age(value: datetime | None) -> int | None:
        return None if value is None else max(0, int((now - value).total_seconds()))

    return [
        {
            "device_id": d.device_id,
            "current": d.current,
            "one_time_prekeys": d.one_time_prekeys,
            "pq_one_time_prekeys": d.pq_one_time_prekeys,
            "signed_prekey_id": d.signed_prekey_id,
            "signed_prekey_uploaded": iso(d.signed_prekey_uploaded),
            "signed_prekey_age_seconds": age(d.signed_prekey_uploaded),
            "pq_last_resort_prekey_id": d.pq_last_resort_prekey_id,
            "pq_last_resort_uploaded": iso(d.pq_last_resort_uploaded),
            "low": d.low,
        }
        for d in devices
    ]
