"""Benchmarks of the keys service (skipped unless CONCLAVE_BENCH=1; numbers go to stdout).

Run: ``CONCLAVE_BENCH=1 .venv/bin/pytest -q -s tests/integration/keys/test_bench.py``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

import pytest
from conclave.keys.v1 import keys_pb2
from conclave_client import transparency as kt
from conclave_devstack.infra import EmbeddedPostgres
from conclave_keys import store
from conclave_keys.transparency import (
    InMemoryTree,
    consistency_ranges,
    inclusion_ranges,
    leaf_hash,
)
from conclave_kit.database import create_pool
from conclave_kit.migrations import apply_migrations, load_migrations

from tests.integration.keys.conftest import Device, KeysHarness

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.environ.get("CONCLAVE_BENCH") != "1", reason="set CONCLAVE_BENCH=1"),
]
CLAIMERS = 50
CLAIMS_EACH = 40
TARGETS = 10


async def test_bench_bundle_claims(keys: KeysHarness) -> None:
    """Bundle claims/s and latency percentiles with 50 concurrent claimers."""
    targets = [Device() for _ in range(TARGETS)]
    for target in targets:
        await keys.publish(target)
        for start in range(1, 401, 100):
            await keys.stub.UploadPrekeys(
                keys_pb2.UploadPrekeysRequest(
                    one_time_prekeys=target.one_time(range(start, start + 100)),
                    pq_one_time_prekeys=target.pq_one_time(range(start, start + 100)),
                ),
                metadata=keys.auth(target),
            )
    latencies: list[float] = []

    async def claimer(n: int) -> None:
        me = Device()
        auth = keys.auth(me)
        for i in range(CLAIMS_EACH):
            target = targets[(n + i) % TARGETS]
            started = time.perf_counter()
            await keys.stub.ClaimPrekeyBundles(
                keys_pb2.ClaimPrekeyBundlesRequest(account_id=target.account_id), metadata=auth
            )
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(claimer(n) for n in range(CLAIMERS)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    total = len(latencies)
    print(
        f"\nclaims: {total} by {CLAIMERS} concurrent claimers in {elapsed:.2f} s = "
        f"{total / elapsed:.0f} claims/s; latency p50 {statistics.median(latencies) * 1e3:.1f} ms,"
        f" p99 {latencies[int(total * 0.99) - 1] * 1e3:.1f} ms, max {latencies[-1] * 1e3:.1f} ms"
    )


@pytest.mark.parametrize("size", [100_000, 1_000_000])
def test_bench_proof_size_and_verification(size: int) -> None:
    """Proof sizes and client verification time for logs of 10^5 and 10^6 leaves."""
    tree = InMemoryTree()
    for i in range(size):
        tree.append(leaf_hash(i.to_bytes(8, "big")))
    root = tree.root()
    index = size // 3
    path = tree.inclusion_proof(index, size)
    rounds = 2000
    started = time.perf_counter()
    for _ in range(rounds):
        assert kt.verify_inclusion(tree.nodes[(0, index)], index, size, path, root)
    inclusion_us = (time.perf_counter() - started) / rounds * 1e6
    first = size // 2 + 12345
    proof = tree.consistency_proof(first, size)
    started = time.perf_counter()
    for _ in range(rounds):
        assert kt.verify_consistency(first, size, proof, tree.root(first), root)
    consistency_us = (time.perf_counter() - started) / rounds * 1e6
    print(
        f"\n{size} leaves: inclusion proof {len(path)} hashes ({len(path) * 32} B), "
        f"verified in {inclusion_us:.1f} us; consistency proof {len(proof)} hashes "
        f"({len(proof) * 32} B), verified in {consistency_us:.1f} us"
    )


@pytest.mark.parametrize("size", [100_000, 1_000_000])
async def test_bench_server_proofs_from_postgres(postgres: EmbeddedPostgres, size: int) -> None:
    """Server-side proof generation (node reads from Postgres) at 10^5 and 10^6 leaves."""
    schema = f"keys_bench_{size}"
    pool = await create_pool(postgres.url, schema=schema, timeout_seconds=10)
    try:
        await pool.execute("CREATE SCHEMA IF NOT EXISTS keys")  # 0001 comments on it by name
        await apply_migrations(pool, schema, load_migrations("conclave_keys.migrations"))
        tree = InMemoryTree()
        for i in range(size):
            tree.append(leaf_hash(i.to_bytes(8, "big")))
        async with pool.acquire() as conn:
            await conn.copy_records_to_table(
                "kt_leaves",
                records=[(i, tree.nodes[(0, i)]) for i in range(size)],
                columns=["leaf_index", "leaf_hash"],
            )
            await conn.copy_records_to_table(
                "kt_nodes",
                records=[(lvl, idx, h) for (lvl, idx), h in tree.nodes.items() if lvl > 0],
                columns=["level", "node_index", "hash"],
            )
            rounds = 200
            started = time.perf_counter()
            for r in range(rounds):
                index = (r * 7919) % size
                path = await store.hash_ranges(conn, inclusion_ranges(index, size))
            inclusion_ms = (time.perf_counter() - started) / rounds * 1e3
            assert path == tree.inclusion_proof(index, size)
            started = time.perf_counter()
            for r in range(rounds):
                first = 1 + (r * 104729) % (size - 1)
                proof = await store.hash_ranges(conn, consistency_ranges(first, size))
            consistency_ms = (time.perf_counter() - started) / rounds * 1e3
            assert proof == tree.consistency_proof(first, size)
        print(
            f"\n{size} leaves in Postgres: inclusion proof built in {inclusion_ms:.2f} ms, "
            f"consistency proof in {consistency_ms:.2f} ms (one query each)"
        )
    finally:
        await pool.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await pool.close()
