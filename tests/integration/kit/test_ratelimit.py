"""Postgres token buckets: exact under concurrency, refill over time, retry-after."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from conclave_devstack.infra import EmbeddedPostgres
from conclave_kit.database import create_pool
from conclave_kit.errors import ResourceExhausted
from conclave_kit.migrations import apply_migrations, load_migrations
from conclave_kit.ratelimit import Limit, RateLimiter

pytestmark = pytest.mark.integration


@pytest.fixture
async def limiter(postgres: EmbeddedPostgres) -> AsyncIterator[RateLimiter]:
    schema = f"rl_{uuid.uuid4().hex[:10]}"
    pool: asyncpg.Pool = await create_pool(postgres.url, schema=schema, timeout_seconds=10)
    await apply_migrations(pool, schema, load_migrations("tests.integration.kit.fixture_ratelimit"))
    yield RateLimiter(pool)
    await pool.execute(f'DROP SCHEMA "{schema}" CASCADE')
    await pool.close()


async def test_concurrent_takes_never_overspend(limiter: RateLimiter) -> None:
    """50 simultaneous attempts on a bucket of 5 (slow refill): exactly 5 succeed."""
    limit = Limit("totp checks", capacity=5, refill_per_second=1 / 600)
    results = await asyncio.gather(*(limiter.try_take(limit, "acc-1") for _ in range(50)))
    assert sum(r is None for r in results) == 5
    waits = [r for r in results if r is not None]
    assert all(500 < w <= 600 for w in waits)  # about one refill interval


async def test_refill_and_retry_after(limiter: RateLimiter) -> None:
    """An empty fast bucket refuses with a retry-after, then accepts after refilling."""
    limit = Limit("uploads", capacity=2, refill_per_second=20)
    await limiter.take(limit, "k")
    await limiter.take(limit, "k")
    with pytest.raises(ResourceExhausted) as err:
        await limiter.take(limit, "k")
    assert err.value.retry_after_seconds is not None
    assert 0 < err.value.retry_after_seconds <= 0.06
    await asyncio.sleep(0.1)
    await limiter.take(limit, "k")
    await limiter.take(limit, "other-key")  # buckets are per key


async def test_purge_idle(limiter: RateLimiter) -> None:
    """Idle buckets are purgeable; recently used ones are kept."""
    limit = Limit("x", capacity=1, refill_per_second=1)
    await limiter.take(limit, "a")
    assert await limiter.purge_idle(3600) == 0
    await asyncio.sleep(0.05)
    assert await limiter.purge_idle(0.01) == 1
