"""Messaging's account data: export section, purge of expired messages, account erasure.

Implements the kit's ``AccountDataProvider`` (``conclave_kit.account_data``) for what the
messaging server holds: the 1:1 mailboxes (``MSG_DIRECT``), the group logs
(``MSG_GROUPS``), their index ``messaging.stored_messages``, groups, members and cursors.

Purge: expired index rows are claimed in batches with ``FOR UPDATE SKIP LOCKED`` (several
replicas may purge at once and never touch, or count, the same item), their messages are
deleted from JetStream by sequence with a bounded number of requests in flight, then the
rows go in the same transaction. A message JetStream no longer has (acknowledged and
purged mailbox copies, ``max_age``, a deleted group's log) just loses its row. If the
process dies between the JetStream deletes and the commit, the rows come back and the
next run finds the messages gone: deletes are idempotent.

Deletes use ``no_erase``: the message leaves the stream at once (never readable through
JetStream again) but its bytes stay in the block file until nats-server compacts or
removes the block, instead of being overwritten first. The bytes are end-to-end
ciphertext whose message keys the devices discard after decrypting (forward secrecy), and
overwriting measured about 100 times slower (docs/decisions/0004-fanout.md, "Purge
measurements"): a real backlog would keep the purge lag alert firing.
``secure_erase=True`` (``CONCLAVE_MESSAGING_PURGE_SECURE_ERASE``) turns overwriting on.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from conclave.common.v1 import account_data_pb2 as D
from conclave.messaging.v1 import messaging_pb2 as M
from conclave_kit.database import Connection
from conclave_kit.logs import get_logger
from conclave_kit.tokens import Claims
from nats.aio.client import Client as NatsClient
from nats.js.errors import NotFoundError

from conclave_messaging import store, stored, streams
from conclave_messaging.manager import Clock, MessagingManager, caller

_log = get_logger("conclave.messaging.account_data")

DIRECT_KIND = int(D.PURGE_KIND_DIRECT_MESSAGES)
GROUP_KIND = int(D.PURGE_KIND_GROUP_MESSAGES)
STREAM_OF_KIND: dict[int, str] = {
    DIRECT_KIND: streams.DIRECT_STREAM,
    GROUP_KIND: streams.GROUPS_STREAM,
}
PURGE_BATCH = 1000  # rows claimed (and locked) per transaction
PURGE_CONCURRENCY = 64  # STREAM.MSG.DELETE requests in flight
ERASE_ATTEMPTS = 20  # rounds waiting for rows a concurrent purge holds (0.5 s apart)
# JetStream API errors meaning "nothing to delete at that sequence" (all seen in tests):
# 10037 "no message found", 10043 "sequence N not found", and 10057 ("message delete
# failed") with "no message found" for a sequence below the stream's first (purged
# subjects, max_age).
NO_MESSAGE = 10037
NO_SEQUENCE = 10043
DELETE_FAILED = 10057
NOT_FOUND_TEXT = "no message found"

# Claims a batch of index rows (locked) in a transaction, passing over sequences in the list.
Claim = Callable[[Connection, list[int]], Awaitable[list[asyncpg.Record]]]
# Called after an erasure so this replica's open streams of the account end at once.
ErasedListener = Callable[[str], None]


class JetStreamDeleteError(Exception):
    """No STREAM.MSG.DELETE of a batch succeeded (JetStream unreachable or refusing)."""


class MessagingAccountData:
    """The messaging server's ``AccountDataProvider``.

    Args:
        manager: The domain manager (group exits on erasure; its clock decides expiry).
        pool: Pool on the ``messaging`` schema.
        nats: NATS connection (JetStream API requests).
        batch: Index rows claimed per transaction.
        concurrency: JetStream delete requests in flight.
        secure_erase: Overwrite deleted messages in the store (see the module docstring).
        clock: Current time; the manager's when None (tests move it).
    """

    service = "messaging"
    kinds: tuple[int, ...] = (DIRECT_KIND, GROUP_KIND)

    def __init__(
        self,
        manager: MessagingManager,
        pool: asyncpg.Pool,
        nats: NatsClient,
        *,
        batch: int = PURGE_BATCH,
        concurrency: int = PURGE_CONCURRENCY,
        secure_erase: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self._manager = manager
        self._pool = pool
        self._nats = nats
        self._js = nats.jetstream()
        self._batch = batch
        self._concurrency = concurrency
        self._secure_erase = secure_erase
        self._clock = clock or manager.clock
        self._erased_listeners: list[ErasedListener] = []

    def add_erased_listener(self, listener: ErasedListener) -> None:
        """Calls ``listener(account_id)`` after each erasure."""
        self._erased_listeners.append(listener)

    # ------------------------------------------------------------------ purge

    async def purge(self, kinds: frozenset[int]) -> dict[int, int]:
        """Deletes every item whose expiry passed (per the clock now); items per kind."""
        now = self._clock()
        counts: dict[int, int] = {}
        for kind in self.kinds:
            if kind not in kinds:
                continue
            stream = STREAM_OF_KIND[kind]
            counts[kind] = await self._drain(
                lambda conn, skip, s=stream: stored.claim_expired(  # type: ignore[misc]
                    conn, s, now, self._batch, skip
                )
            )
        return counts

    async def purge_lag(self) -> dict[int, float]:
        """Per kind: seconds the longest-overdue item still stored is past its expiry."""
        now = self._clock()
        lags: dict[int, float] = {}
        async with self._pool.acquire() as conn:
            for kind in self.kinds:
                oldest = await stored.oldest_expired(conn, STREAM_OF_KIND[kind], now)
                lags[kind] = 0.0 if oldest is None else (now - oldest).total_seconds()
        return lags

    async def _drain(self, claim: Claim) -> int:
        """Claims batches of rows, deletes their messages and rows, until none is left.

        A row whose delete fails keeps its row (committed with the rest of the batch) and
        is passed over for the rest of this run, so one bad item cannot stop the purge of
        the others; the next run retries it. A batch in which nothing could be deleted
        (NATS unreachable) ends the run with an error instead of walking the backlog.

        Raises:
            JetStreamDeleteError: No delete of a batch succeeded.
        """
        total = 0
        skip: list[int] = []
        while True:
            async with self._pool.acquire() as conn, conn.transaction():
                rows = await claim(conn, skip)
                if not rows:
                    return total
                by_stream: dict[str, list[int]] = {}
                for row in rows:
                    by_stream.setdefault(str(row["stream"]), []).append(int(row["seq"]))
                done = 0
                failed: list[int] = []
                for stream, seqs in by_stream.items():
                    gone, errors = await self.delete_messages(stream, seqs)
                    await stored.delete(conn, stream, gone)
                    done += len(gone)
                    failed += errors
            total += done
            if failed:
                _log.error("purge_delete_failed", items=len(failed), deleted=done)
                if not done:
                    raise JetStreamDeleteError(f"{len(failed)} deletes failed, none succeeded")
                skip += failed

    async def delete_messages(
        self, stream: str, seqs: Iterable[int]
    ) -> tuple[list[int], list[int]]:
        """Deletes messages by sequence with ``concurrency`` requests in flight.

        Returns:
            (sequences gone now, deleted by this call or already gone; sequences whose
            delete failed).
        """
        subject = f"$JS.API.STREAM.MSG.DELETE.{stream}"
        gate = asyncio.Semaphore(self._concurrency)
        erase = self._secure_erase

        async def one(seq: int) -> bool:
            try:
                async with gate:
                    payload = json.dumps({"seq": seq, "no_erase": not erase}).encode()
                    reply = await self._nats.request(subject, payload, timeout=10)
                answer = json.loads(reply.data)
            except Exception as err:  # timeout, no responders (JetStream down)
                _log.warning("purge_delete_error", error_type=type(err).__name__)
                return False
            error = answer.get("error")
            if error is None or _already_gone(error):
                return True
            _log.warning("purge_delete_refused", err_code=error.get("err_code"), stream=stream)
            return False

        ordered = list(seqs)
        results = await asyncio.gather(*(one(s) for s in ordered))
        gone = [s for s, ok in zip(ordered, results, strict=True) if ok]
        return gone, [s for s, ok in zip(ordered, results, strict=True) if not ok]

    # ------------------------------------------------------------------ erasure

    async def erase(self, account_id: str) -> int:
        """Erases the account from messaging; returns items deleted (idempotent).

        Afterwards no row of the messaging schema and no message of ``MSG_DIRECT`` /
        ``MSG_GROUPS`` carries the account id: it has left every group (see
        :meth:`MessagingManager.erase_memberships`), its devices' cursors and mailboxes
        are gone, and every stored item naming it in clear (what it sent, 1:1 copies
        whose conversation is with it, membership changes naming it) is deleted.
        """
        account = str(account_id)
        items = await self._manager.erase_memberships(account)
        async with self._pool.acquire() as conn:
            devices = await store.account_devices(conn, account)
            subjects = set(await stored.mailbox_subjects(conn, account))
        subjects.update(streams.device_subject(d) for d in devices)
        for subject in sorted(subjects):
            # Purge the subject first, then its rows: a crash in between leaves rows of
            # messages that are gone, which the rerun (or the purge) clears.
            await self._js.purge_stream(streams.DIRECT_STREAM, subject=subject)
            async with self._pool.acquire() as conn:
                items += await stored.delete_subject(conn, subject)
        async with self._pool.acquire() as conn:
            items += await store.delete_account_cursors(conn, account)
        for _ in range(ERASE_ATTEMPTS):
            items += await self._drain(
                lambda conn, skip: stored.claim_naming(conn, account, self._batch, skip)
            )
            # SKIP LOCKED passed over rows a concurrent purge holds; they are normally gone
            # when it commits, but if its run failed they are back and must go here.
            async with self._pool.acquire() as conn:
                if not await stored.count_naming(conn, account):
                    break
            await asyncio.sleep(0.5)
        else:
            raise RuntimeError("stored items naming the account are still locked")
        for listener in self._erased_listeners:
            listener(account)
        _log.info("messaging_account_erased", items=items)
        return items

    # ------------------------------------------------------------------ export

    async def export(self, claims: Claims) -> dict[str, Any]:
        """The messaging section of the caller's export (metadata only, no ciphertext)."""
        who = caller(claims)
        account = who.account_id
        async with self._pool.acquire() as conn:
            groups = await store.account_groups(conn, account)
            created = await store.groups_created_not_member(conn, account)
            cursors = await store.account_cursors(conn, account)
            mailbox_rows = await stored.for_recipient(conn, account)
            sent_rows = await stored.sent_by(conn, account)
            acked = {(str(c["device_id"]), str(c["conversation"])): c for c in cursors}
            devices = sorted({str(c["device_id"]) for c in cursors})
            group_rows: list[tuple[str, asyncpg.Record]] = []
            for g in groups:
                gid = str(g["group_id"])
                for device in devices:
                    cursor = acked.get((device, gid))
                    after = max(int(g["join_seq"]), int(cursor["acked_seq"]) if cursor else 0)
                    subject = streams.group_subject(gid)
                    for row in await stored.in_subject_after(conn, subject, after):
                        if row["message_id"] is not None:  # not a membership change
                            group_rows.append((device, row))
        pending = []
        for row in mailbox_rows:
            device = str(row["subject"]).removeprefix(streams.DEVICE_PREFIX)
            entry = await self._pending_entry(device, row)
            if entry is not None:
                pending.append(entry)
        for device, row in group_rows:
            entry = await self._pending_entry(device, row)
            if entry is not None:
                pending.append(entry)
        return {
            "groups": [
                {
                    "group_id": str(g["group_id"]),
                    "role": M.MemberRole.Name(g["role"]),
                    "joined_at": _iso(g["joined_at"]),
                    "membership_version": int(g["membership_version"]),
                    "member_count": int(g["member_count"]),
                    "max_members": int(g["max_members"]),
                    "created_by": _str_or_none(g["created_by"]),
                    "added_by": _str_or_none(g["added_by"]),
                    "created_at": _iso(g["created_at"]),
                    "updated_at": _iso(g["updated_at"]),
                    # Name, description and avatar as the clients encrypted them.
                    "encrypted_metadata": base64.b64encode(
                        bytes(g["encrypted_metadata"] or b"")
                    ).decode(),
                }
                for g in groups
            ],
            "groups_created_and_left": [
                {"group_id": str(g["group_id"]), "created_at": _iso(g["created_at"])}
                for g in created
            ],
            "device_cursors": [
                {
                    "device_id": str(c["device_id"]),
                    "conversation": str(c["conversation"]),
                    "acked_seq": int(c["acked_seq"]),
                    "delivered_seq": int(c["delivered_seq"]),
                    "updated_at": _iso(c["updated_at"]),
                }
                for c in cursors
            ],
            "pending_messages": pending,
            "sent_messages_stored": [
                {
                    "message_id": str(r["message_id"]),
                    "stream": str(r["stream"]),
                    "stream_seq": int(r["seq"]),
                    "to_device": str(r["subject"]).removeprefix(streams.DEVICE_PREFIX)
                    if r["stream"] == streams.DIRECT_STREAM
                    else None,
                    "group_id": str(r["subject"]).removeprefix(streams.GROUP_PREFIX)
                    if r["stream"] == streams.GROUPS_STREAM
                    else None,
                    "size_bytes": int(r["size_bytes"]),
                    "expire_time": _iso(r["expires_at"]),
                }
                for r in sent_rows
            ],
        }

    async def _pending_entry(self, device: str, row: asyncpg.Record) -> dict[str, Any] | None:
        """Metadata of one waiting item, read from its stream (None: gone meanwhile)."""
        try:
            msg = await self._js.get_msg(str(row["stream"]), seq=int(row["seq"]))
        except NotFoundError:
            return None
        delivery = M.SubscribeResponse.FromString(msg.data or b"").message
        if delivery.sender.device_id == device:
            return None  # the sending device's own message is never delivered to it
        which = delivery.conversation.WhichOneof("conversation")
        conversation = None
        if which is not None:
            conversation = {which: getattr(delivery.conversation, which)}
        return {
            "device_id": device,
            "message_id": delivery.message_id,
            "conversation": conversation,  # None for sealed sender
            "sealed_sender": delivery.sealed_sender,
            "server_time": _iso(delivery.server_time.ToDatetime(UTC)),
            "expire_time": _iso(delivery.expire_time.ToDatetime(UTC)),
            "ciphertext_bytes": len(delivery.ciphertext),
            "stored_bytes": int(row["size_bytes"]),
        }


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _already_gone(error: dict[str, Any]) -> bool:
    code = error.get("err_code")
    text = str(error.get("description", "")).lower()
    return code in (NO_MESSAGE, NO_SEQUENCE) or (code == DELETE_FAILED and NOT_FOUND_TEXT in text)
