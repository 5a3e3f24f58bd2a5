"""Configuration from environment variables into frozen dataclasses.

Every setting is read once at start-up. A missing or malformed value raises
:class:`ConfigError` whose message is one line naming the variable, so an operator sees
``CONCLAVE_AUTH_GRPC_PORT: expected an integer in 0..65535, got 'http'`` and nothing else.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """A missing or malformed setting. ``str(err)`` is one line naming the variable."""


class Env:
    """Typed reader over an environment mapping that fails with one-line errors.

    Args:
        environ: The variables to read; defaults to ``os.environ``.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def _raw(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def text(self, name: str, default: str | None = None) -> str:
        """Returns a string setting.

        Raises:
            ConfigError: The variable is unset and has no default.
        """
        value = self._raw(name)
        if value is not None:
            return value
        if default is None:
            raise ConfigError(f"{name}: required but not set")
        return default

    def optional_text(self, name: str) -> str | None:
        """Returns a string setting, or None when unset."""
        return self._raw(name)

    def integer(
        self,
        name: str,
        default: int | None = None,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        """Returns an integer setting within ``[minimum, maximum]``.

        Raises:
            ConfigError: Unset without default, not an integer, or out of range.
        """
        raw = self._raw(name)
        if raw is None:
            if default is None:
                raise ConfigError(f"{name}: required but not set")
            return default
        lo = "-inf" if minimum is None else str(minimum)
        hi = "inf" if maximum is None else str(maximum)
        try:
            value = int(raw, 10)
        except ValueError:
            raise ConfigError(f"{name}: expected an integer in {lo}..{hi}, got {raw!r}") from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise ConfigError(f"{name}: expected an integer in {lo}..{hi}, got {raw!r}")
        return value

    def port(self, name: str, default: int) -> int:
        """Returns a TCP port; 0 means "pick a free port" (tests)."""
        return self.integer(name, default, minimum=0, maximum=65535)

    def seconds(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        """Returns a duration in seconds (a decimal number, at least ``minimum``).

        Raises:
            ConfigError: Not a number or below ``minimum``.
        """
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}: expected a number of seconds, got {raw!r}") from None
        if not math.isfinite(value) or value < minimum:
            raise ConfigError(f"{name}: expected a number of seconds >= {minimum}, got {raw!r}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        """Returns a boolean setting (1/0, true/false, yes/no, on/off).

        Raises:
            ConfigError: Any other value.
        """
        raw = self._raw(name)
        if raw is None:
            return default
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ConfigError(f"{name}: expected true or false, got {raw!r}")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        """Returns a setting restricted to ``choices`` (case-insensitive).

        Raises:
            ConfigError: The value is not one of ``choices``.
        """
        value = self.text(name, default).lower()
        if value not in choices:
            raise ConfigError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
        return value

    def key_map(self, name: str) -> dict[str, bytes]:
        """Returns ``kid:base64url,kid:base64url`` as a mapping of key id to key bytes.

        Raises:
            ConfigError: Unset, or an entry is not ``kid:base64url`` of 32 bytes.
        """
        raw = self.text(name)
        keys: dict[str, bytes] = {}
        for entry in raw.split(","):
            kid, sep, encoded = entry.strip().partition(":")
            if not sep or not kid:
                raise ConfigError(f"{name}: expected kid:base64url entries, got {entry!r}")
            try:
                key = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            except (binascii.Error, ValueError):
                raise ConfigError(f"{name}: key {kid!r} is not base64url") from None
            if len(key) != 32:
                raise ConfigError(f"{name}: key {kid!r} must be 32 bytes, got {len(key)}")
            keys[kid] = key
        return keys


@dataclass(frozen=True)
class ServiceConfig:
    """Settings every Conclave service reads (service-specific ones live beside them).

    Attributes:
        service: Short service name (``auth``, ``keys``, ...); also its Postgres schema.
        grpc_host: Address the gRPC server binds (``0.0.0.0`` in containers).
        grpc_port: gRPC port; 0 picks a free one.
        metrics_host: Address of the Prometheus HTTP endpoint.
        metrics_port: Prometheus port; 0 picks a free one.
        database_url: PostgreSQL URL (asyncpg form; Unix sockets allowed).
        nats_urls: NATS server URLs (comma-separated in the variable).
        stream_replicas: JetStream replica count for streams this service creates.
        log_level: Minimum log level.
        shutdown_grace_seconds: How long in-flight RPCs may run after SIGTERM.
        startup_timeout_seconds: How long to wait for Postgres and NATS at start-up.
        fresh_auth_seconds: How recent password + TOTP must be for AUTH_MODE_FRESH RPCs.
        token_verify_keys: Ed25519 public keys for access tokens, by key id (static).
        token_keys_from: Auth service address to fetch (and keep refreshing) the current
            verification keys from, so a rotated signing key is picked up without restarts.
        ports_file: If set, the bound ports are written there as JSON (launcher, tests).
        purge_interval_seconds: Seconds between scheduled retention purges of this
            service's data (``conclave_kit.account_data``); 0 turns the schedule off
            (on-demand ``RunPurge`` still works).
    """

    service: str
    grpc_host: str
    grpc_port: int
    metrics_host: str
    metrics_port: int
    database_url: str
    nats_urls: tuple[str, ...]
    stream_replicas: int
    log_level: str
    shutdown_grace_seconds: float
    startup_timeout_seconds: float
    fresh_auth_seconds: float
    token_verify_keys: dict[str, bytes] = field(repr=False)
    token_keys_from: str | None = None
    ports_file: str | None = None
    purge_interval_seconds: float = 60.0

    @classmethod
    def from_env(
        cls,
        service: str,
        *,
        default_grpc_port: int,
        default_metrics_port: int,
        environ: Mapping[str, str] | None = None,
    ) -> ServiceConfig:
        """Reads the common settings for ``service``.

        Ports are per service (``CONCLAVE_<SERVICE>_GRPC_PORT``) because a laptop runs all
        five side by side; everything else is shared (``CONCLAVE_DATABASE_URL``, ...).

        Raises:
            ConfigError: Any setting is missing or malformed.
        """
        env = Env(environ)
        prefix = f"CONCLAVE_{service.upper()}"
        nats = tuple(u.strip() for u in env.text("CONCLAVE_NATS_URL").split(",") if u.strip())
        for url in nats:
            if not url.startswith(("nats://", "tls://")):
                raise ConfigError(
                    f"CONCLAVE_NATS_URL: expected nats:// or tls:// URLs, got {url!r}"
                )
        database_url = env.text("CONCLAVE_DATABASE_URL")
        if not database_url.startswith(("postgresql://", "postgres://")):
            raise ConfigError("CONCLAVE_DATABASE_URL: expected a postgresql:// URL")
        keys_from = env.optional_text("CONCLAVE_TOKEN_KEYS_FROM")
        if keys_from is not None and ":" not in keys_from:
            raise ConfigError(
                "CONCLAVE_TOKEN_KEYS_FROM: expected host:port of the auth service, "
                f"got {keys_from!r}"
            )
        if env.optional_text("CONCLAVE_TOKEN_VERIFY_KEYS") is None and keys_from is not None:
            keys: dict[str, bytes] = {}
        else:
            try:
                keys = env.key_map("CONCLAVE_TOKEN_VERIFY_KEYS")
            except ConfigError as err:
                if "required but not set" in str(err):
                    raise ConfigError(
                        "CONCLAVE_TOKEN_VERIFY_KEYS: required unless CONCLAVE_TOKEN_KEYS_FROM "
                        "names the auth service to fetch keys from"
                    ) from None
                raise
        return cls(
            service=service,
            grpc_host=env.text("CONCLAVE_GRPC_HOST", "127.0.0.1"),
            grpc_port=env.port(f"{prefix}_GRPC_PORT", default_grpc_port),
            metrics_host=env.text("CONCLAVE_METRICS_HOST", "127.0.0.1"),
            metrics_port=env.port(f"{prefix}_METRICS_PORT", default_metrics_port),
            database_url=database_url,
            nats_urls=nats,
            stream_replicas=env.integer("CONCLAVE_NATS_STREAM_REPLICAS", 1, minimum=1, maximum=5),
            log_level=env.choice("CONCLAVE_LOG_LEVEL", "info", LOG_LEVELS),
            shutdown_grace_seconds=env.seconds("CONCLAVE_SHUTDOWN_GRACE_SECONDS", 10.0),
            startup_timeout_seconds=env.seconds("CONCLAVE_STARTUP_TIMEOUT_SECONDS", 60.0),
            fresh_auth_seconds=env.seconds("CONCLAVE_FRESH_AUTH_SECONDS", 600.0, minimum=1.0),
            token_verify_keys=keys,
            token_keys_from=keys_from,
            ports_file=env.optional_text(f"{prefix}_PORTS_FILE"),
            purge_interval_seconds=env.seconds("CONCLAVE_PURGE_INTERVAL_SECONDS", 60.0),
        )
