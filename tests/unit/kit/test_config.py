"""Configuration: typed parsing and one-line errors naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conclave_kit.config import ConfigError, Env, ServiceConfig

GOOD = {
    "CONCLAVE_NATS_URL": "nats://127.0.0.1:4222",
    "CONCLAVE_DATABASE_URL": "postgresql://postgres@/postgres?host=/tmp",
    "CONCLAVE_TOKEN_VERIFY_KEYS": "k1:" + "A" * 43,
}


def test_defaults_and_overrides() -> None:
    """Per-service ports default to the dev ports and can be overridden."""
    cfg = ServiceConfig.from_env(
        "auth", default_grpc_port=50051, default_metrics_port=9101, environ=GOOD
    )
    assert (cfg.grpc_port, cfg.metrics_port, cfg.stream_replicas) == (50051, 9101, 1)
    cfg = ServiceConfig.from_env(
        "auth",
        default_grpc_port=50051,
        default_metrics_port=9101,
        environ={
            **GOOD,
            "CONCLAVE_AUTH_GRPC_PORT": "0",
            "CONCLAVE_NATS_URL": "nats://a:1,nats://b:2",
        },
    )
    assert cfg.grpc_port == 0
    assert cfg.nats_urls == ("nats://a:1", "nats://b:2")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"CONCLAVE_AUTH_GRPC_PORT": "http"}, "CONCLAVE_AUTH_GRPC_PORT: expected an integer"),
        ({"CONCLAVE_AUTH_GRPC_PORT": "70000"}, "CONCLAVE_AUTH_GRPC_PORT: expected an integer"),
        ({"CONCLAVE_NATS_URL": ""}, "CONCLAVE_NATS_URL: required but not set"),
        ({"CONCLAVE_NATS_URL": "http://x"}, "CONCLAVE_NATS_URL: expected nats://"),
        ({"CONCLAVE_DATABASE_URL": "mysql://x"}, "CONCLAVE_DATABASE_URL: expected a postgresql"),
        ({"CONCLAVE_LOG_LEVEL": "loud"}, "CONCLAVE_LOG_LEVEL: expected one of"),
        ({"CONCLAVE_SHUTDOWN_GRACE_SECONDS": "-1"}, "CONCLAVE_SHUTDOWN_GRACE_SECONDS: expected"),
        ({"CONCLAVE_SHUTDOWN_GRACE_SECONDS": "nan"}, "CONCLAVE_SHUTDOWN_GRACE_SECONDS: expected"),
        ({"CONCLAVE_TOKEN_VERIFY_KEYS": "nokid"}, "CONCLAVE_TOKEN_VERIFY_KEYS: expected kid:"),
        ({"CONCLAVE_TOKEN_VERIFY_KEYS": "k:AAAA"}, "CONCLAVE_TOKEN_VERIFY_KEYS: key 'k' must be"),
    ],
)
def test_bad_values_name_the_variable(override: dict[str, str], expected: str) -> None:
    """Each malformed setting raises a one-line error that starts with the variable name."""
    with pytest.raises(ConfigError) as err:
        ServiceConfig.from_env(
            "auth", default_grpc_port=1, default_metrics_port=2, environ={**GOOD, **override}
        )
    assert str(err.value).startswith(expected)
    assert "\n" not in str(err.value)


def test_flag_parsing() -> None:
    """Booleans accept the usual spellings and reject anything else."""
    env = Env({"A": "yes", "B": "off", "C": "maybe"})
    assert env.flag("A", False) is True
    assert env.flag("B", True) is False
    with pytest.raises(ConfigError, match=r"^C: expected true or false"):
        env.flag("C", True)


def test_service_process_prints_one_line_and_exits_2() -> None:
    """A real service process with a bad value exits 2 with one line naming the variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCLAVE_")}
    env.update({**GOOD, "CONCLAVE_KEYS_GRPC_PORT": "not-a-port"})
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
    assert lines == [
        "conclave-keys: configuration error: CONCLAVE_KEYS_GRPC_PORT: expected an integer "
        "in 0..65535, got 'not-a-port'"
    ]


def test_token_keys_from_auth_replaces_static_keys() -> None:
    """Without static keys, the auth address to fetch them from is required."""
    env = {k: v for k, v in GOOD.items() if k != "CONCLAVE_TOKEN_VERIFY_KEYS"}
    with pytest.raises(ConfigError, match="required unless CONCLAVE_TOKEN_KEYS_FROM"):
        ServiceConfig.from_env("keys", default_grpc_port=1, default_metrics_port=2, environ=env)
    cfg = ServiceConfig.from_env(
        "keys",
        default_grpc_port=1,
        default_metrics_port=2,
        environ={**env, "CONCLAVE_TOKEN_KEYS_FROM": "127.0.0.1:50051"},
    )
    assert cfg.token_verify_keys == {} and cfg.token_keys_from == "127.0.0.1:50051"
