"""Migrations against a real PostgreSQL: applied once, safe under concurrent starts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from conclave_devstack.infra import EmbeddedPostgres
from conclave_kit.database import create_pool
from conclave_kit.migrations import MigrationError, apply_migrations, load_migrations

pytestmark = pytest.mark.integration
PKG_A = "tests.integration.kit.fixture_migrations_a"
PKG_B = "tests.integration.kit.fixture_migrations_b"


@pytest.fixture
async def schema_pool(postgres: EmbeddedPostgres) -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    pool = await create_pool(postgres.url, schema=schema, timeout_seconds=10, max_size=4)
    yield schema, pool
    await pool.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    await pool.close()


async def test_applied_once_and_recorded(schema_pool: tuple[str, asyncpg.Pool]) -> None:
    """A second run applies nothing and the seed row exists exactly once."""
    schema, pool = schema_pool
    migrations = load_migrations(PKG_A)
    assert await apply_migrations(pool, schema, migrations) == [1, 2]
    assert await apply_migrations(pool, schema, migrations) == []
    assert await pool.fetchval("SELECT count(*) FROM widgets") == 1
    rows = await pool.fetch(f'SELECT version, name FROM "{schema}".schema_migrations')
    assert [(r["version"], r["name"]) for r in rows] == [(1, "create"), (2, "seed")]


async def test_concurrent_starts_apply_once(
    postgres: EmbeddedPostgres, schema_pool: tuple[str, asyncpg.Pool]
) -> None:
    """Four replicas migrating at the same moment: each migration runs exactly once."""
    schema, _ = schema_pool
    migrations = load_migrations(PKG_A)
    pools = [
        await create_pool(postgres.url, schema=schema, timeout_seconds=10, max_size=1)
        for _ in range(4)
    ]
    try:
        results = await asyncio.gather(*(apply_migrations(p, schema, migrations) for p in pools))
        assert sorted(v for r in results for v in r) == [1, 2]
        assert await pools[0].fetchval("SELECT count(*) FROM widgets") == 1
    finally:
        for p in pools:
            await p.close()


async def test_edited_migration_refuses_to_start(schema_pool: tuple[str, asyncpg.Pool]) -> None:
    """Changing an already-applied file is detected by checksum and stops start-up."""
    schema, pool = schema_pool
    await apply_migrations(pool, schema, load_migrations(PKG_A)[:1])
    with pytest.raises(MigrationError, match="applied migration 0001 was edited"):
        await apply_migrations(pool, schema, load_migrations(PKG_B))


async def test_failed_migration_leaves_nothing_half_applied(
    schema_pool: tuple[str, asyncpg.Pool],
) -> None:
    """A failing migration rolls back with its bookkeeping row; earlier ones stay."""
    schema, pool = schema_pool
    good = load_migrations(PKG_A)
    bad = type(good[1])(version=2, name="broken", sql="INSERT INTO nope VALUES (1);", checksum="x")
    with pytest.raises(asyncpg.UndefinedTableError):
        await apply_migrations(pool, schema, [good[0], bad])
    rows = await pool.fetch(f'SELECT version FROM "{schema}".schema_migrations')
    assert [r["version"] for r in rows] == [1]
    assert await apply_migrations(pool, schema, good) == [2]
