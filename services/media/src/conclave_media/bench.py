"""Upload and download throughput of the media service, as JSON on stdout.

Run from the checkout::

    .venv/bin/python -m conclave_media.bench                 # 100 MiB, 1 MiB chunks
    .venv/bin/python -m conclave_media.bench --size-mib 20 --chunk-kib 256

The media server runs as its own process (``python -m conclave_media``, as in production)
against ``CONCLAVE_NATS_URL`` / ``CONCLAVE_DATABASE_URL`` when both are set, otherwise
against an embedded NATS JetStream and PostgreSQL started for the run (the dev launcher's
``conclave_devstack``, installed in the workspace venv). This process is the client: it
sends random bytes standing in for ciphertext, downloads them again and checks they are
identical. Upload time runs from CreateUpload to the completed UploadChunks reply (so it
includes the server's whole-blob SHA-256 check); download time from the request to the
last byte. In the same run, ``raw_nats_object_store_baseline`` writes and reads the same
bytes with the same chunking straight into a JetStream object store from this process
(nats-py, no gRPC, no PostgreSQL): what the service costs on top of NATS.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from conclave.media.v1 import media_pb2 as M
from conclave.media.v1 import media_pb2_grpc
from conclave_kit.tokens import TokenSigner

MIB = 1024 * 1024


@contextlib.contextmanager
def _infrastructure() -> Iterator[tuple[str, str]]:
    """NATS and PostgreSQL URLs: from the environment, or embedded servers for the run."""
    nats_url = os.environ.get("CONCLAVE_NATS_URL")
    database_url = os.environ.get("CONCLAVE_DATABASE_URL")
    if nats_url and database_url:
        yield nats_url, database_url
        return
    # A dev-only dependency: production images run the service, not the benchmark.
    from conclave_devstack.infra import EmbeddedNats, EmbeddedPostgres  # noqa: PLC0415

    base = Path(tempfile.mkdtemp(prefix="conclave-media-bench-"))
    # PostgreSQL runs as an unprivileged user when we are root and must reach its directory.
    base.chmod(0o755)
    nats = EmbeddedNats(base / "nats", port=0)
    postgres = EmbeddedPostgres(base / "postgres")
    try:
        nats.start()
        postgres.start()
        yield nats.url, postgres.url
    finally:
        postgres.stop()
        nats.stop()
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def _media_server(nats_url: str, database_url: str, signer: TokenSigner) -> Iterator[str]:
    """Runs ``python -m conclave_media`` on free ports; yields its gRPC address."""
    work = Path(tempfile.mkdtemp(prefix="conclave-media-bench-srv-"))
    ports = work / "ports.json"
    public = base64.urlsafe_b64encode(signer.public_key).decode().rstrip("=")
    env = {
        **os.environ,
        "CONCLAVE_NATS_URL": nats_url,
        "CONCLAVE_DATABASE_URL": database_url,
        "CONCLAVE_TOKEN_VERIFY_KEYS": f"{signer.kid}:{public}",
        "CONCLAVE_MEDIA_GRPC_PORT": "0",
        "CONCLAVE_MEDIA_METRICS_PORT": "0",
        "CONCLAVE_MEDIA_PORTS_FILE": str(ports),
        "CONCLAVE_LOG_LEVEL": "warning",
    }
    log = (work / "media.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "conclave_media"], env=env, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 60
        while not ports.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "media server did not start: " + (work / "media.log").read_text()[-2000:]
                )
            time.sleep(0.05)
        yield f"127.0.0.1:{json.loads(ports.read_text())['grpc']}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def _requests(media_id: str, data: bytes, chunk: int) -> Iterator[M.UploadChunksRequest]:
    view = memoryview(data)
    for offset in range(0, len(data), chunk):
        yield M.UploadChunksRequest(
            media_id=media_id, offset=offset, data=bytes(view[offset : offset + chunk])
        )


async def measure(address: str, signer: TokenSigner, size: int, chunk: int) -> dict[str, Any]:
    """Uploads and downloads ``size`` random bytes once; returns timings and rates."""
    token = signer.mint(account_id="bench-account", device_id="bench-dev", session_id="bench")
    metadata = (("authorization", f"Bearer {token}"),)
    data = os.urandom(size)
    digest = hashlib.sha256(data).digest()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = media_pb2_grpc.MediaServiceStub(channel)
        # The server answers UNAVAILABLE until Postgres and NATS are connected.
        for _ in range(600):
            try:
                await stub.GetQuota(M.GetQuotaRequest(), metadata=metadata)
                break
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                await asyncio.sleep(0.1)
        started = time.perf_counter()
        created = await stub.CreateUpload(
            M.CreateUploadRequest(
                size_bytes=size, chunk_size_bytes=chunk, ciphertext_sha256=digest
            ),
            metadata=metadata,
        )
        reply = await stub.UploadChunks(_requests(created.media_id, data, chunk), metadata=metadata)
        upload_s = time.perf_counter() - started
        if not reply.complete:
            raise RuntimeError("upload did not complete")
        received = bytearray()
        started = time.perf_counter()
        async for piece in stub.Download(
            M.DownloadRequest(media_id=created.media_id), metadata=metadata
        ):
            received += piece.data
        download_s = time.perf_counter() - started
        if bytes(received) != data:
            raise RuntimeError("downloaded bytes differ from the uploaded ones")
        await stub.DeleteMedia(M.DeleteMediaRequest(media_id=created.media_id), metadata=metadata)
    return {
        "upload_seconds": round(upload_s, 3),
        "upload_mb_per_s": round(size / upload_s / 1e6, 1),
        "upload_mib_per_s": round(size / upload_s / MIB, 1),
        "download_seconds": round(download_s, 3),
        "download_mb_per_s": round(size / download_s / 1e6, 1),
        "download_mib_per_s": round(size / download_s / MIB, 1),
    }


async def measure_raw(nats_url: str, size: int, chunk: int) -> dict[str, Any]:
    """The raw NATS baseline: the same bytes and chunking, straight into an object store.

    nats-py from this process (put; direct-get reads): no gRPC, no PostgreSQL, no digest.
    """
    import nats  # noqa: PLC0415 - only the benchmark needs a bare client

    from conclave_media.storage import JetStreamObjectStorage  # noqa: PLC0415

    data = os.urandom(size)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        store = await JetStreamObjectStorage.open(
            js, replicas=1, max_age_seconds=3600, bucket="conclave_media_bench_raw"
        )
        pieces = [data[o : o + chunk] for o in range(0, size, chunk)]
        started = time.perf_counter()
        for index, piece in enumerate(pieces):
            await store.put_chunk("raw", index, piece)
        upload_s = time.perf_counter() - started
        started = time.perf_counter()
        received = b"".join([await store.get_chunk("raw", i) for i in range(len(pieces))])
        download_s = time.perf_counter() - started
        if received != data:
            raise RuntimeError("raw baseline read back different bytes")
        await js.delete_stream("OBJ_conclave_media_bench_raw")
    finally:
        await nc.close()
    return {
        "upload_mb_per_s": round(size / upload_s / 1e6, 1),
        "download_mb_per_s": round(size / download_s / 1e6, 1),
    }


def main(argv: list[str] | None = None) -> None:
    """Parses arguments, runs the benchmark and prints one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=float, default=100.0, help="blob size (MiB)")
    parser.add_argument("--chunk-kib", type=int, default=1024, help="chunk size (KiB)")
    parser.add_argument("--runs", type=int, default=1, help="repetitions (best is reported)")
    args = parser.parse_args(argv)
    size, chunk = int(args.size_mib * MIB), args.chunk_kib * 1024
    signer = TokenSigner.generate("bench-1")
    runs: list[dict[str, Any]] = []
    with (
        _infrastructure() as (nats_url, database_url),
        _media_server(nats_url, database_url, signer) as address,
    ):
        for _ in range(max(1, args.runs)):
            runs.append(asyncio.run(measure(address, signer, size, chunk)))
        raw = asyncio.run(measure_raw(nats_url, size, chunk))
    result = {
        "size_bytes": size,
        "chunk_bytes": chunk,
        "cpu_count": os.cpu_count(),
        "storage": "JetStream object store (file), one object per chunk",
        "server": "separate process (python -m conclave_media); client in this process",
        "best_upload_mb_per_s": max(r["upload_mb_per_s"] for r in runs),
        "best_download_mb_per_s": max(r["download_mb_per_s"] for r in runs),
        "runs": runs,
        "raw_nats_object_store_baseline": raw,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
