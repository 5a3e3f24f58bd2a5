"""Media's :class:`conclave_kit.account_data.AccountDataProvider`: export, purge, erasure.

Export lists the metadata of every blob the account uploaded (never a media id — only its
SHA-256 is stored — and never content). Purge deletes expired blobs and abandoned uploads
(chunks first, then rows) and idle rate-limit buckets. Erasure deletes every blob of the
account, its chunks and its rate-limit bucket.
"""

from __future__ import annotations

from typing import Any

from conclave.common.v1 import account_data_pb2 as D
from conclave_kit.account_data import iso, rate_limit_buckets
from conclave_kit.ratelimit import RateLimiter
from conclave_kit.tokens import Claims

from conclave_media import store
from conclave_media.manager import MediaManager

_STATES = {store.UPLOADING: "UPLOADING", store.COMPLETE: "COMPLETE", store.DELETED: "DELETED"}


def _kind(state: int) -> int:
    return D.PURGE_KIND_INCOMPLETE_UPLOADS if state == store.UPLOADING else D.PURGE_KIND_MEDIA_BLOBS


class MediaAccountData:
    """Media's account data (see module docstring).

    Args:
        manager: The media manager (pool, clock, storage).
        pool: The media schema's pool.
    """

    service: str = "media"
    kinds: tuple[int, ...] = (
        D.PURGE_KIND_MEDIA_BLOBS,
        D.PURGE_KIND_INCOMPLETE_UPLOADS,
        D.PURGE_KIND_BOOKKEEPING,
    )

    def __init__(self, manager: MediaManager, pool: Any) -> None:
        self._m = manager
        self._pool = pool

    async def export(self, claims: Claims) -> dict[str, Any]:
        """The media section of the caller's export."""
        rows = await self._pool.fetch(
            "SELECT * FROM blobs WHERE account_id = $1 ORDER BY created_at", claims.account_id
        )
        quota = await self._m.quota(claims.account_id)
        buckets = await rate_limit_buckets(self._pool, [claims.account_id])
        return {
            "blobs": [
                {
                    "media_id_sha256": bytes(r["id_hash"]).hex(),
                    "state": _STATES.get(int(r["state"]), str(r["state"])),
                    "size_bytes": r["size_bytes"],
                    "chunk_size": r["chunk_size"],
                    "chunks_received": r["chunks_received"],
                    "ciphertext_sha256": bytes(r["ciphertext_sha256"]).hex(),
                    "created_at": iso(r["created_at"]),
                    "completed_at": iso(r["completed_at"]),
                    "expires_at": iso(r["expires_at"]),
                }
                for r in rows
            ],
            "quota": {
                "used_bytes": quota.used_bytes,
                "limit_bytes": quota.limit_bytes,
                "blob_count": quota.blob_count,
            },
            "rate_limit_buckets": buckets,
        }

    async def purge(self, kinds: frozenset[int]) -> dict[int, int]:
        """Expired blobs and abandoned uploads (one pass deletes both kinds)."""
        counts: dict[int, int] = {}
        if kinds & {D.PURGE_KIND_MEDIA_BLOBS, D.PURGE_KIND_INCOMPLETE_UPLOADS}:
            for state, n in (await self._m.purge_expired_by_state()).items():
                counts[_kind(state)] = counts.get(_kind(state), 0) + n
            for kind in (D.PURGE_KIND_MEDIA_BLOBS, D.PURGE_KIND_INCOMPLETE_UPLOADS):
                counts.setdefault(kind, 0)
        if D.PURGE_KIND_BOOKKEEPING in kinds:
            counts[D.PURGE_KIND_BOOKKEEPING] = 0  # idle buckets go with every purge pass
        return counts

    async def purge_lag(self) -> dict[int, float]:
        """How overdue the oldest expired blob and abandoned upload are."""
        now = self._m.now()
        lag: dict[int, float] = {
            D.PURGE_KIND_MEDIA_BLOBS: 0.0,
            D.PURGE_KIND_INCOMPLETE_UPLOADS: 0.0,
        }
        for state, due in (await self._m.oldest_expired()).items():
            kind = _kind(state)
            lag[kind] = max(lag[kind], (now - due).total_seconds())
        lag[D.PURGE_KIND_BOOKKEEPING] = 0.0
        return lag

    async def erase(self, account_id: str) -> int:
        """Every blob and chunk of the account, and its upload bucket."""
        blobs = await self._m.erase_account(account_id)
        return blobs + await RateLimiter(self._pool).erase_key(account_id)
