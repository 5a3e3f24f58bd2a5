"""The messaging service in-process on real NATS + PostgreSQL, driven like clients do.

Tokens are minted with the session's test signer (standing in for auth); every account,
device and session id is a fresh UUID, so tests sharing the database never collide.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
from conclave.messaging.v1 import messaging_pb2 as M
from conclave.messaging.v1 import messaging_pb2_grpc
from conclave_kit.logs import configure_logging
from conclave_kit.runtime import ServiceRuntime
from conclave_kit.tokens import TokenSigner
from conclave_messaging.account_data import MessagingAccountData
from conclave_messaging.config import MessagingConfig
from conclave_messaging.server import build_spec
from conclave_messaging.service import MessagingServiceServicer

from tests.support import MovableClock

MAX_MEMBERS = 150


@dataclass(frozen=True)
class Device:
    """One signed-in device of a test account."""

    account_id: str
    device_id: str
    session_id: str
    token: str

    @property
    def md(self) -> tuple[tuple[str, str]]:
        """Call metadata carrying this device's access token."""
        return (("authorization", f"Bearer {self.token}"),)


@dataclass
class Listener:
    """A running Subscribe call collecting what it receives."""

    call: grpc.aio.UnaryStreamCall[M.SubscribeRequest, M.SubscribeResponse]
    items: list[M.SubscribeResponse] = field(default_factory=list)
    error: grpc.aio.AioRpcError | None = None
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Reads the stream until it ends."""
        try:
            async for item in self.call:
                self.items.append(item)
                if item.HasField("catch_up_complete"):
                    self.caught_up.set()
                self.changed.set()
        except grpc.aio.AioRpcError as err:
            self.error = err
        finally:
            self.done.set()
            self.changed.set()

    @property
    def messages(self) -> list[M.SubscribeResponse]:
        """Items carrying a message, in arrival order."""
        return [i for i in self.items if i.HasField("message")]

    def ids(self) -> list[str]:
        """Message ids received, in arrival order."""
        return [i.message.message_id for i in self.messages]

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[M.SubscribeResponse]:
        """Waits until ``count`` messages arrived (or the stream ended); returns them."""
        async with asyncio.timeout(timeout):
            while len(self.messages) < count and not self.done.is_set():
                self.changed.clear()
                await self.changed.wait()
        return self.messages

    async def close(self) -> None:
        """Cancels the call and waits for the reader."""
        self.call.cancel()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


@dataclass
class MessagingHarness:
    """A running messaging service and helpers to act as its clients."""

    runtime: ServiceRuntime
    channel: grpc.aio.Channel
    stub: messaging_pb2_grpc.MessagingServiceAsyncStub
    signer: TokenSigner
    logs: io.StringIO
    clock: MovableClock = field(default_factory=MovableClock)
    servicer: MessagingServiceServicer = field(default_factory=MessagingServiceServicer)
    listeners: list[Listener] = field(default_factory=list)

    @property
    def provider(self) -> MessagingAccountData:
        """The service's account-data provider (purge, export, erasure)."""
        assert self.servicer.account_data is not None
        return self.servicer.account_data

    def device(self, account_id: str | None = None) -> Device:
        """A new device (of a new account unless ``account_id`` is given)."""
        account = account_id or str(uuid.uuid4())
        device, session = str(uuid.uuid4()), str(uuid.uuid4())
        token = self.signer.mint(account_id=account, device_id=device, session_id=session)
        return Device(account, device, session, token)

    async def subscribe(self, device: Device, *, caught_up: bool = True) -> Listener:
        """Opens the device's stream (and by default waits for catch_up_complete)."""
        listener = Listener(self.stub.Subscribe(M.SubscribeRequest(), metadata=device.md))
        listener.task = asyncio.create_task(listener.run())
        self.listeners.append(listener)
        if caught_up:
            async with asyncio.timeout(10):
                await asyncio.wait(
                    [
                        asyncio.create_task(listener.caught_up.wait()),
                        asyncio.create_task(listener.done.wait()),
                    ],
                    return_when=asyncio.FIRST_COMPLETED,
                )
            assert listener.error is None, listener.error
        return listener

    async def group(self, admin: Device, *members: Device) -> M.Group:
        """Creates a group of ``admin`` with ``members``' accounts."""
        reply = await self.stub.CreateGroup(
            M.CreateGroupRequest(
                group_id=str(uuid.uuid4()),
                member_account_ids=[m.account_id for m in members],
            ),
            metadata=admin.md,
        )
        return reply.group

    async def send(self, sender: Device, group_id: str, text: bytes = b"ct") -> str:
        """Sends a group message; returns its id."""
        message_id = str(uuid.uuid4())
        reply = await self.stub.SendGroupMessage(
            M.SendGroupMessageRequest(message_id=message_id, group_id=group_id, ciphertext=text),
            metadata=sender.md,
        )
        assert reply.HasField("accepted")
        return message_id


@pytest.fixture
async def messaging(
    service_env: dict[str, str], signer: TokenSigner
) -> AsyncIterator[MessagingHarness]:
    env = {
        **service_env,
        "CONCLAVE_MESSAGING_GRPC_PORT": "0",
        "CONCLAVE_MESSAGING_METRICS_PORT": "0",
        # These tests exercise fan-out alone (no key directory runs here); device lists are
        # checked against the real directory in tests/integration/client.
        "CONCLAVE_MESSAGING_CHECK_DEVICES": "false",
        "CONCLAVE_MESSAGING_MAX_MEMBERS": str(MAX_MEMBERS),
        # Tests run purges themselves (a scheduled one would race their counts).
        "CONCLAVE_PURGE_INTERVAL_SECONDS": "0",
    }
    logs = io.StringIO()
    configure_logging("messaging", "info", stream=logs)
    config = MessagingConfig.from_env(env)
    clock, servicer = MovableClock(), MessagingServiceServicer()
    # Only expiry follows the moved clock; tokens are checked against real time, so the
    # devices' tokens stay valid when a test moves it by days.
    runtime = ServiceRuntime(build_spec(config, clock=clock, servicer=servicer), config.service)
    await runtime.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}")
    harness = MessagingHarness(
        runtime,
        channel,
        messaging_pb2_grpc.MessagingServiceStub(channel),
        signer,
        logs,
        clock,
        servicer,
    )
    yield harness
    for listener in harness.listeners:
        await listener.close()
    await channel.close(None)
    await runtime.stop()
