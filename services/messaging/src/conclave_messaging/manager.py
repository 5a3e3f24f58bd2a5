"""Messaging domain logic: groups, sends and acknowledgements.

Invariants this module enforces (each has a test):

* Only members see a group; a non-member gets NOT_FOUND, never a hint that it exists.
* Only admins change metadata, membership and roles; a group never loses its last admin
  while it has members.
* ``membership_version`` rises by one per membership or role change, and each change is
  queued as ``conclave.events.group.membership`` in the same transaction (outbox).
* A group message is appended once to the group's log, whatever the group size; a member
  is never delivered messages stored before it joined (``members.join_seq``).
* Sends are idempotent on (sender, message id) through JetStream's duplicate window.
* Every stored item carries its expiry (``MessageDelivery.expire_time``: the
  disappearing timer if set, else the undelivered-message TTL of the sender's effective
  retention policy, never past the stream's ``max_age``) and has a row in
  ``messaging.stored_messages`` naming every account id it carries in clear, so the purge
  and account erasure can find it (module :mod:`conclave_messaging.stored`).
* Ciphertext is never logged; only sizes and counts are.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import asyncpg
import nats.errors
from conclave.common.v1 import types_pb2
from conclave.events.v1 import events_pb2
from conclave.keys.v1 import keys_pb2
from conclave.messaging.v1 import messaging_pb2 as M
from conclave_kit.database import Connection
from conclave_kit.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from conclave_kit.logs import get_logger
from conclave_kit.outbox import OutboxRelay
from conclave_kit.tokens import Claims
from conclave_kit.validation import parse_uuid
from nats.aio.client import Client as NatsClient
from nats.js import api

from conclave_messaging import events, store, stored, streams
from conclave_messaging.config import MessagingConfig
from conclave_messaging.metrics import FANOUT_RECIPIENTS, MESSAGES_SENT, size_class
from conclave_messaging.policy import Policy, PolicyResolver

# Key directory request/reply (served by the keys service; see docs/api.md).
IDENTITY_SUBJECT = "conclave.internal.keys.identity"

Clock = Callable[[], datetime]
_log = get_logger("conclave.messaging")
ADMIN = M.MEMBER_ROLE_ADMIN
MEMBER = M.MEMBER_ROLE_MEMBER
MAX_BATCH = 1000  # accounts per CreateGroup / AddMembers / RemoveMembers
MAX_CIPHERTEXTS = 32  # device ciphertexts per 1:1 envelope
NOT_MEMBER = "no such group"  # same words for "absent" and "not yours": existence not revealed

# Called with a committed membership event so this process's live streams follow at once
# (other replicas learn it from conclave.events.group.membership).
MembershipListener = Callable[[events_pb2.GroupMembership], Awaitable[None]]


@dataclass(frozen=True)
class Caller:
    """The authenticated device, with ids known to be UUIDs."""

    account_id: str
    device_id: str
    session_id: str


def caller(claims: Claims) -> Caller:
    """Checks the token names a session of ours (auth always signs UUIDs).

    Raises:
        Unauthenticated: Any id is not a UUID.
    """
    try:
        return Caller(
            str(uuid.UUID(claims.account_id)),
            str(uuid.UUID(claims.device_id)),
            str(uuid.UUID(claims.session_id)),
        )
    except ValueError:
        raise Unauthenticated("access token does not name a session") from None


def check_uuid(value: str, field: str) -> str:
    """The canonical form of a UUID field (reason ``BAD_ID`` when it is not one)."""
    return parse_uuid(value, field, reason="BAD_ID")


def _account_list(values: Sequence[str], field: str, *, allow_empty: bool) -> list[str]:
    if not values and not allow_empty:
        raise InvalidArgument(f"{field} must not be empty")
    if len(values) > MAX_BATCH:
        raise InvalidArgument(f"{field} holds more than {MAX_BATCH} accounts")
    seen: dict[str, None] = {}
    for value in values:
        seen[check_uuid(value, field)] = None
    return list(seen)


def _page_size(requested: int, default: int, maximum: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative")
    return min(requested or default, maximum)


def _encode_token(data: dict[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _decode_token(token: str, bound: dict[str, str]) -> dict[str, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if not isinstance(data, dict) or any(data.get(k) != v for k, v in bound.items()):
            raise ValueError
        return {str(k): str(v) for k, v in data.items()}
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError):
        raise InvalidArgument("page_token is not valid for this request") from None


def group_message(row: asyncpg.Record, my_role: int) -> M.Group:
    """The protobuf Group for a groups row."""
    group = M.Group(
        group_id=str(row["group_id"]),
        encrypted_metadata=bytes(row["encrypted_metadata"]),
        membership_version=int(row["membership_version"]),
        member_count=int(row["member_count"]),
        max_members=int(row["max_members"]),
        my_role=my_role,  # type: ignore[arg-type]
    )
    group.create_time.FromDatetime(row["created_at"])
    group.update_time.FromDatetime(row["updated_at"])
    return group


class MessagingManager:
    """The messaging service's domain operations.

    Args:
        config: Messaging settings.
        pool: Pool on the ``messaging`` schema.
        nats: NATS connection (JetStream message streams, mailbox doorbells).
        relay: Publishes queued membership events after commit.
        clock: Current time (injectable for tests).
        policy: Resolves the retention policy of each send; None applies the messaging
            defaults (stream TTL, no disappearing timer), as when retention is absent.
    """

    def __init__(
        self,
        config: MessagingConfig,
        pool: asyncpg.Pool,
        nats: NatsClient,
        relay: OutboxRelay,
        clock: Clock = lambda: datetime.now(UTC),
        policy: PolicyResolver | None = None,
    ) -> None:
        self._cfg = config
        self._pool = pool
        self._nats = nats
        self._js = nats.jetstream()
        self._relay = relay
        self._clock = clock
        self._policy = policy
        self._listeners: list[MembershipListener] = []

    @property
    def clock(self) -> Clock:
        """The manager's clock (the account-data provider and the hub share it)."""
        return self._clock

    async def _expiry(
        self, account_id: str, conversation: types_pb2.ConversationRef, now: datetime
    ) -> datetime:
        """When a message ``account_id`` sends now in ``conversation`` expires."""
        if self._policy is None:
            policy = Policy(self._cfg.message_ttl_seconds, 0.0)
        else:
            policy = await self._policy.resolve(account_id, conversation)
        return policy.expiry(now, self._cfg.message_ttl_seconds)

    def add_membership_listener(self, listener: MembershipListener) -> None:
        """Calls ``listener`` after every committed membership change made here."""
        self._listeners.append(listener)

    async def _committed(self, event: events_pb2.GroupMembership) -> None:
        # This replica's streams first: a removed member is detached before the change
        # (and anything after it) reaches the group's feed here.
        for listener in self._listeners:
            await listener(event)
        if not event.group_deleted:
            # Append the change to the group's log now, so it precedes every message sent
            # after this call returns. The outbox row is the backstop after a crash; its
            # later publish has the same Nats-Msg-Id and is dropped as a duplicate.
            change = event.change
            subject = streams.group_subject(change.group_id)
            item = events.log_item(change)
            try:
                ack = await self._js.publish(subject, item, headers={"Nats-Msg-Id": event.event_id})
                # Indexed so the purge and account erasure find it; a change published
                # only by the outbox backstop (after this publish failed) is not indexed
                # and lives until the stream's max_age.
                names = events.named_accounts(change)
                async with self._pool.acquire() as conn:
                    await stored.insert(
                        conn,
                        [
                            stored.Item(
                                stream=streams.GROUPS_STREAM,
                                seq=ack.seq,
                                subject=subject,
                                sender_account_id=None,
                                recipient_account_id=None,
                                named_account_ids=names or None,
                                message_id=None,
                                size_bytes=len(item),
                                expires_at=change.change_time.ToDatetime(UTC)
                                + timedelta(seconds=self._cfg.message_ttl_seconds),
                            )
                        ],
                    )
            except Exception as err:
                _log.warning("membership_log_publish_deferred", error_type=type(err).__name__)
        self._relay.wake()

    # ------------------------------------------------------------------ groups

    def _check_metadata(self, metadata: bytes) -> None:
        if len(metadata) > self._cfg.max_metadata_bytes:
            raise InvalidArgument(
                f"encrypted_metadata exceeds {self._cfg.max_metadata_bytes} bytes",
                reason="METADATA_TOO_LARGE",
            )

    async def create_group(
        self, who: Caller, group_id: str, metadata: bytes, member_ids: Sequence[str]
    ) -> M.Group:
        """Creates a group with the caller as admin (idempotent for the same creator)."""
        gid = check_uuid(group_id, "group_id") if group_id else str(uuid.uuid4())
        self._check_metadata(metadata)
        members = [
            a
            for a in _account_list(member_ids, "member_account_ids", allow_empty=True)
            if a != who.account_id
        ]
        if 1 + len(members) > self._cfg.max_members:
            raise ResourceExhausted(
                f"a group holds at most {self._cfg.max_members} members", reason="GROUP_FULL"
            )
        # Read before the transaction: messages already in the log are history for everyone.
        join_seq = await streams.last_seq(self._js, streams.GROUPS_STREAM)
        now = self._clock()
        async with self._pool.acquire() as conn, conn.transaction():
            created = await store.insert_group(
                conn,
                group_id=gid,
                created_by=who.account_id,
                metadata=metadata,
                max_members=self._cfg.max_members,
                now=now,
            )
            if not created:
                row = await store.group_for_member(conn, gid, who.account_id)
                existing = await store.group(conn, gid)
                if existing is not None and str(existing["created_by"]) == who.account_id:
                    if row is None:  # the creator left since: the id is spent
                        raise AlreadyExists("group_id is already used")
                    return group_message(row, int(row["my_role"]))
                raise AlreadyExists("group_id is already used")
            await store.insert_members(
                conn,
                group_id=gid,
                account_ids=[who.account_id],
                role=ADMIN,
                added_by=None,
                join_seq=join_seq,
                now=now,
            )
            await store.insert_members(
                conn,
                group_id=gid,
                account_ids=members,
                role=MEMBER,
                added_by=who.account_id,
                join_seq=join_seq,
                now=now,
            )
            row = await store.bump_group(
                conn, gid, member_delta=1 + len(members), now=now, version=False
            )
            change = events.membership_change(
                group_id=gid,
                version=int(row["membership_version"]),
                actor=who.account_id,
                now=now,
                added=[who.account_id, *members],
            )
            event = await events.group_membership(conn, change)
        await self._committed(event)
        return group_message(row, ADMIN)

    async def _member_group(
        self, conn: Connection, gid: str, who: Caller, *, lock: bool = False
    ) -> tuple[asyncpg.Record, int]:
        """(group row, caller's role); NOT_FOUND for absent groups and non-members."""
        row = await store.group(conn, gid, lock=lock)
        mine = None if row is None else await store.member(conn, gid, who.account_id)
        if row is None or mine is None:
            raise NotFound(NOT_MEMBER, reason="GROUP_NOT_FOUND")
        return row, int(mine["role"])

    async def _admin_group(self, conn: Connection, gid: str, who: Caller) -> asyncpg.Record:
        row, role = await self._member_group(conn, gid, who, lock=True)
        if role != ADMIN:
            raise PermissionDenied("only group admins may do this", reason="NOT_GROUP_ADMIN")
        return row

    async def get_group(self, who: Caller, group_id: str) -> M.Group:
        """One group the caller is a member of."""
        gid = check_uuid(group_id, "group_id")
        async with self._pool.acquire() as conn:
            row, role = await self._member_group(conn, gid, who)
        return group_message(row, role)

    async def update_group(self, who: Caller, group_id: str, metadata: bytes) -> M.Group:
        """Replaces the encrypted metadata (admins)."""
        gid = check_uuid(group_id, "group_id")
        self._check_metadata(metadata)
        async with self._pool.acquire() as conn, conn.transaction():
            await self._admin_group(conn, gid, who)
            row = await store.set_metadata(conn, gid, metadata, self._clock())
        return group_message(row, ADMIN)

    async def list_my_groups(
        self, who: Caller, page_size: int, page_token: str
    ) -> tuple[list[M.Group], str]:
        """One page of the caller's groups, by group id."""
        limit = _page_size(page_size, 50, 500)
        after = None
        if page_token:
            after = check_uuid(
                _decode_token(page_token, {"a": who.account_id, "k": "groups"}).get("g", ""),
                "page_token",
            )
        async with self._pool.acquire() as conn:
            rows = await store.my_groups(conn, who.account_id, after=after, limit=limit + 1)
        groups = [group_message(r, int(r["my_role"])) for r in rows[:limit]]
        token = ""
        if len(rows) > limit:
            token = _encode_token({"a": who.account_id, "k": "groups", "g": groups[-1].group_id})
        return groups, token

    async def list_members(
        self, who: Caller, group_id: str, page_size: int, page_token: str
    ) -> tuple[list[M.Member], str, int]:
        """One page of a group's members (members only)."""
        gid = check_uuid(group_id, "group_id")
        limit = _page_size(page_size, 100, 1000)
        after = None
        if page_token:
            data = _decode_token(page_token, {"g": gid, "k": "members"})
            try:
                after = (datetime.fromisoformat(data["t"]), str(uuid.UUID(data["m"])))
            except (KeyError, ValueError):
                raise InvalidArgument("page_token is not valid for this request") from None
        async with self._pool.acquire() as conn:
            row, _ = await self._member_group(conn, gid, who)
            rows = await store.members_page(conn, gid, after=after, limit=limit + 1)
        members = []
        for r in rows[:limit]:
            m = M.Member(
                account_id=str(r["account_id"]),
                role=int(r["role"]),  # type: ignore[arg-type]
                added_by_account_id=str(r["added_by"] or ""),
            )
            m.join_time.FromDatetime(r["joined_at"])
            members.append(m)
        token = ""
        if len(rows) > limit:
            last = rows[limit - 1]
            token = _encode_token(
                {
                    "g": gid,
                    "k": "members",
                    "t": last["joined_at"].isoformat(),
                    "m": str(last["account_id"]),
                }
            )
        return members, token, int(row["member_count"])

    async def add_members(
        self, who: Caller, group_id: str, account_ids: Sequence[str]
    ) -> M.AddMembersResponse:
        """Adds accounts as MEMBER (admins); reports those already in."""
        gid = check_uuid(group_id, "group_id")
        wanted = _account_list(account_ids, "account_ids", allow_empty=False)
        join_seq = await streams.last_seq(self._js, streams.GROUPS_STREAM)
        now = self._clock()
        event = None
        async with self._pool.acquire() as conn, conn.transaction():
            row = await self._admin_group(conn, gid, who)
            already = await store.existing_members(conn, gid, wanted)
            new = [a for a in wanted if a not in already]
            if new:
                if int(row["member_count"]) + len(new) > int(row["max_members"]):
                    raise ResourceExhausted(
                        f"the group would exceed its cap of {row['max_members']} members",
                        reason="GROUP_FULL",
                    )
                await store.insert_members(
                    conn,
                    group_id=gid,
                    account_ids=new,
                    role=MEMBER,
                    added_by=who.account_id,
                    join_seq=join_seq,
                    now=now,
                )
                row = await store.bump_group(conn, gid, member_delta=len(new), now=now)
                change = events.membership_change(
                    group_id=gid,
                    version=int(row["membership_version"]),
                    actor=who.account_id,
                    now=now,
                    added=new,
                )
                event = await events.group_membership(conn, change)
        if event is not None:
            await self._committed(event)
        return M.AddMembersResponse(
            membership_version=int(row["membership_version"]),
            added_account_ids=new,
            already_member_account_ids=[a for a in wanted if a in already],
        )

    async def remove_members(
        self, who: Caller, group_id: str, account_ids: Sequence[str]
    ) -> M.RemoveMembersResponse:
        """Removes accounts (admins); delivery to them stops at once."""
        gid = check_uuid(group_id, "group_id")
        wanted = _account_list(account_ids, "account_ids", allow_empty=False)
        if who.account_id in wanted:
            raise InvalidArgument("use LeaveGroup to leave a group", reason="REMOVE_SELF")
        now = self._clock()
        event = None
        async with self._pool.acquire() as conn, conn.transaction():
            row = await self._admin_group(conn, gid, who)
            present = await store.existing_members(conn, gid, wanted)
            gone = [a for a in wanted if a in present]
            if gone:
                await store.delete_members(conn, gid, gone)
                row = await store.bump_group(conn, gid, member_delta=-len(gone), now=now)
                change = events.membership_change(
                    group_id=gid,
                    version=int(row["membership_version"]),
                    actor=who.account_id,
                    now=now,
                    removed=gone,
                )
                event = await events.group_membership(conn, change)
        if event is not None:
            await self._committed(event)
        return M.RemoveMembersResponse(
            membership_version=int(row["membership_version"]),
            removed_account_ids=gone,
            not_member_account_ids=[a for a in wanted if a not in present],
        )

    async def set_member_role(self, who: Caller, group_id: str, account_id: str, role: int) -> int:
        """Promotes or demotes a member (admins); returns the membership version."""
        gid = check_uuid(group_id, "group_id")
        target = check_uuid(account_id, "account_id")
        if role not in (ADMIN, MEMBER):
            raise InvalidArgument("role must be MEMBER or ADMIN")
        now = self._clock()
        event = None
        async with self._pool.acquire() as conn, conn.transaction():
            row = await self._admin_group(conn, gid, who)
            current = await store.member(conn, gid, target)
            if current is None:
                raise NotFound("that account is not a member", reason="NOT_A_MEMBER")
            if int(current["role"]) == role:
                return int(row["membership_version"])
            if role == MEMBER and await store.admin_count(conn, gid) <= 1:
                raise FailedPrecondition(
                    "a group needs an admin: promote someone first", reason="LAST_ADMIN"
                )
            await store.set_role(conn, gid, target, role)
            row = await store.bump_group(conn, gid, member_delta=0, now=now)
            change = events.membership_change(
                group_id=gid,
                version=int(row["membership_version"]),
                actor=who.account_id,
                now=now,
                promoted=[target] if role == ADMIN else [],
                demoted=[target] if role == MEMBER else [],
            )
            event = await events.group_membership(conn, change)
        await self._committed(event)
        return int(row["membership_version"])

    async def leave_group(self, who: Caller, group_id: str) -> None:
        """Removes the caller; the last member's leave deletes the group and its log."""
        gid = check_uuid(group_id, "group_id")
        now = self._clock()
        async with self._pool.acquire() as conn, conn.transaction():
            row, role = await self._member_group(conn, gid, who, lock=True)
            remaining = int(row["member_count"]) - 1
            if remaining > 0 and role == ADMIN and await store.admin_count(conn, gid) <= 1:
                raise FailedPrecondition(
                    "you are the last admin: promote someone first", reason="LAST_ADMIN"
                )
            await store.delete_members(conn, gid, [who.account_id])
            deleted = remaining == 0
            if deleted:
                await store.delete_group(conn, gid)
                version = int(row["membership_version"]) + 1
            else:
                row = await store.bump_group(conn, gid, member_delta=-1, now=now)
                version = int(row["membership_version"])
            change = events.membership_change(
                group_id=gid,
                version=version,
                actor=who.account_id,
                now=now,
                removed=[who.account_id],
            )
            event = await events.group_membership(conn, change, group_deleted=deleted)
        await self._committed(event)
        if deleted:
            # The log holds only ciphertext nobody can be delivered any more; a failure
            # here leaves it to the stream's max_age.
            await self._drop_group_log(gid)

    async def _drop_group_log(self, gid: str) -> None:
        """Purges a deleted group's log and its index rows (best effort)."""
        subject = streams.group_subject(gid)
        try:
            await self._js.purge_stream(streams.GROUPS_STREAM, subject=subject)
            async with self._pool.acquire() as conn:
                await stored.delete_subject(conn, subject)
        except Exception as err:  # the purge job deletes what expires; max_age the rest
            _log.warning("group_log_purge_failed", error_type=type(err).__name__)

    # ------------------------------------------------------------------ erasure

    async def erase_memberships(self, account_id: str) -> int:
        """Takes an erased account out of every group; returns how many it left.

        Idempotent (a rerun finds no membership). Each group is one transaction like
        LeaveGroup, except that the last admin cannot refuse: the member who joined
        first becomes admin (hand-over), and the last member's exit deletes the group and
        its log. The change the other members get names nobody erased: it carries the
        new ``membership_version`` (and the promoted heir), no ``removed_account_ids``
        and no actor. Clients re-read the member list on a version bump and rotate their
        sender key when a device they distributed it to is gone, so keys still rotate.
        """
        left = 0
        while True:
            async with self._pool.acquire() as conn:
                gids = await store.groups_of(conn, account_id, MAX_BATCH)
            if not gids:
                break
            for gid in gids:
                left += await self._erase_member(gid, account_id)
        async with self._pool.acquire() as conn:
            await store.forget_account_references(conn, account_id)
        return left

    async def _erase_member(self, gid: str, account_id: str) -> int:
        now = self._clock()
        async with self._pool.acquire() as conn, conn.transaction():
            row = await store.group(conn, gid, lock=True)
            mine = None if row is None else await store.member(conn, gid, account_id)
            if row is None or mine is None:
                return 0
            remaining = int(row["member_count"]) - 1
            heir = None
            last_admin = int(mine["role"]) == ADMIN and await store.admin_count(conn, gid) <= 1
            if remaining > 0 and last_admin:
                heir = await store.longest_member(conn, gid, besides=account_id)
                if heir is not None:
                    await store.set_role(conn, gid, heir, ADMIN)
            await store.delete_members(conn, gid, [account_id])
            deleted = remaining <= 0
            if deleted:
                await store.delete_group(conn, gid)
                version = int(row["membership_version"]) + 1
            else:
                row = await store.bump_group(conn, gid, member_delta=-1, now=now)
                version = int(row["membership_version"])
            change = events.membership_change(
                group_id=gid,
                version=version,
                actor="",
                now=now,
                promoted=[heir] if heir else [],
            )
            event = await events.group_membership(conn, change, group_deleted=deleted)
        await self._committed(event)
        if deleted:
            await self._drop_group_log(gid)
        return 1

    # ------------------------------------------------------------------ sends

    async def _published(
        self, stream: str, acks: Sequence[api.PubAck]
    ) -> tuple[datetime | None, bool]:
        """(original server time, duplicate) from pub acks; time only when all were dups."""
        if not all(a.duplicate for a in acks):
            return None, False
        first = await self._js.get_msg(stream, seq=acks[0].seq)
        original = M.SubscribeResponse.FromString(first.data or b"").message
        return original.server_time.ToDatetime(UTC), True

    async def send_direct(
        self, who: Caller, request: M.SendDirectMessageRequest
    ) -> M.SendDirectMessageResponse:
        """Stores one copy per addressed device in its mailbox (pipelined publishes).

        The envelope must address exactly the devices the key directory publishes for the
        recipient and the sender's other devices, with their current registration ids;
        otherwise nothing is stored and the answer is ``device_mismatch``.
        """
        message_id = check_uuid(request.message_id, "message_id")
        recipient = check_uuid(request.recipient_account_id, "recipient_account_id")
        cts = list(request.ciphertexts)
        if not cts:
            raise InvalidArgument("ciphertexts must not be empty")
        if len(cts) > MAX_CIPHERTEXTS:
            raise InvalidArgument(f"at most {MAX_CIPHERTEXTS} ciphertexts per envelope")
        limit = self._cfg.max_direct_ciphertext_bytes
        seen: set[str] = set()
        for dc in cts:
            device = check_uuid(dc.device.device_id, "device_id")
            account = check_uuid(dc.device.account_id, "device account_id")
            if device in seen:
                raise InvalidArgument("two ciphertexts for one device", reason="DUPLICATE_DEVICE")
            seen.add(device)
            if account not in (recipient, who.account_id):
                raise InvalidArgument(
                    "a ciphertext addresses a third account's device", reason="THIRD_ACCOUNT"
                )
            if device == who.device_id:
                raise InvalidArgument(
                    "the sending device does not address itself", reason="SELF_DEVICE"
                )
            if not 1 <= len(dc.ciphertext) <= limit:
                raise InvalidArgument(
                    f"each ciphertext must be 1 to {limit} bytes", reason="CIPHERTEXT_SIZE"
                )
            if dc.kind == M.CIPHERTEXT_KIND_UNSPECIFIED:
                raise InvalidArgument("ciphertext kind is unspecified")
        if self._cfg.check_devices:
            mismatch = await self._device_mismatch(who, recipient, cts)
            if mismatch is not None:
                return M.SendDirectMessageResponse(device_mismatch=mismatch)
        now = self._clock()
        # The policy is the sender's for this conversation (resolved before anything is
        # stored: an UNAVAILABLE here stores nothing).
        expires = await self._expiry(
            who.account_id, types_pb2.ConversationRef(peer_account_id=recipient), now
        )
        sealed = request.sealed_sender
        pending = []
        rows = []
        for dc in cts:
            delivery = M.MessageDelivery(
                message_id=message_id,
                sealed_sender=sealed,
                kind=dc.kind,
                ciphertext=dc.ciphertext,
            )
            delivery.server_time.FromDatetime(now)
            delivery.expire_time.FromDatetime(expires)
            named: list[str] | None = None
            if not sealed:
                own_copy = dc.device.account_id == who.account_id and recipient != who.account_id
                peer = recipient if own_copy else who.account_id
                if recipient == who.account_id:
                    peer = who.account_id  # note to self
                delivery.conversation.peer_account_id = peer
                delivery.sender.CopyFrom(
                    types_pb2.DeviceAddress(account_id=who.account_id, device_id=who.device_id)
                )
                named = list(dict.fromkeys((who.account_id, peer)))
            device = str(uuid.UUID(dc.device.device_id))
            msg_id = streams.dedup_id("d", None if sealed else who.account_id, message_id, device)
            data = M.SubscribeResponse(message=delivery).SerializeToString()
            subject = streams.device_subject(device)
            pending.append(
                await self._js.publish_async(subject, data, headers={"Nats-Msg-Id": msg_id})
            )
            rows.append(
                stored.Item(
                    stream=streams.DIRECT_STREAM,
                    seq=0,
                    subject=subject,
                    # Sealed sender: the sender is not recorded, not even in the index.
                    sender_account_id=None if sealed else who.account_id,
                    recipient_account_id=str(uuid.UUID(dc.device.account_id)),
                    named_account_ids=named,
                    message_id=message_id,
                    size_bytes=len(data),
                    expires_at=expires,
                )
            )
        acks = await asyncio.gather(*pending)
        await self._index([replace(r, seq=a.seq) for r, a in zip(rows, acks, strict=True)])
        # Ring only after JetStream acknowledged: a rung stream always finds the copy.
        for dc, ack in zip(cts, acks, strict=True):
            if not ack.duplicate:
                device = str(uuid.UUID(dc.device.device_id))
                await self._nats.publish(streams.ring_subject(device), b"")
        original, duplicate = await self._published(streams.DIRECT_STREAM, acks)
        if not duplicate:
            MESSAGES_SENT.labels("direct").inc()
            FANOUT_RECIPIENTS.labels("direct").observe(len(cts))
        accepted = M.Accepted(duplicate=duplicate)
        accepted.server_time.FromDatetime(original or now)
        return M.SendDirectMessageResponse(accepted=accepted)

    async def _index(self, items: list[stored.Item]) -> None:
        """Indexes stored copies (after JetStream acknowledged them).

        Duplicate acks (retries) are indexed too, as no-ops unless the first attempt's
        index write failed: a failure here fails the send (INTERNAL) although the copies
        are stored, and the client's retry with the same message id then indexes them
        (with an expiry computed at the retry, seconds later than the stored one, which
        Subscribe enforces exactly).
        """
        if not items:
            return
        try:
            async with self._pool.acquire() as conn:
                await stored.insert(conn, items)
        except Exception as err:
            _log.error("stored_index_failed", error_type=type(err).__name__, items=len(items))
            raise

    async def _published_devices(self, account_id: str) -> dict[str, int]:
        """Device id → registration id of an account's published devices (key directory)."""
        request = keys_pb2.LookupIdentityKeysRequest(account_id=account_id)
        try:
            msg = await self._nats.request(IDENTITY_SUBJECT, request.SerializeToString(), timeout=2)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            raise Unavailable("the key directory did not answer; retry shortly") from None
        reply = keys_pb2.LookupIdentityKeysResponse.FromString(msg.data)
        return {d.device_id: d.registration_id for d in reply.devices}

    async def _device_mismatch(
        self, who: Caller, recipient: str, cts: list[M.DeviceCiphertext]
    ) -> M.DeviceMismatch | None:
        expected = {
            (recipient, d): r for d, r in (await self._published_devices(recipient)).items()
        }
        if not expected:
            raise FailedPrecondition("the recipient has no published device", reason="NO_DEVICES")
        if recipient != who.account_id:
            own = await self._published_devices(who.account_id)
            expected.update({(who.account_id, d): r for d, r in own.items()})
        expected.pop((who.account_id, who.device_id), None)
        addressed = {
            (str(uuid.UUID(dc.device.account_id)), str(uuid.UUID(dc.device.device_id))): dc
            for dc in cts
        }
        missing = [k for k in expected if k not in addressed]
        extra = [k for k in addressed if k not in expected]
        stale = [
            k
            for k, dc in addressed.items()
            if k in expected and dc.registration_id and dc.registration_id != expected[k]
        ]
        if not (missing or extra or stale):
            return None

        def addresses(keys: list[tuple[str, str]]) -> list[types_pb2.DeviceAddress]:
            return [types_pb2.DeviceAddress(account_id=a, device_id=d) for a, d in sorted(keys)]

        return M.DeviceMismatch(
            missing_devices=addresses(missing),
            extra_devices=addresses(extra),
            stale_devices=addresses(stale),
        )

    async def send_group(
        self, who: Caller, request: M.SendGroupMessageRequest
    ) -> M.SendGroupMessageResponse:
        """Appends the one ciphertext to the group's log (members only)."""
        message_id = check_uuid(request.message_id, "message_id")
        gid = check_uuid(request.group_id, "group_id")
        limit = self._cfg.max_group_ciphertext_bytes
        if not 1 <= len(request.ciphertext) <= limit:
            raise InvalidArgument(
                f"ciphertext must be 1 to {limit} bytes", reason="CIPHERTEXT_SIZE"
            )
        async with self._pool.acquire() as conn:
            row = await store.group_for_member(conn, gid, who.account_id)
        if row is None:
            raise NotFound(NOT_MEMBER, reason="GROUP_NOT_FOUND")
        version = int(row["membership_version"])
        if request.membership_version and request.membership_version != version:
            return M.SendGroupMessageResponse(
                membership_changed=M.MembershipChanged(current_membership_version=version)
            )
        now = self._clock()
        expires = await self._expiry(who.account_id, types_pb2.ConversationRef(group_id=gid), now)
        delivery = M.MessageDelivery(
            message_id=message_id,
            sender=types_pb2.DeviceAddress(account_id=who.account_id, device_id=who.device_id),
            ciphertext=request.ciphertext,
        )
        delivery.conversation.group_id = gid
        delivery.server_time.FromDatetime(now)
        delivery.expire_time.FromDatetime(expires)
        data = M.SubscribeResponse(message=delivery).SerializeToString()
        subject = streams.group_subject(gid)
        ack = await self._js.publish(
            subject,
            data,
            headers={
                "Nats-Msg-Id": streams.dedup_id("g", who.account_id, message_id),
                streams.SIZE_HEADER: size_class(int(row["member_count"])),
            },
        )
        await self._index(
            [
                stored.Item(
                    stream=streams.GROUPS_STREAM,
                    seq=ack.seq,
                    subject=subject,
                    sender_account_id=who.account_id,
                    recipient_account_id=None,
                    named_account_ids=[who.account_id],
                    message_id=message_id,
                    size_bytes=len(data),
                    expires_at=expires,
                )
            ]
        )
        original, duplicate = await self._published(streams.GROUPS_STREAM, [ack])
        if not duplicate:
            MESSAGES_SENT.labels("group").inc()
            FANOUT_RECIPIENTS.labels("group").observe(int(row["member_count"]))
        accepted = M.Accepted(duplicate=duplicate)
        accepted.server_time.FromDatetime(original or now)
        return M.SendGroupMessageResponse(accepted=accepted)

    # ------------------------------------------------------------------ devices

    async def drop_device(self, account_id: str, device_id: str) -> int:
        """Forgets a removed device's cursors and deletes its mailbox (idempotent).

        Driven by ``conclave.events.device.removed``; returns the cursor rows deleted. Its
        live stream ends through the session revocation that accompanies a removal.
        """
        device = check_uuid(device_id, "device_id")
        check_uuid(account_id, "account_id")
        async with self._pool.acquire() as conn:
            rows = await store.delete_device_cursors(conn, device)
        # Raises on failure, so the event is redelivered: undeliverable ciphertext must not
        # wait for max_age.
        subject = streams.device_subject(device)
        await self._js.purge_stream(streams.DIRECT_STREAM, subject=subject)
        async with self._pool.acquire() as conn:
            await stored.delete_subject(conn, subject)
        return rows

    # ------------------------------------------------------------------ acks

    async def ack(self, who: Caller, tokens: Sequence[str]) -> int:
        """Advances the device's cursors; returns how many tokens acknowledged news.

        Acknowledgements are cumulative per conversation (items are delivered in order),
        so a token also covers earlier items of its conversation.
        """
        if not tokens:
            raise InvalidArgument("delivery_tokens must not be empty")
        if len(tokens) > MAX_BATCH:
            raise InvalidArgument(f"at most {MAX_BATCH} delivery tokens per call")
        parsed = [streams.parse_token(t, who.device_id) for t in tokens]
        positions: dict[str, int] = {}
        for conv, seq in parsed:
            positions[conv] = max(seq, positions.get(conv, 0))
        async with self._pool.acquire() as conn, conn.transaction():
            before = await store.acked_seqs(conn, who.device_id, list(positions))
            await store.advance_acked(
                conn,
                device_id=who.device_id,
                account_id=who.account_id,
                positions=positions,
                now=self._clock(),
            )
        fresh = {(c, s) for c, s in parsed if s > before.get(c, 0)}
        # The device's open stream (on whichever replica) reopens its flow-control window.
        try:
            await self._nats.publish(
                streams.acked_subject(who.device_id), streams.format_acked(positions)
            )
        except Exception as err:  # the cursor moved; the window reopens on reconnect
            _log.warning("ack_announcement_failed", error_type=type(err).__name__)
        # Delivered 1:1 copies are only ever needed by this device: drop acknowledged ones
        # now instead of at the stream's max_age (ciphertext held no longer than needed).
        if streams.DIRECT in positions and positions[streams.DIRECT] > before.get(
            streams.DIRECT, 0
        ):
            subject = streams.device_subject(who.device_id)
            below = positions[streams.DIRECT] + 1
            try:
                await self._js.purge_stream(streams.DIRECT_STREAM, subject=subject, seq=below)
                # Their index rows go too, so the index keeps matching the stream (the
                # purge would otherwise find them only at their expiry).
                async with self._pool.acquire() as conn:
                    await stored.delete_subject(conn, subject, below=below)
            except Exception as err:  # the cursor already moved; the purge cleans up
                _log.warning("mailbox_purge_failed", error_type=type(err).__name__)
        return len(fresh)
