"""The auth service in-process on real NATS + PostgreSQL, with a clock tests can move."""

from __future__ import annotations

import base64
import io
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import grpc
import pyotp
import pytest
from conclave.auth.v1 import auth_pb2 as A
from conclave.auth.v1 import auth_pb2_grpc
from conclave.keys.v1 import keys_pb2, keys_pb2_grpc
from conclave_auth.config import AuthConfig
from conclave_auth.server import build_spec
from conclave_kit.logs import configure_logging
from conclave_kit.pending import add_service
from conclave_kit.runtime import ServiceRuntime, ServiceSpec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support import MovableClock, start_service

PASSWORD = "correct horse battery staple 42"
# One TOTP key for the whole test session: the accounts share the session's database.
TOTP_KEY = os.urandom(32)


@dataclass
class AuthHarness:
    """A running auth service and helpers to drive it like a client."""

    runtime: ServiceRuntime
    config: AuthConfig
    channel: grpc.aio.Channel
    stub: auth_pb2_grpc.AuthServiceAsyncStub
    clock: MovableClock
    logs: io.StringIO
    users: dict[str, str] = field(default_factory=dict)

    def code(self, secret: str, offset_steps: int = 0) -> str:
        """The TOTP code of ``secret`` at the harness clock (plus whole steps)."""
        return pyotp.TOTP(secret).at(self.clock() + timedelta(seconds=30 * offset_steps))

    async def register(self, username: str) -> A.RegisterResponse:
        """Registers ``username`` with the standard strong password."""
        reply = await self.stub.Register(A.RegisterRequest(username=username, password=PASSWORD))
        self.users[reply.username] = reply.totp_secret
        return reply

    async def login(self, username: str, device: str = "laptop", **kw: str) -> A.LoginResponse:
        """Logs in with the current TOTP code (or the given factor)."""
        if "recovery_code" not in kw and "totp_code" not in kw:
            kw["totp_code"] = self.code(self.users[username])
        return await self.stub.Login(
            A.LoginRequest(
                username=username,
                password=PASSWORD,
                device=A.DeviceInfo(name=device, platform=A.PLATFORM_CLI),
                **kw,
            )
        )

    async def user(self, username: str, device: str = "laptop") -> A.SessionTokens:
        """Registers and logs in; returns the session tokens."""
        await self.register(username)
        return (await self.login(username, device)).tokens

    def next_step(self) -> None:
        """Moves the clock to the next TOTP step so a fresh code exists."""
        self.clock.advance(30)


def unique(prefix: str) -> str:
    """A username no other test uses (the database is shared by the session)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def bearer(tokens: A.SessionTokens | str) -> tuple[tuple[str, str]]:
    """Call metadata carrying an access token."""
    token = tokens if isinstance(tokens, str) else tokens.access_token
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def auth(service_env: dict[str, str], tmp_path: Path) -> AsyncIterator[AuthHarness]:
    key = Ed25519PrivateKey.generate()
    key_file = tmp_path / "signing.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    totp_key_file = tmp_path / "totp.key"
    totp_key_file.write_bytes(TOTP_KEY)
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    env = {
        **service_env,
        "CONCLAVE_TOKEN_VERIFY_KEYS": "auth-test:"
        + base64.urlsafe_b64encode(public).decode().rstrip("="),
        "CONCLAVE_TOKEN_SIGNING_KEY_ID": "auth-test",
        "CONCLAVE_TOKEN_SIGNING_KEY_FILE": str(key_file),
        "CONCLAVE_AUTH_TOTP_KEY_FILE": str(totp_key_file),
        "CONCLAVE_AUTH_GRPC_PORT": "0",
        "CONCLAVE_AUTH_METRICS_PORT": "0",
        # OWASP's minimum Argon2id cost keeps the suite fast; production default is higher.
        "CONCLAVE_AUTH_ARGON2_MEMORY_KIB": "19456",
        "CONCLAVE_AUTH_ARGON2_TIME_COST": "2",
        "CONCLAVE_AUTH_ARGON2_PARALLELISM": "1",
        "CONCLAVE_AUTH_SESSION_PROFILE": "enterprise",
    }
    logs = io.StringIO()
    configure_logging("auth", "info", stream=logs)
    config = AuthConfig.from_env(env)
    clock = MovableClock()
    runtime = await start_service(
        build_spec(config, clock=clock), env, config=config.service, clock=clock.unix
    )
    # Rate-limit buckets live in the shared test database; start each test with full ones.
    await runtime.resources.pool.execute("TRUNCATE rate_limit_buckets")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}")
    yield AuthHarness(runtime, config, channel, auth_pb2_grpc.AuthServiceStub(channel), clock, logs)
    await channel.close(None)
    await runtime.stop()


class _PrekeyCounts:
    """Stands in for another service: one authenticated RPC that always succeeds."""

    async def GetPrekeyCounts(self, request: object, context: object) -> object:
        return keys_pb2.GetPrekeyCountsResponse()


def other_service_spec(name: str) -> ServiceSpec:
    """A second service (KeyService.GetPrekeyCounts only) on the kit runtime."""
    keys = keys_pb2.DESCRIPTOR.services_by_name["KeyService"]
    return ServiceSpec(
        name=name,
        grpc_services=(keys.full_name,),
        migrations_package="tests.integration.kit.fixture_migrations_a",
        register=lambda server, res: add_service(server, keys, _PrekeyCounts(), "test"),
        default_grpc_port=0,
        default_metrics_port=0,
    )


@pytest.fixture
async def other_service(
    auth: AuthHarness, service_env: dict[str, str]
) -> AsyncIterator[keys_pb2_grpc.KeyServiceAsyncStub]:
    """Another service trusting auth's keys; yields a stub for its GetPrekeyCounts."""
    verify = ",".join(
        f"{kid}:" + base64.urlsafe_b64encode(raw).decode().rstrip("=")
        for kid, raw in auth.config.service.token_verify_keys.items()
    )
    runtime = await start_service(
        other_service_spec("other"),
        {**service_env, "CONCLAVE_TOKEN_VERIFY_KEYS": verify},
        clock=auth.clock.unix,
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}")
    yield keys_pb2_grpc.KeyServiceStub(channel)
    await channel.close(None)
    await runtime.stop()
