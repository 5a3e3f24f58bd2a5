"""Keys-service settings: the transparency-log key is mandatory unless explicitly ephemeral."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conclave_keys.config import KeysConfig
from conclave_keys.transparency import TreeHeadSigner
from conclave_kit.config import ConfigError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

GOOD = {
    "CONCLAVE_NATS_URL": "nats://127.0.0.1:4222",
    "CONCLAVE_DATABASE_URL": "postgresql:///x?host=/tmp",
    "CONCLAVE_TOKEN_VERIFY_KEYS": "k1:" + "A" * 43,
}


def _pem(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_key_file_is_loaded(tmp_path: Path) -> None:
    """A PEM Ed25519 key file becomes the log signer; limits can be tuned."""
    key = Ed25519PrivateKey.generate()
    (tmp_path / "kt.pem").write_bytes(_pem(key))
    config = KeysConfig.from_env(
        {
            "CONCLAVE_KEYS_TREE_SIGNING_KEY_FILE": str(tmp_path / "kt.pem"),
            "CONCLAVE_KEYS_CLAIM_BURST": "7",
            "CONCLAVE_KEYS_CLAIM_PER_SECOND": "0.5",
        }
    )
    assert TreeHeadSigner(config.tree_signing_key).public_key == TreeHeadSigner(key).public_key
    assert (config.claim_per_requester.capacity, config.claim_per_requester.refill_per_second) == (
        7.0,
        0.5,
    )
    assert "tree_signing_key" not in repr(config)


def test_missing_or_bad_key_is_one_line(tmp_path: Path) -> None:
    """No key (and no opt-in), an unreadable file or a non-Ed25519 key fail with one line."""
    with pytest.raises(ConfigError, match=r"^CONCLAVE_KEYS_TREE_SIGNING_KEY_FILE: required"):
        KeysConfig.from_env({})
    with pytest.raises(ConfigError, match="cannot read"):
        KeysConfig.from_env({"CONCLAVE_KEYS_TREE_SIGNING_KEY_FILE": str(tmp_path / "none.pem")})
    (tmp_path / "x.pem").write_bytes(_pem(X25519PrivateKey.generate()))
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        KeysConfig.from_env({"CONCLAVE_KEYS_TREE_SIGNING_KEY_FILE": str(tmp_path / "x.pem")})
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="not an unencrypted PEM key"):
        KeysConfig.from_env({"CONCLAVE_KEYS_TREE_SIGNING_KEY_FILE": str(tmp_path / "junk.pem")})
    with pytest.raises(ConfigError, match="must be greater than 0"):
        KeysConfig.from_env(
            {
                "CONCLAVE_KEYS_ALLOW_EPHEMERAL_TREE_KEY": "true",
                "CONCLAVE_KEYS_UPLOAD_PER_SECOND": "0",
            }
        )


def test_ephemeral_key_only_when_allowed() -> None:
    """The opt-in gives a fresh key per start."""
    one = KeysConfig.from_env({"CONCLAVE_KEYS_ALLOW_EPHEMERAL_TREE_KEY": "true"})
    two = KeysConfig.from_env({"CONCLAVE_KEYS_ALLOW_EPHEMERAL_TREE_KEY": "true"})
    assert (
        TreeHeadSigner(one.tree_signing_key).key_id != TreeHeadSigner(two.tree_signing_key).key_id
    )


def test_process_without_log_key_exits_2_with_one_line() -> None:
    """The keys process refuses to start without a log key: exit 2, one line, no traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCLAVE_")}
    env.update(GOOD)
    proc = subprocess.run(
        [sys.executable, "-m", "conclave_keys"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "conclave-keys: configuration error: CONCLAVE_KEYS_TREE_SIGNING_KEY_FILE: required"
    )
