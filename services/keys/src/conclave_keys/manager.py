"""Domain logic of the key directory and the transparency log (no gRPC types here).

Invariants this module keeps:

- Only PUBLIC keys are stored, and every signed prekey is verified against the device's
  identity signing key before anything of the request is stored (one bad key = nothing).
- A device's keys are written only by a session of that device (PublishIdentityKey,
  UploadPrekeys) or of its account (RemoveDeviceKeys).
- Each one-time prekey is handed out at most once (``store.claim_one_time_key``).
- Every change of an (account, device) → identity binding appends exactly one log leaf in
  the same transaction as the change, so the directory and the log cannot disagree.
- Lock order is always: log append lock, then device row. Publish and remove take the log
  lock first; uploads and claims never take it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from conclave_kit.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from conclave_kit.logs import get_logger
from conclave_kit.ratelimit import Limit, RateLimiter
from conclave_kit.runtime import Resources
from conclave_kit.tokens import Claims
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mlkem
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from conclave_keys import events, store
from conclave_keys.config import KeysConfig
from conclave_keys.store import KIND_EC, KIND_KEM, StoredKey
from conclave_keys.transparency import (
    LeafContent,
    LogAction,
    SignedHead,
    TreeHeadSigner,
    consistency_ranges,
    inclusion_ranges,
    roots_at_sizes,
    tree_head_message,
)

_log = get_logger("conclave.keys")

X25519_KEY_SIZE = 32
ED25519_KEY_SIZE = 32
SIGNATURE_SIZE = 64
MLKEM1024_KEY_SIZE = 1568
MAX_KEYS_PER_UPLOAD = 100
LOW_WATER_MARK = events.LOW_WATER_MARK
MAX_KEY_ID = 2**32 - 1
MAX_REGISTRATION_ID = 2**31 - 1
SIGNED_PREKEY_CONTEXT = b"Conclave/v1/Sig/SignedPreKey"
KEM_PREKEY_CONTEXT = b"Conclave/v1/Sig/KEMPreKey"

# Publishes one event: (subject, serialized payload, event id used as Nats-Msg-Id).
EventSink = Callable[[str, bytes, str], Awaitable[None]]


@dataclass(frozen=True)
class IdentityKey:
    """A device identity: Ed25519 signing half and X25519 agreement half (32 bytes each)."""

    signing: bytes
    agreement: bytes


@dataclass(frozen=True)
class DeviceCounts:
    """Unclaimed prekeys of one device (PrekeyCounts)."""

    device_id: str
    one_time: int
    pq_one_time: int
    signed_prekey_id: int
    signed_prekey_time: float
    last_resort_id: int
    last_resort_time: float

    @property
    def low(self) -> bool:
        """True when either one-time count is below the low-water mark."""
        return min(self.one_time, self.pq_one_time) < LOW_WATER_MARK


@dataclass(frozen=True)
class Bundle:
    """What a sender needs to start PQXDH with one device."""

    device_id: str
    registration_id: int
    identity: IdentityKey
    signed_prekey: StoredKey
    pq_prekey: StoredKey
    pq_is_last_resort: bool
    one_time_prekey: StoredKey | None
    leaf_index: int


@dataclass(frozen=True)
class DeviceIdentity:
    """The current identity binding of one device."""

    device_id: str
    registration_id: int
    identity: IdentityKey
    leaf_index: int
    publish_time: float


@dataclass(frozen=True)
class InclusionProof:
    """A leaf, its audit path and the head it is proven against."""

    leaf: LeafContent
    leaf_index: int
    audit_path: list[bytes]
    head: SignedHead


@dataclass(frozen=True)
class ConsistencyProof:
    """A consistency proof between two signed heads."""

    proof: list[bytes]
    first: SignedHead
    second: SignedHead


@dataclass(frozen=True)
class LowPrekeys:
    """A device that fell below the low-water mark (for conclave.events.prekeys.low)."""

    account_id: str
    device_id: str
    one_time: int
    pq_one_time: int


def _canonical_uuid(value: str, what: str) -> str:
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(f"{what} must be a UUID") from None
    if str(parsed) != value:
        raise InvalidArgument(f"{what} must be a lowercase hyphenated UUID")
    return value


def _check_key_id(key_id: int, what: str) -> None:
    if not 1 <= key_id <= MAX_KEY_ID:
        raise InvalidArgument(f"{what}: key_id must be 1 to 2^32-1")


def _verify(signing_key: Ed25519PublicKey, signature: bytes, message: bytes, what: str) -> None:
    try:
        signing_key.verify(signature, message)
    except InvalidSignature:
        raise InvalidArgument(f"{what}: signature does not verify with the identity key") from None


def _load_identity(identity: IdentityKey) -> Ed25519PublicKey:
    if len(identity.signing) != ED25519_KEY_SIZE or len(identity.agreement) != X25519_KEY_SIZE:
        raise InvalidArgument("identity_key: both halves must be exactly 32 bytes")
    try:
        return Ed25519PublicKey.from_public_bytes(identity.signing)
    except ValueError:
        raise InvalidArgument("identity_key: signing_public_key is not an Ed25519 key") from None


def check_signed_ec(key: StoredKey, signer: Ed25519PublicKey, what: str) -> None:
    """Validates a signed X25519 prekey (length, id, signature over the documented string).

    Raises:
        InvalidArgument: Any check fails.
    """
    _check_key_id(key.key_id, what)
    if len(key.public_key) != X25519_KEY_SIZE:
        raise InvalidArgument(f"{what}: public_key must be exactly 32 bytes")
    if key.signature is None or len(key.signature) != SIGNATURE_SIZE:
        raise InvalidArgument(f"{what}: signature must be exactly 64 bytes")
    message = SIGNED_PREKEY_CONTEXT + key.key_id.to_bytes(4, "big") + key.public_key
    _verify(signer, key.signature, message, what)


def check_signed_kem(key: StoredKey, signer: Ed25519PublicKey, what: str) -> None:
    """Validates a signed ML-KEM-1024 prekey (FIPS 203 key check, id, signature).

    Raises:
        InvalidArgument: Any check fails.
    """
    _check_key_id(key.key_id, what)
    if len(key.public_key) != MLKEM1024_KEY_SIZE:
        raise InvalidArgument(f"{what}: public_key must be exactly 1568 bytes (ML-KEM-1024)")
    try:
        # FIPS 203 encapsulation-key check (coefficients reduced mod q); a malformed key
        # would make every sender's encapsulation fail or behave unpredictably.
        mlkem.MLKEM1024PublicKey.from_public_bytes(key.public_key)
    except ValueError:
        raise InvalidArgument(f"{what}: public_key is not a valid ML-KEM-1024 key") from None
    if key.signature is None or len(key.signature) != SIGNATURE_SIZE:
        raise InvalidArgument(f"{what}: signature must be exactly 64 bytes")
    message = KEM_PREKEY_CONTEXT + key.key_id.to_bytes(4, "big") + key.public_key
    _verify(signer, key.signature, message, what)


def check_one_time_ec(key: StoredKey, what: str) -> None:
    """Validates an unsigned one-time X25519 prekey.

    Raises:
        InvalidArgument: Wrong id or length.
    """
    _check_key_id(key.key_id, what)
    if len(key.public_key) != X25519_KEY_SIZE:
        raise InvalidArgument(f"{what}: public_key must be exactly 32 bytes")


def _check_batch(keys: Sequence[StoredKey], what: str) -> None:
    if len(keys) > MAX_KEYS_PER_UPLOAD:
        raise InvalidArgument(f"{what}: at most {MAX_KEYS_PER_UPLOAD} per request")
    ids = [k.key_id for k in keys]
    if len(set(ids)) != len(ids):
        raise InvalidArgument(f"{what}: duplicate key ids")


def _check_batches(
    signer: Ed25519PublicKey, one_time: Sequence[StoredKey], pq_one_time: Sequence[StoredKey]
) -> None:
    _check_batch(one_time, "one_time_prekeys")
    _check_batch(pq_one_time, "pq_one_time_prekeys")
    for i, key in enumerate(one_time):
        check_one_time_ec(key, f"one_time_prekeys[{i}]")
    for i, key in enumerate(pq_one_time):
        check_signed_kem(key, signer, f"pq_one_time_prekeys[{i}]")


def _own_device(claims: Claims, device_id: str) -> str:
    """The caller's device; naming any other device is PERMISSION_DENIED."""
    if device_id and device_id != claims.device_id:
        raise PermissionDenied("you can only publish keys for the device of this session")
    return claims.device_id


class KeyManager:
    """The key directory and the transparency log.

    Args:
        resources: Pool (``keys`` schema) of this process; read lazily (connected later).
        config: Keys settings (limits, grace period, log key).
        publish_event: Sends an event to JetStream.
    """

    def __init__(self, resources: Resources, config: KeysConfig, publish_event: EventSink) -> None:
        self._resources = resources
        self._config = config
        self._publish = publish_event
        self.signer = TreeHeadSigner(config.tree_signing_key)
        self._limiter: RateLimiter | None = None

    async def _take(self, limit: Limit, key: str, cost: float = 1.0) -> None:
        if self._limiter is None:
            self._limiter = RateLimiter(self._resources.pool)
        await self._limiter.take(limit, key, cost)

    async def start(self) -> None:
        """Records the log key's public half and signs the latest head with it (start-up)."""
        async with self._resources.pool.acquire() as conn:
            await store.register_log_key(conn, self.signer)
            # After a key rotation, clients pinning the new key must be able to verify the
            # current head without waiting for the next append.
            resigned = await store.sign_latest_with(conn, self.signer)
        _log.info(
            "log_key_ready",
            key_id=self.signer.key_id,
            resigned_size=resigned.tree_size if resigned else None,
        )

    # --- publication ----------------------------------------------------------------------

    async def publish_identity(
        self,
        claims: Claims,
        device_id: str,
        identity: IdentityKey,
        registration_id: int,
        signed_prekey: StoredKey | None,
        last_resort: StoredKey | None,
        one_time: Sequence[StoredKey],
        pq_one_time: Sequence[StoredKey],
    ) -> tuple[int, SignedHead]:
        """Publishes a device's identity with its first prekeys (PublishIdentityKey).

        Returns:
            The binding's leaf index and a signed head including it.

        Raises:
            PermissionDenied: Not the caller's device.
            InvalidArgument: Any malformed key, bad signature or limit exceeded.
            AlreadyExists: A new signed prekey reuses an id still stored.
            ResourceExhausted: Rate limit or per-device cap.
        """
        device = _own_device(claims, device_id)
        account = claims.account_id
        signer = _load_identity(identity)
        if not 1 <= registration_id <= MAX_REGISTRATION_ID:
            raise InvalidArgument("registration_id must be 1 to 2^31-1")
        if signed_prekey is None:
            raise InvalidArgument("signed_prekey is required")
        if last_resort is None:
            raise InvalidArgument("pq_last_resort_prekey is required")
        check_signed_ec(signed_prekey, signer, "signed_prekey")
        check_signed_kem(last_resort, signer, "pq_last_resort_prekey")
        _check_batches(signer, one_time, pq_one_time)
        await self._take(self._config.upload_per_device, device)
        async with self._resources.pool.acquire() as conn, conn.transaction():
            # Log lock first (see module docstring), so two first publishes of one device
            # cannot both append an ADD leaf.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", store.KT_APPEND_LOCK)
            row = await store.lock_device(conn, account, device)
            same = row is not None and (
                bytes(row["signing_public_key"]),
                bytes(row["agreement_public_key"]),
            ) == (identity.signing, identity.agreement)
            if same:
                assert row is not None
                # Idempotent republish (e.g. a retry after a lost response): no new leaf.
                # The request's one-time keys are NOT added: the first attempt stored
                # them, and some may have been handed out since; re-inserting those would
                # hand one key out twice. New one-time keys go through UploadPrekeys.
                leaf_index = int(row["leaf_index"])
                await self._apply_signed(conn, account, device, KIND_EC, signed_prekey)
                await self._apply_signed(conn, account, device, KIND_KEM, last_resort)
                if int(row["registration_id"]) != registration_id:
                    await store.insert_device(
                        conn,
                        account,
                        device,
                        registration_id,
                        identity.signing,
                        identity.agreement,
                        leaf_index,
                    )
                head = await store.latest_head(conn, self.signer)
                return leaf_index, head
            action = LogAction.ADD if row is None else LogAction.ROTATE
            if row is not None:
                # The old prekeys were signed by the old identity; none may outlive it.
                await store.delete_prekeys(conn, account, device)
            leaf_index, head = await store.append_leaf(
                conn, self.signer, action, account, device, identity.signing, identity.agreement
            )
            await store.insert_device(
                conn,
                account,
                device,
                registration_id,
                identity.signing,
                identity.agreement,
                leaf_index,
            )
            await store.replace_signed_key(conn, account, device, KIND_EC, signed_prekey)
            await store.replace_signed_key(conn, account, device, KIND_KEM, last_resort)
            await self._add_one_time(conn, account, device, one_time, pq_one_time)
        _log.info("identity_published", action=action.name, leaf_index=leaf_index)
        return leaf_index, head

    async def _apply_signed(
        self, conn: store.Conn, account: str, device: str, kind: int, key: StoredKey
    ) -> None:
        """Makes ``key`` current unless it already is; a reused id is ALREADY_EXISTS."""
        current = await store.current_signed_key(conn, account, device, kind)
        if current == key:
            return
        stored = await store.stored_key_ids(conn, "signed_prekeys", account, device)
        if (kind, key.key_id) in stored:
            what = "signed_prekey" if kind == KIND_EC else "pq_last_resort_prekey"
            raise AlreadyExists(f"{what}: key id {key.key_id} is still stored for this device")
        await store.replace_signed_key(conn, account, device, kind, key)

    async def _add_one_time(
        self,
        conn: store.Conn,
        account: str,
        device: str,
        one_time: Sequence[StoredKey],
        pq_one_time: Sequence[StoredKey],
    ) -> None:
        if not one_time and not pq_one_time:
            return
        stored = await store.stored_key_ids(conn, "one_time_prekeys", account, device)
        ec_count, kem_count = await store.one_time_counts(conn, account, device)
        for kind, keys, have, what in (
            (KIND_EC, one_time, ec_count, "one_time_prekeys"),
            (KIND_KEM, pq_one_time, kem_count, "pq_one_time_prekeys"),
        ):
            dup = next((k.key_id for k in keys if (kind, k.key_id) in stored), None)
            if dup is not None:
                raise AlreadyExists(f"{what}: key id {dup} is still stored for this device")
            if have + len(keys) > self._config.max_one_time_prekeys:
                raise ResourceExhausted(
                    f"{what}: a device holds at most {self._config.max_one_time_prekeys} "
                    f"(has {have}, adding {len(keys)})",
                    reason="PREKEY_CAP",
                )
            await store.insert_one_time_keys(conn, account, device, kind, keys)

    async def upload_prekeys(
        self,
        claims: Claims,
        device_id: str,
        signed_prekey: StoredKey | None,
        last_resort: StoredKey | None,
        one_time: Sequence[StoredKey],
        pq_one_time: Sequence[StoredKey],
    ) -> DeviceCounts:
        """Rotates signed prekeys and/or adds one-time prekeys (UploadPrekeys).

        Raises:
            PermissionDenied: Not the caller's device.
            InvalidArgument: Empty request, malformed key, bad signature, over 100 per kind.
            FailedPrecondition: No identity published yet (reason NO_IDENTITY_KEY).
            AlreadyExists: A key id that is still stored.
            ResourceExhausted: Over the per-device cap, or the upload rate limit.
        """
        device = _own_device(claims, device_id)
        account = claims.account_id
        if signed_prekey is None and last_resort is None and not one_time and not pq_one_time:
            raise InvalidArgument("nothing to upload: set at least one field")
        _check_batch(one_time, "one_time_prekeys")
        _check_batch(pq_one_time, "pq_one_time_prekeys")
        await self._take(self._config.upload_per_device, device)
        async with self._resources.pool.acquire() as conn, conn.transaction():
            row = await store.lock_device(conn, account, device)
            if row is None:
                raise FailedPrecondition(
                    "publish this device's identity key first (PublishIdentityKey)",
                    reason="NO_IDENTITY_KEY",
                )
            signer = Ed25519PublicKey.from_public_bytes(bytes(row["signing_public_key"]))
            if signed_prekey is not None:
                check_signed_ec(signed_prekey, signer, "signed_prekey")
            if last_resort is not None:
                check_signed_kem(last_resort, signer, "pq_last_resort_prekey")
            _check_batches(signer, one_time, pq_one_time)
            stored = await store.stored_key_ids(conn, "signed_prekeys", account, device)
            for kind, key, what in (
                (KIND_EC, signed_prekey, "signed_prekey"),
                (KIND_KEM, last_resort, "pq_last_resort_prekey"),
            ):
                if key is not None and (kind, key.key_id) in stored:
                    raise AlreadyExists(
                        f"{what}: key id {key.key_id} is still stored for this device"
                    )
            for kind, key in ((KIND_EC, signed_prekey), (KIND_KEM, last_resort)):
                if key is not None:
                    await store.replace_signed_key(conn, account, device, kind, key)
            await self._add_one_time(conn, account, device, one_time, pq_one_time)
            # Replaced keys past their grace period go now, for every device: an index
            # scan over the few replaced rows, so no separate sweeper is needed while
            # devices keep uploading (retention's purge covers quiet periods).
            await store.purge_replaced_signed_keys(conn, self._config.signed_prekey_grace_seconds)
        counts = await self.prekey_counts(claims, device)
        return counts[0]

    async def purge_expired(self) -> int:
        """Deletes replaced signed/last-resort prekeys past the grace period; returns how many."""
        async with self._resources.pool.acquire() as conn:
            return await store.purge_replaced_signed_keys(
                conn, self._config.signed_prekey_grace_seconds
            )

    async def prekey_counts(self, claims: Claims, device_id: str) -> list[DeviceCounts]:
        """Counts of the caller's devices, or of one of them (GetPrekeyCounts).

        Raises:
            NotFound: ``device_id`` is not a published device of the caller's account.
        """
        account = claims.account_id
        async with self._resources.pool.acquire() as conn:
            counts = await store.all_counts(conn, account, device_id or None)
            devices = {
                r["device_id"]: r for r in await store.published_devices(conn, account, None)
            }
        if device_id and not counts:
            raise NotFound("no published device with this id in your account")
        out = []
        for r in counts:
            d = devices.get(r["device_id"])
            out.append(
                DeviceCounts(
                    device_id=str(r["device_id"]),
                    one_time=int(r["ec"]),
                    pq_one_time=int(r["kem"]),
                    signed_prekey_id=int(d["sp_id"]) if d else 0,
                    signed_prekey_time=d["sp_time"].timestamp() if d else 0.0,
                    last_resort_id=int(d["lr_id"]) if d else 0,
                    last_resort_time=d["lr_time"].timestamp() if d else 0.0,
                )
            )
        return out

    # --- claims and lookups --------------------------------------------------------------

    async def claim_bundles(self, claims: Claims, account_id: str, device_id: str) -> list[Bundle]:
        """Hands out one bundle per device (ClaimPrekeyBundles).

        A device left below the low-water mark is announced on conclave.events.prekeys.low
        (at most once per device per 10 minutes).

        Returns:
            The bundles, by device id.

        Raises:
            InvalidArgument: Malformed ids.
            NotFound: No published device (or not this one) for the account.
            ResourceExhausted: Claim rate per requester or per target device.
        """
        _canonical_uuid(account_id, "account_id")
        if device_id:
            _canonical_uuid(device_id, "device_id")
        await self._take(self._config.claim_per_requester, claims.account_id)
        async with self._resources.pool.acquire() as conn:
            rows = await store.published_devices(conn, account_id, device_id or None)
        if not rows:
            raise NotFound(
                "no published device for this account" + (" and id" if device_id else "")
            )
        if account_id == claims.account_id:
            # A device never starts a session with itself.
            rows = [r for r in rows if r["device_id"] != claims.device_id]
        for r in rows:
            await self._take(self._config.claim_per_target_device, str(r["device_id"]))
        bundles: list[Bundle] = []
        low: list[LowPrekeys] = []
        async with self._resources.pool.acquire() as conn:
            for r in rows:
                device = str(r["device_id"])
                async with conn.transaction():
                    ec = await store.claim_one_time_key(conn, account_id, device, KIND_EC)
                    kem = await store.claim_one_time_key(conn, account_id, device, KIND_KEM)
                last_resort = StoredKey(int(r["lr_id"]), bytes(r["lr_key"]), bytes(r["lr_sig"]))
                bundles.append(
                    Bundle(
                        device_id=device,
                        registration_id=int(r["registration_id"]),
                        identity=IdentityKey(
                            bytes(r["signing_public_key"]), bytes(r["agreement_public_key"])
                        ),
                        signed_prekey=StoredKey(
                            int(r["sp_id"]), bytes(r["sp_key"]), bytes(r["sp_sig"])
                        ),
                        pq_prekey=kem if kem is not None else last_resort,
                        pq_is_last_resort=kem is None,
                        one_time_prekey=ec,
                        leaf_index=int(r["leaf_index"]),
                    )
                )
                ec_left, kem_left = await store.one_time_counts(conn, account_id, device)
                if min(ec_left, kem_left) < LOW_WATER_MARK and await store.mark_low_notified(
                    conn, account_id, device
                ):
                    low.append(LowPrekeys(account_id, device, ec_left, kem_left))
        for item in low:
            event_id, payload = events.prekeys_low(
                item.account_id, item.device_id, item.one_time, item.pq_one_time
            )
            await self._publish(events.PREKEYS_LOW, payload, event_id)
        return bundles

    async def lookup_identities(
        self, claims: Claims, account_id: str, device_id: str
    ) -> list[DeviceIdentity]:
        """Current identity bindings of an account's devices (LookupIdentityKeys).

        The key service does not know which accounts exist (auth does), so an unknown
        account and an account without published devices both answer an empty list.

        Raises:
            InvalidArgument: Malformed ids.
            ResourceExhausted: Lookup rate.
        """
        _canonical_uuid(account_id, "account_id")
        if device_id:
            _canonical_uuid(device_id, "device_id")
        await self._take(self._config.lookup_per_account, claims.account_id)
        async with self._resources.pool.acquire() as conn:
            rows = await store.published_devices(conn, account_id, device_id or None)
        return [
            DeviceIdentity(
                device_id=str(r["device_id"]),
                registration_id=int(r["registration_id"]),
                identity=IdentityKey(
                    bytes(r["signing_public_key"]), bytes(r["agreement_public_key"])
                ),
                leaf_index=int(r["leaf_index"]),
                publish_time=r["published_at"].timestamp(),
            )
            for r in rows
        ]

    # --- removal ------------------------------------------------------------------------

    async def remove_device(self, claims: Claims, device_id: str) -> tuple[bool, int]:
        """Deletes one of the caller's devices' keys and logs REMOVE (RemoveDeviceKeys).

        Returns:
            ``(removed, leaf_index)``; ``(False, 0)`` if the device had no keys.

        Raises:
            InvalidArgument: Malformed device id.
            PermissionDenied: The device belongs to another account.
        """
        device = device_id or claims.device_id
        if device_id:
            _canonical_uuid(device_id, "device_id")
        removed, index = await self.remove_keys(claims.account_id, device)
        if not removed:
            async with self._resources.pool.acquire() as conn:
                owner = await store.account_of_device(conn, device)
            if owner is not None and owner != claims.account_id:
                raise PermissionDenied("this device belongs to another account")
        else:
            # Messaging drops the device's mailbox and stops expecting it in envelopes.
            event_id, payload = events.device_removed(claims.account_id, device)
            await self._publish(events.DEVICE_REMOVED, payload, event_id)
        return removed, index

    async def remove_keys(self, account_id: str, device_id: str) -> tuple[bool, int]:
        """Deletes a device's keys and appends a REMOVE leaf; idempotent.

        Also the handler of ``conclave.events.device.removed`` from auth.
        """
        async with self._resources.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", store.KT_APPEND_LOCK)
            row = await store.lock_device(conn, account_id, device_id)
            if row is None:
                return False, 0
            index, _head = await store.append_leaf(
                conn,
                self.signer,
                LogAction.REMOVE,
                account_id,
                device_id,
                bytes(row["signing_public_key"]),
                bytes(row["agreement_public_key"]),
            )
            await store.delete_device(conn, account_id, device_id)
        _log.info("device_keys_removed", leaf_index=index)
        return True, index

    async def erase_account(self, account_id: str) -> int:
        """Erases everything keys holds about an account (``conclave.events.account.deleted``).

        Devices and prekeys are deleted and the account's log leaves keep only their hashes
        (keys.proto): the tree still rebuilds to every signed head, and inclusion proofs for
        those leaves answer NOT_FOUND. No REMOVE leaf is appended, as it would name the
        account again. Idempotent.

        Returns:
            The number of rows deleted or cleared.
        """
        async with self._resources.pool.acquire() as conn, conn.transaction():
            items = await store.erase_account(conn, account_id)
        _log.info("account_erased", items=items)
        return items

    # --- transparency log ----------------------------------------------------------------

    async def _head(self, conn: store.Conn, tree_size: int) -> SignedHead:
        latest = await store.latest_head(conn, self.signer)
        if tree_size in (0, latest.tree_size):
            return latest
        if tree_size > latest.tree_size:
            raise InvalidArgument(
                f"tree_size {tree_size} is larger than the log ({latest.tree_size} leaves)"
            )
        head = await store.head_at(conn, tree_size, self.signer.key_id)
        if head is None:
            raise NotFound(f"no head was signed at tree size {tree_size}")
        return head

    async def signed_tree_head(self, source: str, tree_size: int) -> tuple[SignedHead, bytes]:
        """A signed head and the public key that signed it (GetSignedTreeHead).

        Raises:
            InvalidArgument: ``tree_size`` larger than the log.
            NotFound: No head at exactly ``tree_size``.
            ResourceExhausted: Per-source rate.
        """
        await self._take(self._config.public_per_source, source)
        async with self._resources.pool.acquire() as conn:
            head = await self._head(conn, tree_size)
            key = await store.log_public_key(conn, head.key_id)
        assert key is not None, "heads reference kt_log_keys"
        return head, key

    async def inclusion_proof(
        self,
        claims: Claims,
        *,
        leaf_index: int | None,
        binding: tuple[str, str, IdentityKey] | None,
        tree_size: int,
    ) -> InclusionProof:
        """Proves a leaf (by index or by binding) is in a signed tree (GetInclusionProof).

        Raises:
            InvalidArgument: Neither or both selectors, or tree_size not above the index /
                larger than the log.
            NotFound: No such leaf or binding (or its content was erased), or no head at
                exactly ``tree_size``.
            ResourceExhausted: Lookup rate.
        """
        await self._take(self._config.lookup_per_account, claims.account_id)
        async with self._resources.pool.acquire() as conn:
            head = await self._head(conn, tree_size)
            if binding is not None:
                account, device, identity = binding
                row = await store.latest_binding_leaf(
                    conn, account, device, identity.signing, identity.agreement
                )
                if row is None:
                    raise NotFound("this binding is not in the log")
            elif leaf_index is not None:
                row = await store.leaf_at(conn, leaf_index)
                if row is None or row["account_id"] is None:
                    raise NotFound(f"no leaf {leaf_index} in the log")
            else:
                raise InvalidArgument("set leaf_index or binding")
            index = int(row["leaf_index"])
            if index >= head.tree_size:
                raise InvalidArgument(
                    f"tree_size {head.tree_size} must be larger than the leaf index {index}"
                )
            path = await store.hash_ranges(conn, inclusion_ranges(index, head.tree_size))
        leaf = LeafContent(
            LogAction(int(row["action"])),
            str(row["account_id"]),
            str(row["device_id"]),
            bytes(row["signing_public_key"]),
            bytes(row["agreement_public_key"]),
            int(row["timestamp_ms"]),
        )
        return InclusionProof(leaf, index, path, head)

    async def consistency_proof(
        self, source: str, first_size: int, second_size: int
    ) -> ConsistencyProof:
        """Proves the log of ``second_size`` extends that of ``first_size``.

        Raises:
            InvalidArgument: first is 0 or above second, or second larger than the log.
            NotFound: No signed head at either size.
            ResourceExhausted: Per-source rate.
        """
        await self._take(self._config.public_per_source, source)
        if first_size < 1:
            raise InvalidArgument("first_tree_size must be at least 1")
        async with self._resources.pool.acquire() as conn:
            second = await self._head(conn, second_size)
            if first_size > second.tree_size:
                raise InvalidArgument(
                    f"first_tree_size {first_size} is larger than second_tree_size "
                    f"{second.tree_size}"
                )
            first = await self._head(conn, first_size)
            proof = await store.hash_ranges(conn, consistency_ranges(first_size, second.tree_size))
        if first_size == second.tree_size:
            proof = []
        return ConsistencyProof(proof, first, second)

    async def audit_log(self) -> list[int]:
        """Rebuilds the tree from the stored leaves and checks every signed head.

        Returns:
            Tree sizes whose stored head does not match the rebuilt root or whose
            signature does not verify (empty when the log is sound).
        """
        async with self._resources.pool.acquire() as conn:
            leaves = await store.all_leaf_hashes(conn)
            heads = await store.all_heads(conn)
            keys = {
                str(r["key_id"]): bytes(r["public_key"])
                for r in await conn.fetch("SELECT key_id, public_key FROM kt_log_keys")
            }
        roots = roots_at_sizes(leaves, (h.tree_size for h in heads))
        bad = []
        for head in heads:
            ok = roots.get(head.tree_size) == head.root_hash
            try:
                Ed25519PublicKey.from_public_bytes(keys[head.key_id]).verify(
                    head.signature,
                    tree_head_message(head.tree_size, head.timestamp_ms, head.root_hash),
                )
            except (InvalidSignature, KeyError):
                ok = False
            if not ok:
                bad.append(head.tree_size)
        return bad


def now_ms() -> int:
    """Current time in ms since the epoch."""
    return int(time.time() * 1000)
