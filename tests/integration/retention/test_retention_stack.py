"""Retention in the whole stack as ``conclave-run`` starts it (ports 0 everywhere): the
launcher tells retention where its four peers listen, so RunPurge reaches all five real
servers, an export has five real sections, and an erasure completes on every real server
and leaves no CONCLAVE_EVENTS message naming the account."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import nats
import pyotp
import pytest
from conclave.auth.v1 import auth_pb2 as A
from conclave.auth.v1 import auth_pb2_grpc
from conclave.common.v1 import types_pb2
from conclave.retention.v1 import retention_pb2 as R
from conclave.retention.v1 import retention_pb2_grpc
from conclave_devstack.harness import RunningStack, private_data_dir, start_stack
from nats.js import api

pytestmark = pytest.mark.integration
PASSWORD = "correct horse battery staple 42"
Metadata = tuple[tuple[str, str], ...]


@pytest.fixture(scope="module")
def stack() -> Iterator[RunningStack]:
    """A stack started with the default launcher settings (free ports)."""
    base = private_data_dir()
    running = start_stack(base / "data")
    yield running
    running.stop()
    shutil.rmtree(base, ignore_errors=True)


def _stubs(
    stack: RunningStack,
) -> tuple[auth_pb2_grpc.AuthServiceStub, retention_pb2_grpc.RetentionServiceStub]:
    auth = auth_pb2_grpc.AuthServiceStub(grpc.insecure_channel(stack.grpc["auth"]))
    retention = retention_pb2_grpc.RetentionServiceStub(
        grpc.insecure_channel(stack.grpc["retention"])
    )
    return auth, retention


def _user(auth: auth_pb2_grpc.AuthServiceStub) -> tuple[str, str, Metadata]:
    """Registers and logs in (with the previous step's code, so the current one is left
    for DeleteAccount); returns (username, TOTP secret, metadata)."""
    reply = auth.Register(
        A.RegisterRequest(username=f"ret-{uuid.uuid4().hex[:8]}", password=PASSWORD), timeout=30
    )
    previous = pyotp.TOTP(reply.totp_secret).at(datetime.now(UTC) - timedelta(seconds=30))
    login = auth.Login(
        A.LoginRequest(
            username=reply.username,
            password=PASSWORD,
            totp_code=previous,
            device=A.DeviceInfo(name="laptop", platform=A.PLATFORM_CLI),
        ),
        timeout=30,
    )
    metadata = (("authorization", f"Bearer {login.tokens.access_token}"),)
    return reply.username, reply.totp_secret, metadata


def test_run_purge_reaches_all_five_real_servers(stack: RunningStack) -> None:
    """The launcher's peer settings work: every server completes its purge."""
    token = stack.signer().mint(
        account_id=str(uuid.uuid4()),
        device_id=str(uuid.uuid4()),
        session_id=str(uuid.uuid4()),
        roles=("operator",),
    )
    _, retention = _stubs(stack)
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        reply = retention.RunPurge(
            R.RunPurgeRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=30
        )
        timings.append(time.perf_counter() - started)
    print(f"RunPurge on the stack: {', '.join(f'{t * 1000:.0f}' for t in timings)} ms")
    assert [s.service for s in reply.services] == [1, 2, 3, 4, 5]
    assert all(s.completed for s in reply.services), reply


def test_export_and_erasure_across_the_real_servers(stack: RunningStack) -> None:
    """Export: five real sections. Erasure: every real server reports, the status turns
    COMPLETE, and no CONCLAVE_EVENTS message names the account any more."""
    auth, retention = _stubs(stack)
    username, secret, metadata = _user(auth)
    account_id = auth.GetAccount(A.GetAccountRequest(), metadata=metadata).account_id
    retention.SetConversationPolicy(
        R.SetConversationPolicyRequest(
            conversation=types_pb2.ConversationRef(peer_account_id=str(uuid.uuid4())),
            policy=R.RetentionPolicy(),
        ),
        metadata=metadata,
    )
    started = time.perf_counter()
    chunks = retention.ExportMyData(R.ExportMyDataRequest(), metadata=metadata, timeout=60)
    document = json.loads(b"".join(c.json_chunk for c in chunks))
    print(f"ExportMyData on the stack: {(time.perf_counter() - started) * 1000:.0f} ms")
    assert document["account_id"] == account_id
    assert set(document["services"]) == {"auth", "keys", "messaging", "media", "retention"}
    assert document["services"]["auth"]["account"]["username"] == username

    started = time.perf_counter()
    reply = retention.DeleteAccount(
        R.DeleteAccountRequest(
            password=PASSWORD, totp_code=pyotp.TOTP(secret).now(), confirm_username=username
        ),
        metadata=metadata,
        timeout=30,
    )
    deadline = time.monotonic() + 60
    while True:
        status = retention.GetErasureStatus(R.GetErasureStatusRequest(erasure_id=reply.erasure_id))
        if status.state == R.ERASURE_STATE_COMPLETE or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status.state == R.ERASURE_STATE_COMPLETE, status
    print(f"DeleteAccount to COMPLETE on the stack: {time.perf_counter() - started:.2f} s")
    assert [s.state for s in status.services] == [R.ERASURE_STATE_COMPLETE] * 5
    assert _events_naming(stack, account_id) == []


def _events_naming(stack: RunningStack, account_id: str) -> list[str]:
    async def scan() -> list[str]:
        url = json.loads((stack.data_dir / "endpoints.json").read_text())["nats"]
        nc = await nats.connect(url)
        found: list[str] = []
        try:
            js = nc.jetstream()
            sub = await js.pull_subscribe(
                "conclave.events.>",
                stream="CONCLAVE_EVENTS",
                config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, mem_storage=True),
            )
            while True:
                try:
                    batch = await sub.fetch(1000, timeout=1)
                except nats.errors.TimeoutError:
                    batch = []
                found += [m.subject for m in batch if account_id.encode() in m.data]
                if len(batch) < 1000 and (await sub.consumer_info()).num_pending == 0:
                    break
        finally:
            await nc.close()
        return found

    return asyncio.run(scan())
