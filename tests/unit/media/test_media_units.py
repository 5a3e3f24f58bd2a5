"""Media settings and media ids (no servers)."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys

import pytest
from conclave_kit.config import ConfigError
from conclave_kit.errors import NotFound
from conclave_media.config import MediaConfig
from conclave_media.manager import blob_key, id_hash, new_media_id

GOOD = {
    "CONCLAVE_NATS_URL": "nats://127.0.0.1:4222",
    "CONCLAVE_DATABASE_URL": "postgresql:///x?host=/tmp",
    "CONCLAVE_TOKEN_VERIFY_KEYS": "k1:" + "A" * 43,
}


def test_defaults_match_the_contract() -> None:
    """100 MiB per blob, 30-day TTL, 24-hour upload window, a finite quota."""
    config = MediaConfig.from_env({})
    assert config.max_file_bytes == 104_857_600
    assert config.blob_ttl_seconds == 30 * 24 * 3600
    assert config.upload_ttl_seconds == 24 * 3600
    assert config.quota_bytes > config.max_file_bytes


def test_settings_are_read_and_checked() -> None:
    """Each variable is honoured; a bad one is a one-line error naming it."""
    config = MediaConfig.from_env(
        {
            "CONCLAVE_MEDIA_MAX_FILE_BYTES": "1048576",
            "CONCLAVE_MEDIA_QUOTA_BYTES": "0",
            "CONCLAVE_MEDIA_BLOB_TTL_SECONDS": "3600",
            "CONCLAVE_MEDIA_UPLOAD_TTL_SECONDS": "600",
            "CONCLAVE_MEDIA_UPLOAD_BURST": "5",
            "CONCLAVE_MEDIA_UPLOAD_PER_SECOND": "0.25",
        }
    )
    assert (config.upload_limit.capacity, config.upload_limit.refill_per_second) == (5, 0.25)
    assert (config.max_file_bytes, config.quota_bytes) == (1048576, 0)
    assert (config.blob_ttl_seconds, config.upload_ttl_seconds) == (3600, 600)
    for name, value in (
        ("CONCLAVE_MEDIA_MAX_FILE_BYTES", "0"),
        ("CONCLAVE_MEDIA_MAX_FILE_BYTES", "lots"),
        ("CONCLAVE_MEDIA_MAX_FILE_BYTES", str(2 * 1024**3)),
        ("CONCLAVE_MEDIA_QUOTA_BYTES", "-1"),
        ("CONCLAVE_MEDIA_BLOB_TTL_SECONDS", "1"),
        ("CONCLAVE_MEDIA_UPLOAD_BURST", "0"),
        ("CONCLAVE_MEDIA_UPLOAD_PER_SECOND", "0"),
    ):
        with pytest.raises(ConfigError) as err:
            MediaConfig.from_env({name: value})
        assert str(err.value).startswith(f"{name}: ")


def test_bad_setting_stops_the_service_with_one_line() -> None:
    """``conclave-media`` exits 2 with the variable's name on stderr."""
    env = {**os.environ, **GOOD, "CONCLAVE_MEDIA_MAX_FILE_BYTES": "big"}
    result = subprocess.run(
        [sys.executable, "-m", "conclave_media"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith(
        "conclave-media: configuration error: CONCLAVE_MEDIA_MAX_FILE_BYTES:"
    )


def test_media_ids_are_256_bit_and_canonical() -> None:
    """Ids are 43 base64url characters of 32 random bytes; only the canonical spelling
    maps to a blob, and what the server keeps is a hash, not the id."""
    ids = {new_media_id() for _ in range(1000)}
    assert len(ids) == 1000
    for media_id in list(ids)[:50]:
        assert len(media_id) == 43
        raw = base64.urlsafe_b64decode(media_id + "=")
        assert len(raw) == 32
        assert id_hash(media_id) == hashlib.sha256(raw).digest()
        assert media_id not in blob_key(id_hash(media_id))
    media_id = new_media_id()
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # The final character carries 4 data bits and 2 zero bits: its siblings decode to the
    # same bytes but are not the id.
    sibling = media_id[:-1] + last[last.index(media_id[-1]) ^ 1]
    for bad in ("", "x" * 42, "x" * 44, media_id[:-1] + "=", media_id[:-1] + "+", sibling):
        with pytest.raises(NotFound):
            id_hash(bad)
