"""asyncpg connection pool with a start-up deadline.

Each service sets ``search_path`` to its own schema, so its SQL names its tables without a
prefix and cannot touch another service's tables by accident.
"""

from __future__ import annotations

import asyncio
import time
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from conclave_kit.errors import Unavailable
from conclave_kit.logs import get_logger

_log = get_logger("conclave.database")

# What store functions accept: a plain connection or one borrowed from a pool.
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"


async def create_pool(
    url: str,
    *,
    schema: str,
    timeout_seconds: float,
    min_size: int = 1,
    max_size: int = 10,
) -> asyncpg.Pool:
    """Connects to PostgreSQL, retrying until ``timeout_seconds`` have passed.

    Args:
        url: A ``postgresql://`` URL (Unix-socket hosts allowed).
        schema: The service's schema, put first on ``search_path``.
        timeout_seconds: Give up after this long.
        min_size: Connections kept open.
        max_size: Upper bound of the pool.

    Raises:
        Unavailable: PostgreSQL did not accept connections in time.
    """
    deadline = time.monotonic() + timeout_seconds
    delay = 0.1
    while True:
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=min_size,
                max_size=max_size,
                server_settings={"search_path": schema, "application_name": f"conclave-{schema}"},
            )
            _log.info("database_connected", schema=schema)
            return pool
        except (TimeoutError, OSError, asyncpg.PostgresError) as err:
            if time.monotonic() + delay > deadline:
                raise Unavailable(f"PostgreSQL unreachable: {type(err).__name__}") from err
            _log.warning("database_retry", error_type=type(err).__name__, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
