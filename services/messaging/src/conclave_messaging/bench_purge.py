"""Purge benchmark: deleting a backlog of expired messages from JetStream and the index.

Usage::

    python -m conclave_messaging.bench_purge [--backlog 100000] [--payload 1024]
                                             [--concurrency 1,16,64,256] [--fsync-always]
                                             [--sends 500]

Starts its own nats-server (JetStream file store) and PostgreSQL in a temp dir and runs
the messaging service in this process (its account-data provider is what the kit's
scheduled purge and ``PurgeExpired`` call). Prints JSON lines:

* ``send_index_cost``: the cost the ``stored_messages`` index adds to a send, measured
  through the service's gRPC send path with the index write on and off (median and p99
  latency of ``--sends`` sequential sends, 1:1 to 2 devices and to a group).
* ``purge``: for each concurrency (delete requests in flight) and delete mode
  (``no_erase``: drop from the stream index; ``erase``: overwrite the bytes first), a
  backlog of ``--backlog`` (erase mode: ``--erase-backlog``) expired items (half 1:1
  copies over 1,000 mailboxes, half group messages over 100 logs, ``--payload`` random
  bytes each) is stored and indexed,
  the clock moved past their expiry, and one purge run timed: ``items_per_s``, the purge
  lag before and after, and ``drain_s`` (how long the backlog adds to the purge lag).
* ``purge_raw_nats_baseline``: the same backlog deleted by plain nats-py in the same run
  (``msg_delete``: by sequence, same requests in flight, no PostgreSQL; ``purge_subject``:
  one STREAM.PURGE per subject).
* ``purge_two_replicas``: the same backlog purged by two providers at once (two
  connections, ``SKIP LOCKED``): throughput and that the counts add up to the backlog.

The machine is shared with the load generator (this process): numbers are for the whole
stack on one host.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from conclave.common.v1 import types_pb2
from conclave.messaging.v1 import messaging_pb2 as M
from conclave.messaging.v1 import messaging_pb2_grpc
from conclave_kit.logs import configure_logging
from conclave_kit.runtime import ServiceRuntime

from conclave_messaging import stored, streams
from conclave_messaging.account_data import MessagingAccountData
from conclave_messaging.bench import Stack, _percentile
from conclave_messaging.config import MessagingConfig
from conclave_messaging.server import build_spec
from conclave_messaging.service import MessagingServiceServicer

FILL_WINDOW = 2000  # publishes in flight while filling the backlog
INDEX_CHUNK = 5000  # index rows per INSERT while filling


class OffsetClock:
    """Real time plus an offset the benchmark moves (expiry without waiting)."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        """The moved time."""
        return datetime.now(UTC) + self.offset


async def fill(
    runtime: ServiceRuntime, backlog: int, payload: int, expires: datetime
) -> list[stored.Item]:
    """Stores and indexes ``backlog`` items expiring at ``expires`` (spread over 60 s)."""
    js = runtime.resources.js
    devices = [str(uuid.uuid4()) for _ in range(1000)]
    groups = [str(uuid.uuid4()) for _ in range(100)]
    sender = str(uuid.uuid4())
    items: list[stored.Item] = []
    pending: list[tuple[stored.Item, Any]] = []

    async def flush() -> None:
        acks = await asyncio.gather(*(fut for _, fut in pending))
        items.extend(
            stored.Item(**{**item.__dict__, "seq": ack.seq})
            for (item, _), ack in zip(pending, acks, strict=True)
        )
        pending.clear()

    for i in range(backlog):
        direct = i % 2 == 0
        subject = (
            streams.device_subject(devices[i % len(devices)])
            if direct
            else streams.group_subject(groups[i % len(groups)])
        )
        when = expires - timedelta(seconds=random.uniform(0, 60))  # noqa: S311 - spread, not a secret
        delivery = M.MessageDelivery(message_id=str(uuid.uuid4()), ciphertext=os.urandom(payload))
        delivery.expire_time.FromDatetime(when)
        data = M.SubscribeResponse(message=delivery).SerializeToString()
        item = stored.Item(
            stream=streams.DIRECT_STREAM if direct else streams.GROUPS_STREAM,
            seq=0,
            subject=subject,
            sender_account_id=sender,
            recipient_account_id=str(uuid.uuid4()) if direct else None,
            named_account_ids=[sender],
            message_id=delivery.message_id,
            size_bytes=len(data),
            expires_at=when,
        )
        pending.append((item, await js.publish_async(subject, data)))
        if len(pending) >= FILL_WINDOW:
            await flush()
    await flush()
    async with runtime.resources.pool.acquire() as conn:
        for start in range(0, len(items), INDEX_CHUNK):
            await stored.insert(conn, items[start : start + INDEX_CHUNK])
    return items


async def bench_purge(
    runtime: ServiceRuntime,
    servicer: MessagingServiceServicer,
    clock: OffsetClock,
    args: argparse.Namespace,
    concurrency: int,
    secure_erase: bool,
    replicas: int = 1,
) -> dict[str, Any]:
    """One purge run over a fresh backlog."""
    assert servicer.manager is not None
    backlog = args.erase_backlog if secure_erase else args.backlog
    clock.offset = timedelta()
    expires = datetime.now(UTC) + timedelta(seconds=120)
    started = time.perf_counter()
    await fill(runtime, backlog, args.payload, expires)
    fill_s = time.perf_counter() - started
    clock.offset = timedelta(seconds=240)  # every item is now 60-120 s overdue
    providers = [
        MessagingAccountData(
            servicer.manager,
            runtime.resources.pool,
            runtime.resources.nats,
            concurrency=concurrency,
            secure_erase=secure_erase,
            clock=clock,
        )
        for _ in range(replicas)
    ]
    lag_before = await providers[0].purge_lag()
    kinds = frozenset(providers[0].kinds)
    started = time.perf_counter()
    results = await asyncio.gather(*(p.purge(kinds) for p in providers))
    seconds = time.perf_counter() - started
    lag_after = await providers[0].purge_lag()
    purged = sum(sum(r.values()) for r in results)
    return {
        "backlog": backlog,
        "payload_bytes": args.payload,
        "fsync_always": args.fsync_always,
        "concurrency": concurrency,
        "mode": "erase" if secure_erase else "no_erase",
        "replicas": replicas,
        "purged": purged,
        "per_replica": [sum(r.values()) for r in results],
        "seconds": round(seconds, 2),
        "items_per_s": round(purged / seconds),
        "drain_s": round(seconds, 2),
        "fill_s": round(fill_s, 2),
        "lag_before_s": {str(k): round(v, 1) for k, v in lag_before.items()},
        "lag_after_s": {str(k): round(v, 1) for k, v in lag_after.items()},
    }


async def bench_raw_baseline(
    runtime: ServiceRuntime, args: argparse.Namespace, concurrency: int
) -> list[dict[str, Any]]:
    """The same backlog deleted by plain nats-py, with no index and no service code.

    Two baselines in the same run: ``STREAM.MSG.DELETE`` by sequence with the same requests
    in flight (what the service does, minus PostgreSQL), and one ``STREAM.PURGE`` per
    subject (1,100 subjects: possible only when everything on a subject expires together,
    which per-message timers do not guarantee).
    """
    nats = runtime.resources.nats
    pool = runtime.resources.pool
    results = []
    for method in ("msg_delete", "purge_subject"):
        items = await fill(
            runtime, args.backlog, args.payload, datetime.now(UTC) + timedelta(seconds=120)
        )
        await pool.execute("TRUNCATE stored_messages")  # baseline: JetStream alone
        gate = asyncio.Semaphore(concurrency)

        async def request(
            subject: str, body: dict[str, Any], gate: asyncio.Semaphore = gate
        ) -> None:
            async with gate:
                await nats.request(subject, json.dumps(body).encode(), timeout=30)

        started = time.perf_counter()
        if method == "msg_delete":
            await asyncio.gather(
                *(
                    request(
                        f"$JS.API.STREAM.MSG.DELETE.{item.stream}",
                        {"seq": item.seq, "no_erase": True},
                    )
                    for item in items
                )
            )
            requests = len(items)
        else:
            subjects = sorted({(item.stream, item.subject) for item in items})
            await asyncio.gather(
                *(request(f"$JS.API.STREAM.PURGE.{st}", {"filter": sub}) for st, sub in subjects)
            )
            requests = len(subjects)
        seconds = time.perf_counter() - started
        results.append(
            {
                "bench": "purge_raw_nats_baseline",
                "method": method,
                "backlog": len(items),
                "payload_bytes": args.payload,
                "fsync_always": args.fsync_always,
                "concurrency": concurrency,
                "requests": requests,
                "seconds": round(seconds, 2),
                "items_per_s": round(len(items) / seconds),
            }
        )
    return results


async def bench_send_cost(
    runtime: ServiceRuntime, servicer: MessagingServiceServicer, stack: Stack, sends: int
) -> list[dict[str, Any]]:
    """Send latency with and without the index write (gRPC path, sequential)."""
    manager = servicer.manager
    assert manager is not None
    signer = stack.signer
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}")
    stub = messaging_pb2_grpc.MessagingServiceStub(channel)

    def device(account: str | None = None) -> tuple[str, str, tuple[tuple[str, str]]]:
        a, d = account or str(uuid.uuid4()), str(uuid.uuid4())
        token = signer.mint(account_id=a, device_id=d, session_id=str(uuid.uuid4()))
        return a, d, (("authorization", f"Bearer {token}"),)

    alice, bob = device(), device()
    bob2 = device(bob[0])
    group = (
        await stub.CreateGroup(
            M.CreateGroupRequest(group_id=str(uuid.uuid4()), member_account_ids=[bob[0]]),
            metadata=alice[2],
        )
    ).group
    payload = os.urandom(1024)

    async def direct() -> None:
        await stub.SendDirectMessage(
            M.SendDirectMessageRequest(
                message_id=str(uuid.uuid4()),
                recipient_account_id=bob[0],
                ciphertexts=[
                    M.DeviceCiphertext(
                        device=types_pb2.DeviceAddress(account_id=a, device_id=d),
                        kind=M.CIPHERTEXT_KIND_RATCHET,
                        ciphertext=payload,
                    )
                    for a, d, _ in (bob, bob2)
                ],
            ),
            metadata=alice[2],
        )

    async def to_group() -> None:
        await stub.SendGroupMessage(
            M.SendGroupMessageRequest(
                message_id=str(uuid.uuid4()), group_id=group.group_id, ciphertext=payload
            ),
            metadata=alice[2],
        )

    async def timed(send: Any) -> list[float]:
        for _ in range(20):  # warm-up
            await send()
        out = []
        for _ in range(sends):
            t0 = time.perf_counter()
            await send()
            out.append((time.perf_counter() - t0) * 1e3)
        return out

    original = manager._index

    async def no_index(items: list[stored.Item]) -> None:
        return None

    results = []
    for kind, send in (("direct_2_devices", direct), ("group", to_group)):
        with_index = await timed(send)
        manager._index = no_index  # type: ignore[method-assign]
        try:
            without = await timed(send)
        finally:
            manager._index = original  # type: ignore[method-assign]
        results.append(
            {
                "bench": "send_index_cost",
                "kind": kind,
                "sends": sends,
                "p50_ms_with_index": round(statistics.median(with_index), 3),
                "p50_ms_without_index": round(statistics.median(without), 3),
                "p99_ms_with_index": round(_percentile(with_index, 0.99), 3),
                "p99_ms_without_index": round(_percentile(without, 0.99), 3),
            }
        )
    await channel.close(None)
    return results


async def run(args: argparse.Namespace) -> None:
    """Starts the stack, runs each measurement, prints JSON lines."""
    configure_logging("messaging", "warning")
    with tempfile.TemporaryDirectory(prefix="conclave-bench-purge-") as tmp:
        stack = Stack(Path(tmp), args.fsync_always, None)
        try:
            stack.start_nats()
            stack.start_postgres()
            public = base64.urlsafe_b64encode(stack.signer.public_key).decode().rstrip("=")
            env = {
                "CONCLAVE_NATS_URL": stack.nats_url,
                "CONCLAVE_DATABASE_URL": stack.postgres.url,
                "CONCLAVE_TOKEN_VERIFY_KEYS": f"{stack.signer.kid}:{public}",
                "CONCLAVE_MESSAGING_GRPC_PORT": "0",
                "CONCLAVE_MESSAGING_METRICS_PORT": "0",
                "CONCLAVE_MESSAGING_CHECK_DEVICES": "false",
                "CONCLAVE_PURGE_INTERVAL_SECONDS": "0",
            }
            config = MessagingConfig.from_env(env)
            clock, servicer = OffsetClock(), MessagingServiceServicer()
            runtime = ServiceRuntime(
                build_spec(config, clock=clock, servicer=servicer), config.service
            )
            await runtime.start()
            try:
                if args.sends:
                    for line in await bench_send_cost(runtime, servicer, stack, args.sends):
                        print(json.dumps(line), flush=True)
                for mode in args.modes:
                    for concurrency in args.concurrency:
                        result = await bench_purge(
                            runtime, servicer, clock, args, concurrency, mode == "erase"
                        )
                        print(json.dumps({"bench": "purge", **result}), flush=True)
                for line in await bench_raw_baseline(runtime, args, args.concurrency[-1]):
                    print(json.dumps(line), flush=True)
                if args.replicas:
                    result = await bench_purge(
                        runtime, servicer, clock, args, args.concurrency[-1], False, replicas=2
                    )
                    print(json.dumps({"bench": "purge_two_replicas", **result}), flush=True)
            finally:
                await runtime.stop()
        finally:
            stack.stop()


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument(
        "--erase-backlog",
        type=int,
        default=10_000,
        help="backlog of the erase-mode runs (erasing is ~50x slower)",
    )
    parser.add_argument("--payload", type=int, default=1024)
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64, 256]
    )
    parser.add_argument("--modes", type=lambda s: s.split(","), default=["no_erase", "erase"])
    parser.add_argument("--sends", type=int, default=500, help="sends per send-cost phase")
    parser.add_argument("--fsync-always", action="store_true")
    parser.add_argument(
        "--no-replicas", dest="replicas", action="store_false", help="skip the 2-replica run"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
