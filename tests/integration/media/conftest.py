"""The media service in-process (kit runtime, port 0) on the session's real NATS + Postgres.

Tokens come from the session's test signer, standing in for the auth service. The clock
the manager uses for expiry is movable, so TTL tests advance it instead of sleeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from conclave.media.v1 import media_pb2 as M
from conclave.media.v1 import media_pb2_grpc
from conclave_kit.runtime import ServiceRuntime
from conclave_kit.tokens import TokenSigner
from conclave_media.config import MediaConfig
from conclave_media.manager import MediaManager
from conclave_media.server import build_spec
from conclave_media.service import MediaServiceServicer
from conclave_media.storage import JetStreamObjectStorage

from tests.support import MovableClock, start_service

MIB = 1024 * 1024
# Generous enough for the 20 MiB round trip at 1 MiB chunks over a local socket.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 4 * MIB)]


@dataclass
class User:
    """An account with one device and session."""

    account_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    device_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    session_id: str = field(default_factory=lambda: str(uuid.uuid4()))


def ciphertext(size: int) -> bytes:
    """Random bytes standing in for a client-side encrypted attachment."""
    return os.urandom(size)


def sha256(data: bytes) -> bytes:
    """SHA-256 digest."""
    return hashlib.sha256(data).digest()


def requests(
    media_id: str, data: bytes, chunk_size: int, start: int = 0, stop: int | None = None
) -> Iterator[M.UploadChunksRequest]:
    """Upload requests for ``data[start:stop]`` in chunks (start is a chunk boundary)."""
    end = len(data) if stop is None else stop
    for offset in range(start, end, chunk_size):
        piece = data[offset : min(offset + chunk_size, end)]
        yield M.UploadChunksRequest(media_id=media_id, offset=offset, data=piece)


@dataclass
class MediaHarness:
    """A running media service and a way to call it as a user."""

    runtime: ServiceRuntime
    signer: TokenSigner
    channel: grpc.aio.Channel
    config: MediaConfig
    clock: MovableClock
    servicer: MediaServiceServicer

    @property
    def stub(self) -> media_pb2_grpc.MediaServiceAsyncStub:
        """Stub on a shared channel."""
        return media_pb2_grpc.MediaServiceStub(self.channel)

    @property
    def manager(self) -> MediaManager:
        """The service's manager (for purge_expired, which no RPC exposes yet)."""
        assert self.servicer.manager is not None
        return self.servicer.manager

    @property
    def storage(self) -> JetStreamObjectStorage:
        """The chunk store."""
        storage = self.manager.storage
        assert isinstance(storage, JetStreamObjectStorage)
        return storage

    def auth(self, user: User) -> tuple[tuple[str, str]]:
        """Call metadata with a fresh access token for ``user``."""
        token = self.signer.mint(
            account_id=user.account_id, device_id=user.device_id, session_id=user.session_id
        )
        return (("authorization", f"Bearer {token}"),)

    async def create(
        self, user: User, data: bytes, chunk_size: int = MIB, digest: bytes | None = None
    ) -> M.CreateUploadResponse:
        """Declares an upload of ``data``."""
        return await self.stub.CreateUpload(
            M.CreateUploadRequest(
                size_bytes=len(data),
                chunk_size_bytes=chunk_size,
                ciphertext_sha256=sha256(data) if digest is None else digest,
            ),
            metadata=self.auth(user),
        )

    async def upload(self, user: User, data: bytes, chunk_size: int = MIB) -> str:
        """Creates and completes an upload; returns the media id."""
        created = await self.create(user, data, chunk_size)
        reply = await self.stub.UploadChunks(
            requests(created.media_id, data, chunk_size), metadata=self.auth(user)
        )
        assert reply.complete
        return created.media_id

    async def download(self, user: User, media_id: str, start: int = 0) -> bytes:
        """Downloads a blob from ``start``; checks offsets are contiguous."""
        out = bytearray()
        call = self.stub.Download(
            M.DownloadRequest(media_id=media_id, start_offset=start), metadata=self.auth(user)
        )
        async for piece in call:
            assert piece.offset == start + len(out)
            assert len(piece.data) <= MIB
            out += piece.data
        return bytes(out)


StartMedia = Callable[[MediaConfig], Awaitable[MediaHarness]]


@pytest.fixture
async def start_media(
    service_env: dict[str, str], signer: TokenSigner
) -> AsyncIterator[StartMedia]:
    """Starts media services with given settings; stops them after the test."""
    running: list[MediaHarness] = []

    async def start(config: MediaConfig) -> MediaHarness:
        clock = MovableClock()
        servicer = MediaServiceServicer()
        runtime = await start_service(
            build_spec(config, clock=clock, servicer=servicer), service_env
        )
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{runtime.grpc_port}", options=CHANNEL_OPTIONS
        )
        harness = MediaHarness(runtime, signer, channel, config, clock, servicer)
        running.append(harness)
        return harness

    yield start
    for harness in running:
        await harness.channel.close(None)
        await harness.runtime.stop()
    await asyncio.sleep(0)


@pytest.fixture
async def media(start_media: StartMedia) -> MediaHarness:
    """A media service with default settings."""
    return await start_media(MediaConfig())
