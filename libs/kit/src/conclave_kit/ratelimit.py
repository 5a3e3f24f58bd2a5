"""Token-bucket rate limits stored in PostgreSQL, so they hold across replicas.

A bucket holds at most ``capacity`` tokens and refills at ``refill_per_second``; each
attempt takes ``cost`` tokens. Take-and-refill is one atomic ``INSERT ... ON CONFLICT``
statement, so concurrent requests on several replicas cannot overspend a bucket.

A service that uses limits adds this table to its own schema in a migration::

    CREATE TABLE rate_limit_buckets (
        bucket text PRIMARY KEY,           -- e.g. 'login:account:<uuid>'; see data-map
        tokens double precision NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    );

Rows whose bucket has been full again for a while carry no information; purge jobs delete
rows idle for longer than the longest refill time (see :meth:`RateLimiter.purge_idle`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import asyncpg

from conclave_kit.errors import ResourceExhausted


@dataclass(frozen=True)
class Limit:
    """A bucket's shape.

    Attributes:
        name: Prefix of the bucket key and part of the error message ("login attempts").
        capacity: Burst size (tokens when full).
        refill_per_second: Tokens added per second.
    """

    name: str
    capacity: float
    refill_per_second: float

    @property
    def seconds_to_full(self) -> float:
        """Time an empty bucket needs to refill completely."""
        return self.capacity / self.refill_per_second


# clock_timestamp(), not now(): now() is the transaction's start, so a statement that
# waited for the row lock would see time run backwards and overdraw the bucket.
_ELAPSED = "GREATEST(0, EXTRACT(EPOCH FROM (clock_timestamp() - {t}.updated_at)))::float8"
_TAKE = f"""
INSERT INTO rate_limit_buckets AS b (bucket, tokens, updated_at)
VALUES ($1, $2::float8 - $4::float8, clock_timestamp())
ON CONFLICT (bucket) DO UPDATE SET
    tokens = LEAST($2::float8, b.tokens + {_ELAPSED.format(t="b")} * $3::float8) - $4::float8,
    updated_at = GREATEST(b.updated_at, clock_timestamp())
WHERE LEAST($2::float8, b.tokens + {_ELAPSED.format(t="b")} * $3::float8) >= $4::float8
RETURNING tokens
"""  # noqa: S608 - only constant fragments are interpolated
_PEEK = f"""
SELECT LEAST($2::float8, tokens + {_ELAPSED.format(t="rate_limit_buckets")} * $3::float8)
FROM rate_limit_buckets WHERE bucket = $1
"""  # noqa: S608 - only constant fragments are interpolated


class RateLimiter:
    """Takes tokens from Postgres-backed buckets.

    Args:
        pool: The service's pool (its schema holds ``rate_limit_buckets``).
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def try_take(self, limit: Limit, key: str, cost: float = 1.0) -> float | None:
        """Takes ``cost`` tokens if available.

        Returns:
            None when taken; otherwise the seconds until ``cost`` tokens will be available.
        """
        bucket = f"{limit.name}:{key}"
        args = (bucket, float(limit.capacity), float(limit.refill_per_second), float(cost))
        async with self._pool.acquire() as conn:
            taken = await conn.fetchval(_TAKE, *args)
            if taken is not None:
                return None
            available = await conn.fetchval(_PEEK, *args[:3])
        missing = cost - float(available or 0.0)
        return max(missing / limit.refill_per_second, 0.001)

    async def available(self, limit: Limit, key: str) -> float:
        """Tokens in the bucket now (full capacity for a bucket never used)."""
        value = await self._pool.fetchval(
            _PEEK, f"{limit.name}:{key}", float(limit.capacity), float(limit.refill_per_second)
        )
        return float(limit.capacity) if value is None else float(value)

    async def take(self, limit: Limit, key: str, cost: float = 1.0) -> None:
        """Takes ``cost`` tokens or raises.

        Raises:
            ResourceExhausted: The bucket is empty; carries ``retry_after_seconds``.
        """
        wait = await self.try_take(limit, key, cost)
        if wait is not None:
            raise ResourceExhausted(
                f"too many {limit.name}; retry in {math.ceil(wait)} s",
                retry_after_seconds=wait,
                reason="RATE_LIMITED",
            )

    async def purge_idle(self, older_than_seconds: float) -> int:
        """Deletes buckets untouched for ``older_than_seconds`` (they are full again).

        Returns:
            The number of rows deleted.
        """
        result = await self._pool.execute(
            "DELETE FROM rate_limit_buckets "
            "WHERE updated_at < clock_timestamp() - make_interval(secs => $1)",
            float(older_than_seconds),
        )
        return int(str(result).rsplit(" ", 1)[-1])

    async def erase_key(self, key: str) -> int:
        """Deletes every bucket keyed by ``key`` (an account or device id), whatever limit.

        Account erasure uses it: bucket names end in ``:<key>``, so the id leaves no row.

        Returns:
            The number of rows deleted.
        """
        result = await self._pool.execute(
            "DELETE FROM rate_limit_buckets WHERE bucket LIKE '%:' || $1", key
        )
        return int(str(result).rsplit(" ", 1)[-1])
