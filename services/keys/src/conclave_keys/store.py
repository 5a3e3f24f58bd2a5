"""PostgreSQL access for the keys service (schema ``keys``, on the pool's search_path).

Functions take a connection so the manager decides transaction boundaries. Only public
keys, signatures and log hashes are stored here; see docs/data-map.md ("keys schema").
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import asyncpg
import asyncpg.pool

from conclave_keys.transparency import (
    EMPTY_ROOT,
    LeafContent,
    LogAction,
    NodeRef,
    SignedHead,
    TreeHeadSigner,
    new_nodes_after_append,
    node_hash,
    nodes_for,
    range_hash,
)

Conn: TypeAlias = "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"

# Transaction-level advisory lock serialising log appends, so leaf indexes are dense and
# unique and each head covers exactly the leaves before it, across replicas.
# (Arbitrary constant: "CKTLOG" in ASCII.)
KT_APPEND_LOCK = 0x434B544C4F47

KIND_EC = 1  # signed X25519 prekey / one-time X25519 prekey
KIND_KEM = 2  # ML-KEM-1024 last-resort prekey / one-time ML-KEM-1024 prekey


class LogCorrupted(Exception):
    """A node the tree arithmetic needs is missing: the log tables are damaged."""


@dataclass(frozen=True)
class StoredKey:
    """A prekey as stored: id, public key and signature (None for one-time X25519)."""

    key_id: int
    public_key: bytes
    signature: bytes | None


# --- key-transparency log -------------------------------------------------------------


async def fetch_nodes(conn: Conn, refs: Iterable[NodeRef]) -> dict[NodeRef, bytes]:
    """Reads perfect-subtree hashes (level 0 = leaf hashes) in one query.

    Raises:
        LogCorrupted: A requested node does not exist.
    """
    wanted = set(refs)
    leaves = [index for level, index in wanted if level == 0]
    inner = [(level, index) for level, index in wanted if level > 0]
    rows = await conn.fetch(
        """
        SELECT 0::smallint AS level, leaf_index AS idx, leaf_hash AS hash
        FROM kt_leaves WHERE leaf_index = ANY($1::bigint[])
        UNION ALL
        SELECT n.level, n.node_index, n.hash
        FROM kt_nodes n
        JOIN unnest($2::smallint[], $3::bigint[]) AS r(level, idx)
          ON n.level = r.level AND n.node_index = r.idx
        """,
        leaves,
        [level for level, _ in inner],
        [index for _, index in inner],
    )
    found = {(int(r["level"]), int(r["idx"])): bytes(r["hash"]) for r in rows}
    if len(found) != len(wanted):
        raise LogCorrupted(f"missing log nodes: {sorted(wanted - set(found))[:5]}")
    return found


async def hash_ranges(conn: Conn, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """MTH of each ``[start, end)`` range (see :mod:`conclave_keys.transparency`)."""
    nodes = await fetch_nodes(conn, nodes_for(ranges))
    return [range_hash(start, end, nodes) for start, end in ranges]


def _head(row: asyncpg.Record) -> SignedHead:
    return SignedHead(
        tree_size=int(row["tree_size"]),
        root_hash=bytes(row["root_hash"]),
        timestamp_ms=int(row["timestamp_ms"]),
        key_id=str(row["key_id"]),
        signature=bytes(row["signature"]),
    )


async def register_log_key(conn: Conn, signer: TreeHeadSigner) -> None:
    """Records the signer's public key (idempotent), so its heads can be served with it."""
    await conn.execute(
        "INSERT INTO kt_log_keys (key_id, public_key) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        signer.key_id,
        signer.public_key,
    )


async def append_leaf(
    conn: Conn,
    signer: TreeHeadSigner,
    action: LogAction,
    account_id: str,
    device_id: str,
    signing_public_key: bytes,
    agreement_public_key: bytes,
) -> tuple[int, SignedHead]:
    """Appends a leaf and signs the new head. Must run inside the caller's transaction.

    Returns:
        The new leaf's index and the head of the tree that now ends with it.
    """
    # Serialise appends until commit: index = current size, and nobody else can append
    # (or sign a head) between reading the size and inserting the head.
    await conn.execute("SELECT pg_advisory_xact_lock($1)", KT_APPEND_LOCK)
    last = await conn.fetchrow(
        "SELECT tree_size, max(timestamp_ms) AS timestamp_ms FROM kt_tree_heads"
        " GROUP BY tree_size ORDER BY tree_size DESC LIMIT 1"
    )
    index = int(last["tree_size"]) if last else 0
    # Head timestamps never go backwards, even if replicas' clocks disagree.
    timestamp_ms = max(int(time.time() * 1000), int(last["timestamp_ms"]) if last else 0)
    content = LeafContent(
        action, account_id, device_id, signing_public_key, agreement_public_key, timestamp_ms
    )
    leaf = content.hash()
    await conn.execute(
        """
        INSERT INTO kt_leaves (leaf_index, leaf_hash, action, account_id, device_id,
                               signing_public_key, agreement_public_key, timestamp_ms)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        """,
        index,
        leaf,
        int(action),
        account_id,
        device_id,
        signing_public_key,
        agreement_public_key,
        timestamp_ms,
    )
    completed = new_nodes_after_append(index)
    if completed:
        # Left children are older nodes; right children are the new leaf or the node just
        # completed one level below.
        known = await fetch_nodes(conn, [left for _, left, _ in completed])
        known[(0, index)] = leaf
        rows = []
        for node, left, right in completed:
            known[node] = node_hash(known[left], known[right])
            rows.append((node[0], node[1], known[node]))
        await conn.executemany(
            "INSERT INTO kt_nodes (level, node_index, hash) VALUES ($1, $2, $3)", rows
        )
    (root,) = await hash_ranges(conn, [(0, index + 1)])
    head = signer.sign(index + 1, timestamp_ms, root)
    await _insert_head(conn, head)
    return index, head


async def _insert_head(conn: Conn, head: SignedHead) -> None:
    await conn.execute(
        """
        INSERT INTO kt_tree_heads (tree_size, root_hash, timestamp_ms, key_id, signature)
        VALUES ($1, $2, $3, $4, $5)
        """,
        head.tree_size,
        head.root_hash,
        head.timestamp_ms,
        head.key_id,
        head.signature,
    )


# Of several heads for one size (signed by successive log keys), prefer the current key's.
_LATEST = """
SELECT * FROM kt_tree_heads
ORDER BY tree_size DESC, (key_id = $1) DESC, timestamp_ms DESC LIMIT 1
"""


async def latest_head(conn: Conn, signer: TreeHeadSigner) -> SignedHead:
    """The newest signed head; signs the empty tree's head on first use."""
    row = await conn.fetchrow(_LATEST, signer.key_id)
    if row is not None:
        return _head(row)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", KT_APPEND_LOCK)
        row = await conn.fetchrow(_LATEST, signer.key_id)
        if row is not None:
            return _head(row)
        head = signer.sign(0, int(time.time() * 1000), EMPTY_ROOT)
        await _insert_head(conn, head)
        return head


async def sign_latest_with(conn: Conn, signer: TreeHeadSigner) -> SignedHead | None:
    """Re-signs the latest tree with ``signer`` if it has not signed it yet (key rotation).

    Returns:
        The new head, or None when nothing needed signing (empty log or already signed).
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", KT_APPEND_LOCK)
        row = await conn.fetchrow(_LATEST, signer.key_id)
        if row is None or row["key_id"] == signer.key_id:
            return None
        latest = _head(row)
        timestamp_ms = max(int(time.time() * 1000), latest.timestamp_ms)
        head = signer.sign(latest.tree_size, timestamp_ms, latest.root_hash)
        await _insert_head(conn, head)
        return head


async def head_at(conn: Conn, tree_size: int, key_id: str) -> SignedHead | None:
    """The head signed at exactly ``tree_size`` (by ``key_id`` if it signed one), if any."""
    row = await conn.fetchrow(
        "SELECT * FROM kt_tree_heads WHERE tree_size = $1"
        " ORDER BY (key_id = $2) DESC, timestamp_ms DESC LIMIT 1",
        tree_size,
        key_id,
    )
    return _head(row) if row else None


async def log_public_key(conn: Conn, key_id: str) -> bytes | None:
    """The public key recorded for ``key_id``."""
    value = await conn.fetchval("SELECT public_key FROM kt_log_keys WHERE key_id = $1", key_id)
    return bytes(value) if value is not None else None


async def leaf_at(conn: Conn, index: int) -> asyncpg.Record | None:
    """The stored leaf row at ``index`` (content columns NULL once erased)."""
    return await conn.fetchrow("SELECT * FROM kt_leaves WHERE leaf_index = $1", index)


async def latest_binding_leaf(
    conn: Conn, account_id: str, device_id: str, signing: bytes, agreement: bytes
) -> asyncpg.Record | None:
    """The newest ADD/ROTATE leaf recording exactly this binding."""
    return await conn.fetchrow(
        """
        SELECT * FROM kt_leaves
        WHERE account_id = $1 AND device_id = $2 AND action IN (1, 2)
          AND signing_public_key = $3 AND agreement_public_key = $4
        ORDER BY leaf_index DESC LIMIT 1
        """,
        account_id,
        device_id,
        signing,
        agreement,
    )


async def all_leaf_hashes(conn: Conn) -> list[bytes]:
    """Every leaf hash in index order (for rebuilding the tree)."""
    rows = await conn.fetch("SELECT leaf_hash FROM kt_leaves ORDER BY leaf_index")
    return [bytes(r["leaf_hash"]) for r in rows]


async def all_heads(conn: Conn) -> list[SignedHead]:
    """Every signed head in size order."""
    rows = await conn.fetch("SELECT * FROM kt_tree_heads ORDER BY tree_size, timestamp_ms")
    return [_head(r) for r in rows]


# --- directory --------------------------------------------------------------------------


async def lock_device(conn: Conn, account_id: str, device_id: str) -> asyncpg.Record | None:
    """The device row, locked until commit (serialises writes for one device)."""
    return await conn.fetchrow(
        "SELECT * FROM devices WHERE account_id = $1 AND device_id = $2 FOR UPDATE",
        account_id,
        device_id,
    )


async def account_of_device(conn: Conn, device_id: str) -> str | None:
    """The account a published device belongs to."""
    value = await conn.fetchval("SELECT account_id FROM devices WHERE device_id = $1", device_id)
    return str(value) if value is not None else None


async def insert_device(
    conn: Conn,
    account_id: str,
    device_id: str,
    registration_id: int,
    signing: bytes,
    agreement: bytes,
    leaf_index: int,
) -> None:
    """Creates the device row, or replaces its identity after a rotation."""
    await conn.execute(
        """
        INSERT INTO devices (account_id, device_id, registration_id, signing_public_key,
                             agreement_public_key, leaf_index)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (account_id, device_id) DO UPDATE SET
            registration_id = EXCLUDED.registration_id,
            signing_public_key = EXCLUDED.signing_public_key,
            agreement_public_key = EXCLUDED.agreement_public_key,
            leaf_index = EXCLUDED.leaf_index,
            published_at = now(),
            low_notified_at = NULL
        """,
        account_id,
        device_id,
        registration_id,
        signing,
        agreement,
        leaf_index,
    )


async def delete_prekeys(conn: Conn, account_id: str, device_id: str) -> None:
    """Deletes every prekey of a device (its identity changed: they were signed by the old one)."""
    for table in ("signed_prekeys", "one_time_prekeys"):
        await conn.execute(
            f"DELETE FROM {table} WHERE account_id = $1 AND device_id = $2",  # noqa: S608 - fixed names
            account_id,
            device_id,
        )


async def delete_device(conn: Conn, account_id: str, device_id: str) -> None:
    """Deletes the device row; its prekeys go with it (ON DELETE CASCADE)."""
    await conn.execute(
        "DELETE FROM devices WHERE account_id = $1 AND device_id = $2", account_id, device_id
    )


async def stored_key_ids(
    conn: Conn, table: str, account_id: str, device_id: str
) -> set[tuple[int, int]]:
    """``(kind, key_id)`` pairs still stored for a device in ``table``."""
    assert table in ("signed_prekeys", "one_time_prekeys")
    rows = await conn.fetch(
        f"SELECT kind, key_id FROM {table} WHERE account_id = $1 AND device_id = $2",  # noqa: S608
        account_id,
        device_id,
    )
    return {(int(r["kind"]), int(r["key_id"])) for r in rows}


async def current_signed_key(
    conn: Conn, account_id: str, device_id: str, kind: int
) -> StoredKey | None:
    """The current signed prekey (kind 1) or last-resort prekey (kind 2) of a device."""
    row = await conn.fetchrow(
        """
        SELECT key_id, public_key, signature FROM signed_prekeys
        WHERE account_id = $1 AND device_id = $2 AND kind = $3 AND replaced_at IS NULL
        """,
        account_id,
        device_id,
        kind,
    )
    if row is None:
        return None
    return StoredKey(int(row["key_id"]), bytes(row["public_key"]), bytes(row["signature"]))


async def replace_signed_key(
    conn: Conn, account_id: str, device_id: str, kind: int, key: StoredKey
) -> None:
    """Makes ``key`` the current one of its kind; the previous one starts its grace period."""
    await conn.execute(
        """
        UPDATE signed_prekeys SET replaced_at = now()
        WHERE account_id = $1 AND device_id = $2 AND kind = $3 AND replaced_at IS NULL
        """,
        account_id,
        device_id,
        kind,
    )
    await conn.execute(
        """
        INSERT INTO signed_prekeys (account_id, device_id, kind, key_id, public_key, signature)
        VALUES ($1, $2, $3, $4, $5, $6)
        """,
        account_id,
        device_id,
        kind,
        key.key_id,
        key.public_key,
        key.signature,
    )


async def purge_replaced_signed_keys(conn: Conn, grace_seconds: float) -> int:
    """Deletes signed/last-resort prekeys replaced more than ``grace_seconds`` ago."""
    result = await conn.execute(
        "DELETE FROM signed_prekeys WHERE replaced_at < now() - make_interval(secs => $1)",
        float(grace_seconds),
    )
    return int(str(result).rsplit(" ", 1)[-1])


async def insert_one_time_keys(
    conn: Conn,
    account_id: str,
    device_id: str,
    kind: int,
    keys: Sequence[StoredKey],
) -> None:
    """Adds one-time prekeys in one statement (ids keep upload order, so oldest go first)."""
    if not keys:
        return
    await conn.execute(
        """
        INSERT INTO one_time_prekeys (account_id, device_id, kind, key_id, public_key, signature)
        SELECT $1, $2, $3, k.key_id, k.public_key, k.signature
        FROM unnest($4::bigint[], $5::bytea[], $6::bytea[])
             WITH ORDINALITY AS k(key_id, public_key, signature, n)
        ORDER BY k.n
        """,
        account_id,
        device_id,
        kind,
        [k.key_id for k in keys],
        [k.public_key for k in keys],
        [k.signature for k in keys],
    )


async def claim_one_time_key(
    conn: Conn, account_id: str, device_id: str, kind: int
) -> StoredKey | None:
    """Removes and returns the device's oldest one-time prekey of ``kind``, if any.

    Exactly-once under concurrency: the row is picked with ``FOR UPDATE SKIP LOCKED`` and
    deleted in the same statement, so two concurrent claims can never pick the same row (a
    locked row is skipped, not waited for, so claims do not queue behind each other), and
    only the claim whose DELETE removed the row gets it back. Oldest first (lowest id) so
    the keys that have been exposed on the server longest are used up first, as Synapse
    does. A row locked by a transaction that later rolls back is skipped by concurrent
    claims; they may then report "none left" although a key reappears, which is the safe
    direction (the sender simply starts without a one-time key).
    """
    row = await conn.fetchrow(
        """
        DELETE FROM one_time_prekeys
        WHERE id = (
            SELECT id FROM one_time_prekeys
            WHERE account_id = $1 AND device_id = $2 AND kind = $3
            ORDER BY id
            LIMIT 1
            FOR UPDATE SKIP LOCKED
        )
        RETURNING key_id, public_key, signature
        """,
        account_id,
        device_id,
        kind,
    )
    if row is None:
        return None
    signature = bytes(row["signature"]) if row["signature"] is not None else None
    return StoredKey(int(row["key_id"]), bytes(row["public_key"]), signature)


async def one_time_counts(conn: Conn, account_id: str, device_id: str) -> tuple[int, int]:
    """Unclaimed one-time prekeys of a device: (X25519, ML-KEM-1024)."""
    row = await conn.fetchrow(
        """
        SELECT count(*) FILTER (WHERE kind = 1) AS ec, count(*) FILTER (WHERE kind = 2) AS kem
        FROM one_time_prekeys WHERE account_id = $1 AND device_id = $2
        """,
        account_id,
        device_id,
    )
    assert row is not None
    return int(row["ec"]), int(row["kem"])


async def mark_low_notified(conn: Conn, account_id: str, device_id: str) -> bool:
    """Claims the right to send a prekeys-low event (at most one per device per 10 min)."""
    value = await conn.fetchval(
        """
        UPDATE devices SET low_notified_at = now()
        WHERE account_id = $1 AND device_id = $2
          AND (low_notified_at IS NULL OR low_notified_at < now() - interval '10 minutes')
        RETURNING 1
        """,
        account_id,
        device_id,
    )
    return value is not None


async def published_devices(
    conn: Conn, account_id: str, device_id: str | None = None
) -> list[asyncpg.Record]:
    """Devices of an account with their current signed and last-resort prekeys, by device id."""
    return await conn.fetch(
        """
        SELECT d.device_id, d.registration_id, d.signing_public_key, d.agreement_public_key,
               d.leaf_index, d.published_at,
               sp.key_id AS sp_id, sp.public_key AS sp_key, sp.signature AS sp_sig,
               sp.uploaded_at AS sp_time,
               lr.key_id AS lr_id, lr.public_key AS lr_key, lr.signature AS lr_sig,
               lr.uploaded_at AS lr_time
        FROM devices d
        JOIN signed_prekeys sp ON sp.account_id = d.account_id AND sp.device_id = d.device_id
             AND sp.kind = 1 AND sp.replaced_at IS NULL
        JOIN signed_prekeys lr ON lr.account_id = d.account_id AND lr.device_id = d.device_id
             AND lr.kind = 2 AND lr.replaced_at IS NULL
        WHERE d.account_id = $1 AND ($2::text IS NULL OR d.device_id = $2)
        ORDER BY d.device_id
        """,
        account_id,
        device_id,
    )


async def all_counts(conn: Conn, account_id: str, device_id: str | None) -> list[asyncpg.Record]:
    """Per-device one-time counts for an account's devices (or one), by device id."""
    return await conn.fetch(
        """
        SELECT d.device_id,
               count(o.id) FILTER (WHERE o.kind = 1) AS ec,
               count(o.id) FILTER (WHERE o.kind = 2) AS kem
        FROM devices d
        LEFT JOIN one_time_prekeys o ON o.account_id = d.account_id AND o.device_id = d.device_id
        WHERE d.account_id = $1 AND ($2::text IS NULL OR d.device_id = $2)
        GROUP BY d.device_id
        ORDER BY d.device_id
        """,
        account_id,
        device_id,
    )


async def erase_account(conn: Conn, account_id: str) -> int:
    """Deletes an account's keys and the content of its log leaves; returns rows affected.

    Leaf hashes stay: they cover random public keys, so they do not identify the account,
    and without them the tree could no longer be rebuilt to the heads clients verified.
    """
    devices = {
        str(r["device_id"])
        for r in await conn.fetch(
            "SELECT DISTINCT device_id FROM kt_leaves WHERE account_id = $1", account_id
        )
    }
    counts = [
        await conn.execute("DELETE FROM one_time_prekeys WHERE account_id = $1", account_id),
        await conn.execute("DELETE FROM signed_prekeys WHERE account_id = $1", account_id),
        await conn.execute("DELETE FROM devices WHERE account_id = $1", account_id),
        await conn.execute(
            """
            UPDATE kt_leaves SET action = NULL, account_id = NULL, device_id = NULL,
                signing_public_key = NULL, agreement_public_key = NULL, timestamp_ms = NULL
            WHERE account_id = $1
            """,
            account_id,
        ),
        # Rate-limit buckets are keyed "<limit name>:<account or device id>".
        await conn.execute(
            "DELETE FROM rate_limit_buckets WHERE split_part(bucket, ':', 2) = ANY($1::text[])",
            [account_id, *devices],
        ),
    ]
    return sum(int(str(c).rsplit(" ", 1)[-1]) for c in counts)
