"""The keys service in-process (kit runtime, port 0) on the session's real NATS + Postgres.

Devices generate real key material (Ed25519 identity, X25519 and ML-KEM-1024 prekeys) and
sign it with the byte layouts of keys.proto, so the server's verification is exercised for
real. Tokens come from the session's test signer, standing in for the auth service.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace

import grpc
import pytest
from conclave.keys.v1 import keys_pb2, keys_pb2_grpc
from conclave_keys.config import KeysConfig
from conclave_keys.server import build_spec
from conclave_kit.ratelimit import Limit
from conclave_kit.runtime import ServiceRuntime
from conclave_kit.tokens import TokenSigner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mlkem
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tests.support import start_service

RAW = serialization.Encoding.Raw
RAW_PUBLIC = serialization.PublicFormat.Raw
GENEROUS = Limit("test generous", 1e9, 1e9)


def _raw(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(RAW, RAW_PUBLIC)


def kem_public() -> bytes:
    """A fresh ML-KEM-1024 encapsulation key (1,568 bytes)."""
    return mlkem.MLKEM1024PrivateKey.generate().public_key().public_bytes(RAW, RAW_PUBLIC)


@dataclass
class Device:
    """A client device: ids, identity key pair, and helpers building signed requests."""

    account_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    device_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    session_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    signing: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    agreement: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)

    def sibling(self) -> Device:
        """Another device of the same account."""
        return Device(account_id=self.account_id)

    def identity(self) -> keys_pb2.IdentityKey:
        """The public identity key."""
        return keys_pb2.IdentityKey(
            signing_public_key=_raw(self.signing), agreement_public_key=_raw(self.agreement)
        )

    def signed_prekey(self, key_id: int) -> keys_pb2.SignedEcPrekey:
        """A signed X25519 prekey."""
        public = _raw(X25519PrivateKey.generate())
        message = b"Conclave/v1/Sig/SignedPreKey" + key_id.to_bytes(4, "big") + public
        return keys_pb2.SignedEcPrekey(
            key_id=key_id, public_key=public, signature=self.signing.sign(message)
        )

    def kem_prekey(self, key_id: int) -> keys_pb2.SignedKemPrekey:
        """A signed ML-KEM-1024 prekey."""
        public = kem_public()
        message = b"Conclave/v1/Sig/KEMPreKey" + key_id.to_bytes(4, "big") + public
        return keys_pb2.SignedKemPrekey(
            key_id=key_id, public_key=public, signature=self.signing.sign(message)
        )

    def one_time(self, ids: range) -> list[keys_pb2.EcPrekey]:
        """Unsigned one-time X25519 prekeys."""
        return [
            keys_pb2.EcPrekey(key_id=i, public_key=_raw(X25519PrivateKey.generate())) for i in ids
        ]

    def pq_one_time(self, ids: range) -> list[keys_pb2.SignedKemPrekey]:
        """Signed one-time ML-KEM-1024 prekeys."""
        return [self.kem_prekey(i) for i in ids]

    def publish_request(
        self, one_time: int = 0, pq_one_time: int = 0
    ) -> keys_pb2.PublishIdentityKeyRequest:
        """A valid first publication with ``one_time``/``pq_one_time`` one-time keys."""
        return keys_pb2.PublishIdentityKeyRequest(
            identity_key=self.identity(),
            registration_id=1234,
            signed_prekey=self.signed_prekey(1),
            pq_last_resort_prekey=self.kem_prekey(1),
            one_time_prekeys=self.one_time(range(1, one_time + 1)),
            pq_one_time_prekeys=self.pq_one_time(range(1, pq_one_time + 1)),
        )


@dataclass
class KeysHarness:
    """A running keys service and a way to call it as a device."""

    runtime: ServiceRuntime
    signer: TokenSigner
    channel: grpc.aio.Channel
    config: KeysConfig

    @property
    def stub(self) -> keys_pb2_grpc.KeyServiceAsyncStub:
        """Stub on a shared channel."""
        return keys_pb2_grpc.KeyServiceStub(self.channel)

    def auth(self, device: Device, *, auth_time: int | None = None) -> tuple[tuple[str, str]]:
        """Call metadata with a fresh access token for ``device``."""
        token = self.signer.mint(
            account_id=device.account_id,
            device_id=device.device_id,
            session_id=device.session_id,
            auth_time=auth_time,
        )
        return (("authorization", f"Bearer {token}"),)

    def stale(self, device: Device) -> tuple[tuple[str, str]]:
        """Metadata whose password + TOTP check is an hour old (fails FRESH RPCs)."""
        return self.auth(device, auth_time=int(time.time()) - 3600)

    async def publish(
        self, device: Device, one_time: int = 0, pq_one_time: int = 0
    ) -> keys_pb2.PublishIdentityKeyResponse:
        """Publishes ``device`` with the given number of one-time keys."""
        return await self.stub.PublishIdentityKey(
            device.publish_request(one_time, pq_one_time), metadata=self.auth(device)
        )


def make_config(**overrides: object) -> KeysConfig:
    """Keys settings for tests: throwaway log key, limits out of the way unless overridden."""
    base = KeysConfig(
        tree_signing_key=Ed25519PrivateKey.generate(),
        claim_per_requester=GENEROUS,
        claim_per_target_device=GENEROUS,
        upload_per_device=GENEROUS,
        lookup_per_account=GENEROUS,
        public_per_source=GENEROUS,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


StartKeys = Callable[[KeysConfig], Awaitable[KeysHarness]]


@pytest.fixture
async def start_keys(service_env: dict[str, str], signer: TokenSigner) -> AsyncIterator[StartKeys]:
    """Starts keys services with given settings; stops them after the test."""
    running: list[KeysHarness] = []

    async def start(config: KeysConfig) -> KeysHarness:
        runtime = await start_service(build_spec(config), service_env)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}")
        harness = KeysHarness(runtime, signer, channel, config)
        running.append(harness)
        return harness

    yield start
    for harness in running:
        await harness.channel.close(None)
        await harness.runtime.stop()
    await asyncio.sleep(0)


@pytest.fixture
async def keys(start_keys: StartKeys) -> KeysHarness:
    """A keys service with test settings."""
    return await start_keys(make_config())
