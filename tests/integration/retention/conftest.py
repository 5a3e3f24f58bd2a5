"""The retention service in-process (kit runtime, port 0) on the session's real NATS +
Postgres. Tokens come from the session's test signer (standing in for auth); group
membership comes from events the tests publish the way messaging does."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from conclave.auth.v1 import auth_pb2 as A
from conclave.common.v1 import account_data_pb2 as D
from conclave.events.v1 import events_pb2
from conclave.messaging.v1 import messaging_pb2 as M
from conclave.retention.v1 import retention_pb2_grpc
from conclave_kit.account_data import AccountDataServicer
from conclave_kit.runtime import Resources, ServiceRuntime, ServiceSpec
from conclave_kit.tokens import Claims, TokenSigner
from conclave_retention.config import RetentionConfig
from conclave_retention.server import build_spec
from conclave_retention.service import RetentionServiceServicer
from google.protobuf.timestamp_pb2 import Timestamp

from tests.integration.auth.conftest import AuthHarness, auth, bearer, unique
from tests.support import MovableClock, start_service

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


# -- the five servers: real auth, retention, and stand-ins for keys, messaging, media -------


@dataclass
class StandInData:
    """A server's account data standing in for keys, messaging or media.

    It runs on the real kit (AccountDataService, erasure consumer publishing
    erasure.completed), so retention meets exactly the protocol the real servers speak.
    """

    service: str
    kinds: tuple[int, ...]
    delay: float = 0.0
    erased: list[str] = field(default_factory=list)
    purges: list[frozenset[int]] = field(default_factory=list)

    async def export(self, claims: Claims) -> dict[str, Any]:
        """A small section naming the server and the account."""
        await asyncio.sleep(self.delay)
        return {"server": self.service, "account_id": claims.account_id, "note": "stand-in"}

    async def purge(self, kinds: frozenset[int]) -> dict[int, int]:
        """One item per kind; slow when ``delay`` is set."""
        await asyncio.sleep(self.delay)
        self.purges.append(kinds)
        return {kind: 1 for kind in kinds}

    async def purge_lag(self) -> dict[int, float]:
        """Nothing overdue."""
        return {kind: 0.0 for kind in self.kinds}

    async def erase(self, account_id: str) -> int:
        """Records the erasure; one item."""
        self.erased.append(account_id)
        return 1


STAND_IN_KINDS = {
    "keys": (D.PURGE_KIND_PREKEYS, D.PURGE_KIND_BOOKKEEPING),
    "messaging": (D.PURGE_KIND_DIRECT_MESSAGES, D.PURGE_KIND_GROUP_MESSAGES),
    "media": (D.PURGE_KIND_MEDIA_BLOBS, D.PURGE_KIND_INCOMPLETE_UPLOADS),
}


def stand_in_spec(data: StandInData) -> ServiceSpec:
    """A kit service whose only service is AccountDataService (schema ``standin_<name>``)."""
    servicer = AccountDataServicer()

    def connect(resources: Resources) -> None:
        servicer.provider = data

    return ServiceSpec(
        name=f"standin_{data.service}",
        grpc_services=(),
        migrations_package="tests.integration.kit.fixture_migrations_a",
        register=lambda server, resources: None,
        default_grpc_port=0,
        default_metrics_port=0,
        extra_setup=(connect,),
        account_data=servicer,
    )


def verify_keys(*keys: tuple[str, bytes]) -> str:
    """``CONCLAVE_TOKEN_VERIFY_KEYS`` trusting each (key id, raw public key)."""
    return ",".join(
        f"{kid}:" + base64.urlsafe_b64encode(raw).decode().rstrip("=") for kid, raw in keys
    )


@dataclass
class Deployment:
    """Real auth and retention, stand-ins for the other three, on the session's infra."""

    auth: AuthHarness
    retention: RetentionHarness
    stand_ins: dict[str, StandInData]
    env: dict[str, str]
    peers: dict[str, str]

    def operator(self, session_id: str | None = None) -> tuple[tuple[str, str]]:
        """Metadata with an operator token signed with auth's key (every server trusts it)."""
        signer = TokenSigner(self.auth.config.signing_key_id, self.auth.config.signing_key)
        token = signer.mint(
            account_id=str(uuid.uuid4()),
            device_id=str(uuid.uuid4()),
            session_id=session_id or str(uuid.uuid4()),
            roles=("operator",),
            now=int(self.auth.clock.unix()),
        )
        return (("authorization", f"Bearer {token}"),)

    async def user(self, prefix: str = "user") -> tuple[str, str, A.SessionTokens]:
        """A registered, logged-in user: (username, account id, tokens)."""
        name = unique(prefix)
        reply = await self.auth.register(name)
        tokens = (await self.auth.login(reply.username)).tokens
        return reply.username, reply.account_id, tokens

    async def start_retention(
        self, peers: dict[str, str] | None = None, **config: Any
    ) -> RetentionHarness:
        """Another retention instance (e.g. with a peer that is down)."""
        return await _start_retention(
            self.env, self.retention.signer, self.auth.clock, peers or self.peers, **config
        )


async def _start_retention(
    env: dict[str, str],
    signer: TokenSigner,
    clock: MovableClock,
    peers: dict[str, str],
    **config: Any,
) -> RetentionHarness:
    settings = {"erasure_settle_seconds": 0.5, **config}
    servicer = RetentionServiceServicer()
    spec = build_spec(RetentionConfig(peers=peers, **settings), clock=clock, servicer=servicer)
    runtime = await start_service(spec, env, clock=clock.unix)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}")
    return RetentionHarness(runtime, signer, channel, servicer)


async def _stop_retention(harness: RetentionHarness) -> None:
    await harness.channel.close(None)
    await harness.runtime.stop()


@pytest.fixture
async def deployment(
    auth: AuthHarness, service_env: dict[str, str], signer: TokenSigner
) -> AsyncIterator[Deployment]:
    """Auth (real), retention (real) and stand-ins for keys, messaging and media."""
    env = {
        **service_env,
        "CONCLAVE_TOKEN_VERIFY_KEYS": verify_keys(
            *auth.config.service.token_verify_keys.items(), (signer.kid, signer.public_key)
        ),
    }
    stand_ins = {name: StandInData(name, kinds) for name, kinds in STAND_IN_KINDS.items()}
    runtimes = [
        await start_service(stand_in_spec(data), env, clock=auth.clock.unix)
        for data in stand_ins.values()
    ]
    peers = {"auth": f"127.0.0.1:{auth.runtime.grpc_port}"} | {
        name: f"127.0.0.1:{runtime.grpc_port}"
        for name, runtime in zip(stand_ins, runtimes, strict=True)
    }
    retention = await _start_retention(env, signer, auth.clock, peers)
    await retention.runtime.resources.pool.execute("TRUNCATE rate_limit_buckets")
    yield Deployment(auth, retention, stand_ins, env, peers)
    await _stop_retention(retention)
    for runtime in runtimes:
        await runtime.stop()


__all__ = [
    "AuthHarness",
    "Deployment",
    "RetentionHarness",
    "StandInData",
    "User",
    "auth",
    "bearer",
    "deployment",
    "retention",
]
