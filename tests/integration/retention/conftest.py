"""The retention service in-process (kit runtime, port 0) on the session's real NATS +
Postgres. Tokens come from the session's test signer (standing in for auth); group
membership comes from events the tests publish the way messaging does."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc
import pytest
from conclave.events.v1 import events_pb2
from conclave.messaging.v1 import messaging_pb2 as M
from conclave.retention.v1 import retention_pb2_grpc
from conclave_kit.runtime import ServiceRuntime
from conclave_kit.tokens import TokenSigner
from conclave_retention.config import RetentionConfig
from conclave_retention.server import build_spec
from conclave_retention.service import RetentionServiceServicer
from google.protobuf.timestamp_pb2 import Timestamp

from tests.support import start_service

GROUP_MEMBERSHIP = "conclave.events.group.membership"


@dataclass
class User:
    """An account with one device and session."""

    account_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    device_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    session_id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class RetentionHarness:
    """A running retention service and ways to call it as a user."""

    runtime: ServiceRuntime
    signer: TokenSigner
    channel: grpc.aio.Channel
    servicer: RetentionServiceServicer

    @property
    def stub(self) -> retention_pb2_grpc.RetentionServiceAsyncStub:
        """Stub on a shared channel."""
        return retention_pb2_grpc.RetentionServiceStub(self.channel)

    def auth(self, user: User) -> tuple[tuple[str, str]]:
        """Call metadata with a fresh access token for ``user``."""
        token = self.signer.mint(
            account_id=user.account_id, device_id=user.device_id, session_id=user.session_id
        )
        return (("authorization", f"Bearer {token}"),)

    async def membership(
        self,
        group_id: str,
        version: int,
        actor: User,
        *,
        added: Iterable[User] = (),
        removed: Iterable[User] = (),
        promoted: Iterable[User] = (),
        demoted: Iterable[User] = (),
        deleted: bool = False,
    ) -> None:
        """Publishes a membership event as messaging does and waits until it is applied."""
        now = Timestamp()
        now.FromDatetime(datetime.now(UTC))
        event_id = str(uuid.uuid4())
        event = events_pb2.GroupMembership(
            event_id=event_id,
            occur_time=now,
            group_deleted=deleted,
            change=M.GroupMembershipChange(
                group_id=group_id,
                membership_version=version,
                actor_account_id=actor.account_id,
                added_account_ids=[u.account_id for u in added],
                removed_account_ids=[u.account_id for u in removed],
                promoted_account_ids=[u.account_id for u in promoted],
                demoted_account_ids=[u.account_id for u in demoted],
                change_time=now,
            ),
        )
        ack = await self.runtime.resources.js.publish(
            GROUP_MEMBERSHIP, event.SerializeToString(), headers={"Nats-Msg-Id": event_id}
        )
        await self.wait_applied(ack.seq)

    async def wait_applied(self, stream_seq: int) -> None:
        """Waits until the durable consumer acknowledged everything up to ``stream_seq``."""
        js = self.runtime.resources.js
        # Generous: the first retention test of a session also catches up with every
        # membership event earlier suites (messaging, client) published.
        for _ in range(1500):
            info = await js.consumer_info("CONCLAVE_EVENTS", "retention-group-membership")
            if info.ack_floor.stream_seq >= stream_seq:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("membership event not applied within 30 s")


@pytest.fixture
async def retention(
    service_env: dict[str, str], signer: TokenSigner
) -> AsyncIterator[RetentionHarness]:
    """A retention service with the default deployment policy."""
    servicer = RetentionServiceServicer()
    runtime = await start_service(build_spec(RetentionConfig(), servicer=servicer), service_env)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}")
    yield RetentionHarness(runtime, signer, channel, servicer)
    await channel.close(None)
    await runtime.stop()
