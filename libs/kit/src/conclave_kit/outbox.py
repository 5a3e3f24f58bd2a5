"""Transactional outbox: events that must not be lost are written with the state change.

A handler inserts the event into its schema's ``outbox`` table *in the same transaction* as
the change it describes (:func:`enqueue`), so either both happen or neither does. The
:class:`OutboxRelay` then publishes pending rows to JetStream with ``Nats-Msg-Id`` set to
the event id (JetStream drops duplicates inside the stream's duplicate window) and deletes
them once the publish is acknowledged. A crash between publish and delete re-publishes the
row, which the duplicate window absorbs and idempotent consumers tolerate anyway.

Several replicas can relay at once: each claims rows with ``FOR UPDATE SKIP LOCKED``.

A service that uses the outbox adds this table to its own schema in a migration::

    CREATE TABLE outbox (
        id bigserial PRIMARY KEY,
        subject text NOT NULL,
        msg_id text NOT NULL,
        payload bytea NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    );
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
from nats.js import JetStreamContext

from conclave_kit.database import Connection
from conclave_kit.logs import get_logger

_log = get_logger("conclave.outbox")
_BATCH = 100


async def enqueue(conn: Connection, subject: str, msg_id: str, payload: bytes) -> None:
    """Adds an event to the outbox; call inside the transaction of the state change."""
    await conn.execute(
        "INSERT INTO outbox (subject, msg_id, payload) VALUES ($1, $2, $3)",
        subject,
        msg_id,
        payload,
    )


class OutboxRelay:
    """Publishes outbox rows to JetStream: promptly when woken, and by polling as a backstop.

    Args:
        pool: The service's pool (its schema holds ``outbox``).
        js: JetStream context.
        poll_seconds: Backstop polling interval (covers rows written by other replicas and
            rows left by a crash).
    """

    def __init__(self, pool: asyncpg.Pool, js: JetStreamContext, poll_seconds: float = 1.0) -> None:
        self._pool = pool
        self._js = js
        self._poll = poll_seconds
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        """Starts the background relay task."""
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    def wake(self) -> None:
        """Asks for an immediate relay pass (call after committing an enqueue)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stops the relay task (pending rows stay for the next start)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            # Normally the loop sees the flag and returns; cancel only if it is stuck in
            # a publish or a query.
            done, _ = await asyncio.wait({self._task}, timeout=5)
            if not done:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task

    async def relay_once(self) -> int:
        """Publishes one batch of pending rows; returns how many were published."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, subject, msg_id, payload FROM outbox ORDER BY id "
                "LIMIT $1 FOR UPDATE SKIP LOCKED",
                _BATCH,
            )
            for row in rows:
                await self._js.publish(
                    row["subject"], bytes(row["payload"]), headers={"Nats-Msg-Id": row["msg_id"]}
                )
            if rows:
                await conn.execute(
                    "DELETE FROM outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in rows]
                )
        return len(rows)

    async def _run(self) -> None:
        while not self._stopping:
            # Clear before relaying: a wake() that arrives while we publish must trigger
            # another pass instead of being lost until the next poll.
            self._wake.clear()
            try:
                while await self.relay_once() == _BATCH:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as err:  # NATS or Postgres hiccup: retry on the next pass
                _log.warning("outbox_relay_failed", error_type=type(err).__name__)
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that races with the event being set, leaving the task running.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll):
                    await self._wake.wait()
