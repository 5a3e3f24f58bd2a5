"""Ordered SQL migrations per schema, applied once, safe when replicas start together.

A service ships files named ``NNNN_description.sql`` in its ``migrations`` package. At
start-up :func:`apply_migrations` takes a PostgreSQL advisory lock for the schema (so two
replicas starting at once serialise instead of racing), creates the schema and its
``schema_migrations`` table if needed, refuses to start if an applied file was edited
(checksum mismatch), and applies each pending file in its own transaction together with the
row that records it: a migration is either fully applied and recorded, or not at all.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from conclave_kit.logs import get_logger

_log = get_logger("conclave.migrations")
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_SCHEMA = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class MigrationError(Exception):
    """The migration files or the recorded history are inconsistent."""


@dataclass(frozen=True)
class Migration:
    """One SQL file.

    Attributes:
        version: The file's number (``0001`` is 1).
        name: The description part of the file name.
        sql: The statements.
        checksum: SHA-256 of ``sql``; an applied migration must never change.
    """

    version: int
    name: str
    sql: str
    checksum: str


def load_migrations(package: str) -> list[Migration]:
    """Reads ``NNNN_name.sql`` files from a package, in order.

    Raises:
        MigrationError: A file is misnamed or versions are not 1, 2, 3, ... without gaps.
    """
    found: list[Migration] = []
    for entry in resources.files(package).iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE.match(entry.name)
        if match is None:
            raise MigrationError(f"{package}: bad migration file name {entry.name!r}")
        sql = entry.read_text(encoding="utf-8")
        found.append(
            Migration(
                version=int(match.group(1)),
                name=match.group(2),
                sql=sql,
                checksum=hashlib.sha256(sql.encode()).hexdigest(),
            )
        )
    found.sort(key=lambda m: m.version)
    expected = list(range(1, len(found) + 1))
    if [m.version for m in found] != expected:
        raise MigrationError(f"{package}: migration versions must be 1..N without gaps")
    return found


def _lock_key(schema: str) -> int:
    digest = hashlib.sha256(f"conclave.migrations.{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def apply_migrations(
    pool: asyncpg.Pool, schema: str, migrations: list[Migration]
) -> list[int]:
    """Brings ``schema`` up to date.

    Returns:
        The versions applied by this call (empty when already current).

    Raises:
        MigrationError: An applied migration's checksum differs from the file, or the
            database has versions this code does not know (a newer release ran).
    """
    if _SCHEMA.match(schema) is None:
        raise MigrationError(f"invalid schema name {schema!r}")
    applied_now: list[int] = []
    async with pool.acquire() as conn:
        # Session-level lock: held across the per-migration transactions below.
        await conn.execute("SELECT pg_advisory_lock($1)", _lock_key(schema))
        try:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(
                f"""CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations (
                    version integer PRIMARY KEY,
                    name text NOT NULL,
                    checksum text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            rows = await conn.fetch(
                # schema is checked against _SCHEMA above, so interpolating it is safe.
                f'SELECT version, checksum FROM "{schema}".schema_migrations ORDER BY version'  # noqa: S608
            )
            recorded = {int(r["version"]): str(r["checksum"]) for r in rows}
            known = {m.version: m for m in migrations}
            unknown = sorted(set(recorded) - set(known))
            if unknown:
                raise MigrationError(
                    f"schema {schema} has migrations {unknown} this release does not know"
                )
            for version, checksum in recorded.items():
                if known[version].checksum != checksum:
                    raise MigrationError(
                        f"schema {schema}: applied migration {version:04d} was edited"
                    )
            for migration in migrations:
                if migration.version in recorded:
                    continue
                async with conn.transaction():
                    await conn.execute(f'SET LOCAL search_path TO "{schema}"')
                    await conn.execute(migration.sql)
                    await conn.execute(
                        f'INSERT INTO "{schema}".schema_migrations (version, name, checksum) '  # noqa: S608
                        "VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
                applied_now.append(migration.version)
                _log.info("migration_applied", schema=schema, version=migration.version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _lock_key(schema))
    return applied_now
