"""Keys' :class:`conclave_kit.account_data.AccountDataProvider`: export, purge, erasure.

Export lists the account's published devices with their public identity keys, its
signed and one-time prekeys (public halves and ids) and the transparency-log leaves that
bind its devices. Purge deletes replaced signed/last-resort prekeys past their grace
period and idle rate-limit buckets. Erasure deletes devices and prekeys and clears the
content of the account's log leaves (their hashes stay, see keys.proto).
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

from conclave.common.v1 import account_data_pb2 as D
from conclave_kit.account_data import iso, rate_limit_buckets
from conclave_kit.ratelimit import RateLimiter
from conclave_kit.runtime import Resources
from conclave_kit.tokens import Claims

from conclave_keys.config import KeysConfig
from conclave_keys.manager import KeyManager

# Rate-limit buckets of the keys service refill within minutes; an hour idle means full.
_IDLE_BUCKET_SECONDS = 3600.0
_ACTIONS = {1: "ADD", 2: "ROTATE", 3: "REMOVE"}
_KINDS = {1: "X25519", 2: "ML_KEM_1024"}


def _b64(raw: bytes | None) -> str | None:
    return None if raw is None else base64.b64encode(bytes(raw)).decode()


class KeysAccountData:
    """Keys' account data (see module docstring).

    Args:
        resources: The process resources (pool).
        config: Keys settings (signed-prekey grace period).
        manager: The key manager (erasure).
    """

    service: str = "keys"
    kinds: tuple[int, ...] = (D.PURGE_KIND_PREKEYS, D.PURGE_KIND_BOOKKEEPING)

    def __init__(self, resources: Resources, config: KeysConfig, manager: KeyManager) -> None:
        self._resources = resources
        self._config = config
        self._manager = manager

    async def export(self, claims: Claims) -> dict[str, Any]:
        """The keys section of the caller's export."""
        account = claims.account_id
        async with self._resources.pool.acquire() as conn:
            devices = await conn.fetch(
                "SELECT * FROM devices WHERE account_id = $1 ORDER BY device_id", account
            )
            signed = await conn.fetch(
                "SELECT * FROM signed_prekeys WHERE account_id = $1 "
                "ORDER BY device_id, kind, key_id",
                account,
            )
            one_time = await conn.fetch(
                "SELECT * FROM one_time_prekeys WHERE account_id = $1 ORDER BY id", account
            )
            leaves = await conn.fetch(
                "SELECT * FROM kt_leaves WHERE account_id = $1 ORDER BY leaf_index", account
            )
            buckets = await rate_limit_buckets(conn, [account, *(d["device_id"] for d in devices)])
        return {
            "devices": [
                {
                    "device_id": d["device_id"],
                    "registration_id": d["registration_id"],
                    "signing_public_key": _b64(d["signing_public_key"]),
                    "agreement_public_key": _b64(d["agreement_public_key"]),
                    "leaf_index": d["leaf_index"],
                    "published_at": iso(d["published_at"]),
                    "low_notified_at": iso(d["low_notified_at"]),
                }
                for d in devices
            ],
            "signed_prekeys": [
                {
                    "device_id": k["device_id"],
                    "kind": "X25519_SIGNED" if k["kind"] == 1 else "ML_KEM_1024_LAST_RESORT",
                    "key_id": k["key_id"],
                    "public_key": _b64(k["public_key"]),
                    "signature": _b64(k["signature"]),
                    "uploaded_at": iso(k["uploaded_at"]),
                    "replaced_at": iso(k["replaced_at"]),
                }
                for k in signed
            ],
            "one_time_prekeys": [
                {
                    "device_id": k["device_id"],
                    "kind": _KINDS[k["kind"]],
                    "key_id": k["key_id"],
                    "public_key": _b64(k["public_key"]),
                    "signature": _b64(k["signature"]),
                    "uploaded_at": iso(k["uploaded_at"]),
                }
                for k in one_time
            ],
            "transparency_log_leaves": [
                {
                    "leaf_index": leaf["leaf_index"],
                    "leaf_hash": _b64(leaf["leaf_hash"]),
                    "action": _ACTIONS.get(leaf["action"]),
                    "device_id": leaf["device_id"],
                    "signing_public_key": _b64(leaf["signing_public_key"]),
                    "agreement_public_key": _b64(leaf["agreement_public_key"]),
                    "timestamp_ms": leaf["timestamp_ms"],
                }
                for leaf in leaves
            ],
            "rate_limit_buckets": buckets,
        }

    async def purge(self, kinds: frozenset[int]) -> dict[int, int]:
        """Replaced prekeys past the grace period; idle rate-limit buckets."""
        counts: dict[int, int] = {}
        if D.PURGE_KIND_PREKEYS in kinds:
            counts[D.PURGE_KIND_PREKEYS] = await self._manager.purge_expired()
        if D.PURGE_KIND_BOOKKEEPING in kinds:
            counts[D.PURGE_KIND_BOOKKEEPING] = await RateLimiter(self._resources.pool).purge_idle(
                _IDLE_BUCKET_SECONDS
            )
        return counts

    async def purge_lag(self) -> dict[int, float]:
        """How overdue the oldest replaced prekey past its grace period is."""
        oldest = await self._resources.pool.fetchval(
            "SELECT min(replaced_at) FROM signed_prekeys WHERE replaced_at IS NOT NULL"
        )
        lag = 0.0
        if oldest is not None:
            due = oldest + timedelta(seconds=self._config.signed_prekey_grace_seconds)
            lag = max(0.0, (datetime.now(UTC) - due).total_seconds())
        return {D.PURGE_KIND_PREKEYS: lag, D.PURGE_KIND_BOOKKEEPING: 0.0}

    async def erase(self, account_id: str) -> int:
        """See :meth:`KeyManager.erase_account`."""
        return await self._manager.erase_account(account_id)
