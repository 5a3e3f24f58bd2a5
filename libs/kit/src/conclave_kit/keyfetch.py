"""Fetching access-token verification keys from the auth service, and keeping them fresh.

Every service verifies tokens offline, so it must learn about a new signing key before
auth starts using it. With ``CONCLAVE_TOKEN_KEYS_FROM`` set, the runtime fetches
``AuthService.GetTokenVerificationKeys`` at start-up (retrying until the start-up deadline)
and again every ``cache_ttl`` the answer names (5 minutes by default). Keys configured
statically in ``CONCLAVE_TOKEN_VERIFY_KEYS`` stay trusted as well. A failed refresh keeps the
last good set and is logged: an auth outage must not lock every user out of every service.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping

import grpc
from conclave.auth.v1 import auth_pb2, auth_pb2_grpc

from conclave_kit.errors import Unavailable
from conclave_kit.logs import get_logger
from conclave_kit.tokens import TokenVerifier

_log = get_logger("conclave.keyfetch")
_MIN_REFRESH = 30.0
_MAX_REFRESH = 3600.0


class VerificationKeyFetcher:
    """Keeps a :class:`TokenVerifier` in step with the auth service's published keys.

    Args:
        address: ``host:port`` of the auth service.
        verifier: The verifier whose keys are replaced on each successful fetch.
        static_keys: Keys always trusted in addition (from configuration).
    """

    def __init__(
        self, address: str, verifier: TokenVerifier, static_keys: Mapping[str, bytes]
    ) -> None:
        self._address = address
        self._verifier = verifier
        self._static = dict(static_keys)
        self._refresh_seconds = 300.0
        self._task: asyncio.Task[None] | None = None

    async def fetch_once(self) -> int:
        """Fetches and installs the current keys; returns how many are trusted now.

        Raises:
            grpc.aio.AioRpcError: auth did not answer.
        """
        async with grpc.aio.insecure_channel(self._address) as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            reply = await stub.GetTokenVerificationKeys(
                auth_pb2.GetTokenVerificationKeysRequest(), timeout=5
            )
        fetched = {
            k.key_id: bytes(k.public_key)
            for k in reply.keys
            if k.purpose == auth_pb2.KEY_PURPOSE_ACCESS_TOKEN and len(k.public_key) == 32
        }
        self._verifier.set_keys({**self._static, **fetched})
        ttl = reply.cache_ttl.ToTimedelta().total_seconds() if reply.HasField("cache_ttl") else 300
        self._refresh_seconds = min(max(ttl, _MIN_REFRESH), _MAX_REFRESH)
        _log.info("token_keys_fetched", key_ids=sorted(self._verifier.key_ids))
        return len(self._verifier.key_ids)

    async def fetch_until(self, timeout_seconds: float) -> None:
        """Fetches at start-up, retrying while auth itself is still starting.

        Raises:
            Unavailable: no answer before the deadline.
        """
        deadline = time.monotonic() + timeout_seconds
        delay = 0.2
        while True:
            try:
                await self.fetch_once()
                return
            except grpc.aio.AioRpcError as err:
                if time.monotonic() + delay > deadline:
                    raise Unavailable(
                        f"token keys unavailable from auth at {self._address}: {err.code().name}"
                    ) from err
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def start(self) -> None:
        """Starts periodic refreshes."""
        self._task = asyncio.create_task(self._run(), name="token-key-refresh")

    async def stop(self) -> None:
        """Stops refreshing."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_seconds)
            try:
                await self.fetch_once()
            except grpc.aio.AioRpcError as err:
                _log.warning("token_keys_refresh_failed", code=err.code().name)
