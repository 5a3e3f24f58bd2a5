"""The media benchmark script runs end to end (small size; real numbers: 100 MiB default)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conclave_devstack.infra import EmbeddedNats, EmbeddedPostgres

pytestmark = pytest.mark.integration


def test_bench_reports_upload_and_download_rates(
    nats_server: EmbeddedNats, postgres: EmbeddedPostgres
) -> None:
    """``python -m conclave_media.bench`` prints JSON with both rates for a verified copy."""
    env = {
        **os.environ,
        "CONCLAVE_NATS_URL": nats_server.url,
        "CONCLAVE_DATABASE_URL": postgres.url,
    }
    result = subprocess.run(
        [sys.executable, "-m", "conclave_media.bench", "--size-mib", "3", "--chunk-kib", "256"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(result.stdout)
    assert report["size_bytes"] == 3 * 1024 * 1024 and report["chunk_bytes"] == 256 * 1024
    assert report["best_upload_mb_per_s"] > 0 and report["best_download_mb_per_s"] > 0
