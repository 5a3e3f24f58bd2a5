"""Fan-out benchmark: group sends through the real service to real gRPC device streams.

Usage::

    python -m conclave_messaging.bench [--sizes 10,100,1000] [--messages 40]
                                       [--payload 1024] [--fsync-always]

Starts its own nats-server (JetStream file store; ``--fsync-always`` sets
``sync_interval: always``) and PostgreSQL in a temp dir, runs the messaging service as a
separate process, and simulates devices as gRPC clients in this process (one Subscribe
stream per member device; the load generator shares the machine with the stack).

For each group size it prints one JSON object:

* ``p50_ms`` / ``p99_ms``: send started → pushed to *every* member device, one message in
  flight at a time (latency without queueing);
* ``deliveries_per_s``: deliveries per second with up to ``--window`` messages in flight
  (sustained throughput);
* ``baseline_raw_nats``: the same fan-out with raw nats-py, one JetStream ordered consumer
  per recipient on the group subject (fan-out on read, no service, no gRPC);
* ``per_recipient_copy``: the design we do not ship, one stored copy per recipient
  (pipelined ``publish_async`` to per-device subjects, one consumer each).

Payloads are random bytes of ``--payload`` size: to the server an E2EE ciphertext is
indistinguishable from random, and encryption cost is the clients', not the fan-out's.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import nats
from conclave.messaging.v1 import messaging_pb2 as M
from conclave.messaging.v1 import messaging_pb2_grpc
from conclave_kit.tokens import TokenSigner
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.js import api

STREAMS_PER_CHANNEL = 100  # HTTP/2 concurrent-stream budgets are often 100


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


@dataclass
class Tracker:
    """Counts deliveries per message id and times when the last recipient got it."""

    recipients: int
    started: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    finished: dict[str, float] = field(default_factory=dict)
    done: dict[str, asyncio.Event] = field(default_factory=dict)
    deliveries: int = 0

    def start(self, key: str) -> asyncio.Event:
        """Marks ``key`` as sent now; returns the event set when all recipients got it."""
        self.started[key] = time.perf_counter()
        self.counts.setdefault(key, 0)
        event = self.done.setdefault(key, asyncio.Event())
        if self.counts[key] >= self.recipients:
            event.set()
        return event

    def got(self, key: str) -> None:
        """One recipient received ``key``."""
        self.deliveries += 1
        count = self.counts[key] = self.counts.get(key, 0) + 1
        if count == self.recipients:
            self.finished[key] = time.perf_counter()
            self.done.setdefault(key, asyncio.Event()).set()

    def latency_ms(self, keys: list[str]) -> list[float]:
        """Send → last delivery, per message."""
        return [(self.finished[k] - self.started[k]) * 1e3 for k in keys]


# Sends one message identified by ``key`` (32 hex digits).
SendFn = Callable[[str], Awaitable[None]]


async def _measure(
    tracker: Tracker, send: SendFn, messages: int, window: int, limit_s: float
) -> dict[str, float]:
    """Latency phase (one in flight) then throughput phase (``window`` in flight)."""
    for _ in range(3):  # warm-up: first-use costs are not the steady state
        key = uuid.uuid4().hex
        event = tracker.start(key)
        await send(key)
        await asyncio.wait_for(event.wait(), limit_s)
    keys = []
    for _ in range(messages):
        key = uuid.uuid4().hex
        event = tracker.start(key)
        await send(key)
        await asyncio.wait_for(event.wait(), limit_s)
        keys.append(key)
    latencies = tracker.latency_ms(keys)
    slots = asyncio.Semaphore(window)
    before = tracker.deliveries
    began = time.perf_counter()

    async def one() -> None:
        async with slots:
            key = uuid.uuid4().hex
            event = tracker.start(key)
            await send(key)
            await asyncio.wait_for(event.wait(), limit_s)

    await asyncio.gather(*(one() for _ in range(messages)))
    elapsed = time.perf_counter() - began
    return {
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(_percentile(latencies, 0.99), 2),
        "deliveries_per_s": round((tracker.deliveries - before) / elapsed),
    }


# ---------------------------------------------------------------------- the service


async def bench_service(
    address: str, signer: TokenSigner, size: int, messages: int, payload: int, window: int
) -> dict[str, Any]:
    """Group of ``size`` members; every member but the sender has one live device stream."""
    channels = [
        grpc.aio.insecure_channel(address)
        for _ in range(max(1, math.ceil(size / STREAMS_PER_CHANNEL)))
    ]
    stubs = [messaging_pb2_grpc.MessagingServiceStub(c) for c in channels]

    def md() -> tuple[tuple[str, str], ...]:
        token = signer.mint(
            account_id=str(uuid.uuid4()), device_id=str(uuid.uuid4()), session_id=str(uuid.uuid4())
        )
        return (("authorization", f"Bearer {token}"),)

    def account_of(metadata: tuple[tuple[str, str], ...]) -> str:
        claims = metadata[0][1].split(" ", 1)[1].split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
        return str(data["sub"])

    sender = md()
    members = [md() for _ in range(size - 1)]
    accounts = [account_of(m) for m in members]
    group = (
        await stubs[0].CreateGroup(
            M.CreateGroupRequest(group_id=str(uuid.uuid4()), member_account_ids=accounts[:1000]),
            metadata=sender,
        )
    ).group
    for start in range(1000, len(accounts), 1000):  # beyond CreateGroup's 1,000 initial
        await stubs[0].AddMembers(
            M.AddMembersRequest(
                group_id=group.group_id, account_ids=accounts[start : start + 1000]
            ),
            metadata=sender,
        )
    tracker = Tracker(recipients=len(members))
    ready = [asyncio.Event() for _ in members]

    reconnects = [0]
    codes: dict[str, int] = {}

    async def device(index: int, metadata: tuple[tuple[str, str], ...]) -> None:
        # Like a real client: reconnect with backoff, de-duplicate by message id.
        seen: set[str] = set()
        while True:
            call = stubs[index % len(stubs)].Subscribe(M.SubscribeRequest(), metadata=metadata)
            try:
                async for item in call:
                    if item.HasField("message"):
                        key = uuid.UUID(item.message.message_id).hex
                        if key not in seen:
                            seen.add(key)
                            tracker.got(key)
                    elif item.HasField("catch_up_complete"):
                        ready[index].set()
            except grpc.aio.AioRpcError as err:
                reconnects[0] += 1
                codes[err.code().name] = codes.get(err.code().name, 0) + 1
                await asyncio.sleep(0.2)

    readers = [asyncio.create_task(device(i, m)) for i, m in enumerate(members)]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 600)
    at_setup = reconnects[0]  # failed stream opens before the first message
    body = secrets.token_bytes(payload)

    async def send(key: str) -> None:
        message_id = str(uuid.UUID(hex=key))
        await stubs[0].SendGroupMessage(
            M.SendGroupMessageRequest(
                message_id=message_id, group_id=group.group_id, ciphertext=body
            ),
            metadata=sender,
        )

    try:
        result: dict[str, Any] = dict(await _measure(tracker, send, messages, window, limit_s=60))
        result["stream_reconnects"] = reconnects[0] - at_setup
        result["setup_reconnects"] = at_setup
        if codes:
            result["reconnect_codes"] = codes
        return result
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for channel in channels:
            await channel.close(None)


# ---------------------------------------------------------------------- raw nats-py


async def bench_raw(
    url: str, size: int, messages: int, payload: int, window: int, *, copies: bool
) -> dict[str, float]:
    """Raw nats-py: fan-out on read (one stored message) or one stored copy per recipient."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    name = f"BENCH_{uuid.uuid4().hex[:8]}"
    prefix = f"bench.{name.lower()}"
    await js.add_stream(
        api.StreamConfig(name=name, subjects=[f"{prefix}.>"], storage=api.StorageType.FILE)
    )
    recipients = size - 1
    tracker = Tracker(recipients=recipients)
    subs = []

    async def on_msg(msg: Any) -> None:
        tracker.got(msg.headers["k"])

    for i in range(recipients):
        subject = f"{prefix}.dev.{i}" if copies else f"{prefix}.group"
        subs.append(
            await js.subscribe(
                subject,
                cb=on_msg,
                ordered_consumer=True,
                config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.NEW),
            )
        )
    body = secrets.token_bytes(payload)

    async def send(key: str) -> None:
        if copies:
            futures = [
                await js.publish_async(f"{prefix}.dev.{i}", body, headers={"k": key})
                for i in range(recipients)
            ]
            await asyncio.gather(*futures)
        else:
            await js.publish(f"{prefix}.group", body, headers={"k": key})

    try:
        return await _measure(tracker, send, messages, window, limit_s=60)
    finally:
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_stream(name)
        await nc.close()


# ---------------------------------------------------------------------- the stack


@dataclass
class Stack:
    """nats-server, PostgreSQL and the messaging service for one benchmark run."""

    base: Path
    fsync_always: bool
    service_log: str | None = None
    signer: TokenSigner = field(default_factory=lambda: TokenSigner.generate("bench", 3600))
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    postgres: Any = None
    nats_url: str = ""
    address: str = ""

    def start_nats(self) -> None:
        """Starts nats-server with a file store (fsync on every write if asked)."""
        from conclave_devstack.infra import venv_binary  # noqa: PLC0415 - dev tool only

        ports = self.base / "nats-ports"
        ports.mkdir()
        conf = self.base / "nats.conf"
        sync = "\n  sync_interval: always" if self.fsync_always else ""
        conf.write_text(f'jetstream {{\n  store_dir: "{self.base / "js"}"{sync}\n}}\n')
        log = (self.base / "nats.log").open("ab")
        self.processes.append(
            subprocess.Popen(
                [
                    venv_binary("nats-server"),
                    "-c",
                    str(conf),
                    "-a",
                    "127.0.0.1",
                    "-p",
                    "-1",
                    "--ports_file_dir",
                    str(ports),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        for _ in range(200):
            for path in ports.glob("*.ports"):
                with contextlib.suppress(ValueError, KeyError, IndexError):
                    self.nats_url = json.loads(path.read_text())["nats"][0]
                    return
            time.sleep(0.05)
        raise RuntimeError("nats-server did not start")

    def start_postgres(self) -> None:
        """Starts an embedded PostgreSQL in its own temp dir."""
        from conclave_devstack.infra import EmbeddedPostgres  # noqa: PLC0415 - dev tool only

        pg_dir = Path(tempfile.mkdtemp(prefix="conclave-bench-pg-"))
        pg_dir.chmod(0o755)  # the server may run as an unprivileged user when we are root
        self.postgres = EmbeddedPostgres(pg_dir / "data")
        self.postgres.start()

    async def start_service(self) -> None:
        """Runs ``python -m conclave_messaging`` and waits until it is SERVING."""
        ports_file = self.base / "messaging.ports"
        public = base64.urlsafe_b64encode(self.signer.public_key).decode().rstrip("=")
        env = {
            **os.environ,
            "CONCLAVE_NATS_URL": self.nats_url,
            "CONCLAVE_DATABASE_URL": self.postgres.url,
            "CONCLAVE_TOKEN_VERIFY_KEYS": f"{self.signer.kid}:{public}",
            "CONCLAVE_MESSAGING_GRPC_PORT": "0",
            "CONCLAVE_MESSAGING_METRICS_PORT": "0",
            "CONCLAVE_MESSAGING_PORTS_FILE": str(ports_file),
            "CONCLAVE_LOG_LEVEL": "info" if self.service_log else "warning",
        }
        log = Path(self.service_log or self.base / "messaging.log").open("ab")  # noqa: ASYNC230, SIM115 - handed to the child
        self.processes.append(
            subprocess.Popen(  # noqa: ASYNC220 - once, before anything is measured
                [sys.executable, "-m", "conclave_messaging"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        for _ in range(400):
            if ports_file.exists():
                self.address = f"127.0.0.1:{json.loads(ports_file.read_text())['grpc']}"
                break
            await asyncio.sleep(0.05)
        async with grpc.aio.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(400):
                reply = await health.Check(health_pb2.HealthCheckRequest())
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                await asyncio.sleep(0.05)
        raise RuntimeError("messaging service did not become SERVING")

    def stop(self) -> None:
        """Stops the service, NATS and PostgreSQL; removes their data."""
        for process in reversed(self.processes):
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        if self.postgres is not None:
            self.postgres.stop()
            shutil.rmtree(self.postgres.data_dir.parent, ignore_errors=True)


async def run(args: argparse.Namespace) -> None:
    """Runs every group size and prints one JSON object per size."""
    with tempfile.TemporaryDirectory(prefix="conclave-bench-") as tmp:
        stack = Stack(Path(tmp), args.fsync_always, args.service_log)
        try:
            stack.start_nats()
            stack.start_postgres()
            await stack.start_service()
            for size in args.sizes:
                result: dict[str, Any] = {
                    "group_size": size,
                    "messages": args.messages,
                    "payload_bytes": args.payload,
                    "fsync_always": args.fsync_always,
                }
                result.update(
                    await bench_service(
                        stack.address,
                        stack.signer,
                        size,
                        args.messages,
                        args.payload,
                        args.window,
                    )
                )
                designs = {"baseline_raw_nats": False}
                if not args.skip_copies:
                    designs["per_recipient_copy"] = True
                for label, copies in designs.items():
                    try:
                        result[label] = await bench_raw(
                            stack.nats_url,
                            size,
                            args.messages,
                            args.payload,
                            args.window,
                            copies=copies,
                        )
                    except Exception as err:  # e.g. nats-server's consumer limit at 10,000
                        result[label] = {"error": f"{type(err).__name__}: {err}"}
                print(json.dumps(result), flush=True)
        finally:
            stack.stop()


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[10, 100, 1000]
    )
    parser.add_argument("--messages", type=int, default=40)
    parser.add_argument("--payload", type=int, default=1024)
    parser.add_argument("--window", type=int, default=8, help="messages in flight (throughput)")
    parser.add_argument("--fsync-always", action="store_true")
    parser.add_argument("--skip-copies", action="store_true")
    parser.add_argument("--service-log", help="keep the service's log (info level) here")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
