"""Retention settings: the deployment's default policy and its bounds.

Each of the four policy fields has a default and a minimum and maximum that account and
conversation policies must stay within (out of bounds is INVALID_ARGUMENT, never clamped):

==================================  =========  ==========  ===========
field (``CONCLAVE_RETENTION_…``)    default    minimum     maximum
==================================  =========  ==========  ===========
``UNDELIVERED_MESSAGE_TTL``         30 days    1 hour      30 days
``DISAPPEARING_TIMER``              0 (off)    30 s        4 weeks
``MEDIA_TTL``                       30 days    1 hour      30 days
``AUDIT_LOG_TTL``                   365 days   1 day       730 days
==================================  =========  ==========  ===========

Variables: ``CONCLAVE_RETENTION_<FIELD>_SECONDS`` (default), ``…_MIN_SECONDS`` and
``…_MAX_SECONDS``. The message and media maxima match what the stores keep anyway (the
messaging streams' and media bucket's 30-day age limits), so a policy never promises
longer storage than the deployment provides. The disappearing timer's bounds must lie
within 30 s … 4 weeks (the contract); its default is 0 (off) or within the bounds.

Peers (``RunPurge`` and ``ExportMyData`` call ``AccountDataService`` on every server;
``DeleteAccount`` calls ``AuthService``): ``CONCLAVE_RETENTION_PEER_AUTH``, ``…_KEYS``,
``…_MESSAGING``, ``…_MEDIA``, each a gRPC target (``host:port`` or
``dns:///host:port``), defaulting to the dev ports on 127.0.0.1. Retention serves its
own share in-process. ``CONCLAVE_RETENTION_EXPORT_INTERVAL_SECONDS`` (default 3600)
is the time an account waits between two exports.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from conclave_kit.config import ConfigError, Env

DAY = 24 * 3600
DISAPPEARING_FLOOR = 30
DISAPPEARING_CEILING = 28 * DAY  # 4 weeks = 2,419,200 s


@dataclass(frozen=True)
class FieldBounds:
    """Default and bounds of one policy field, in whole seconds.

    Attributes:
        name: Proto field name (``undelivered_message_ttl`` …), used in error messages.
        default: Value when no account or conversation policy sets one.
        minimum: Smallest allowed value (for the disappearing timer: smallest non-zero).
        maximum: Largest allowed value.
        zero_means_off: True for the disappearing timer (0 is always allowed).
    """

    name: str
    default: int
    minimum: int
    maximum: int
    zero_means_off: bool = False


FIELDS = ("undelivered_message_ttl", "disappearing_message_timer", "media_ttl", "audit_log_ttl")
_ENV = {
    "undelivered_message_ttl": "UNDELIVERED_MESSAGE_TTL",
    "disappearing_message_timer": "DISAPPEARING_TIMER",
    "media_ttl": "MEDIA_TTL",
    "audit_log_ttl": "AUDIT_LOG_TTL",
}
DEFAULTS = {
    "undelivered_message_ttl": FieldBounds("undelivered_message_ttl", 30 * DAY, 3600, 30 * DAY),
    "disappearing_message_timer": FieldBounds(
        "disappearing_message_timer", 0, DISAPPEARING_FLOOR, DISAPPEARING_CEILING, True
    ),
    "media_ttl": FieldBounds("media_ttl", 30 * DAY, 3600, 30 * DAY),
    "audit_log_ttl": FieldBounds("audit_log_ttl", 365 * DAY, DAY, 730 * DAY),
}


PEERS = ("auth", "keys", "messaging", "media")  # retention itself is served in-process
DEFAULT_PEERS = {
    "auth": "127.0.0.1:50051",
    "keys": "127.0.0.1:50052",
    "messaging": "127.0.0.1:50053",
    "media": "127.0.0.1:50054",
}
_TARGET = re.compile(r"^(dns:///)?[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$")


@dataclass(frozen=True)
class RetentionConfig:
    """Retention-service settings.

    Attributes:
        bounds: Default, minimum and maximum per policy field (keys: :data:`FIELDS`).
        peers: gRPC target of each other server (keys: :data:`PEERS`).
        export_interval_seconds: One export per account per this many seconds.
        erasure_settle_seconds: How long after the last server reported an erasure
            complete the events stream is scrubbed: long enough for outbox relays (1 s
            polls) to publish events the servers wrote while erasing.
    """

    bounds: Mapping[str, FieldBounds] = field(default_factory=lambda: dict(DEFAULTS))
    peers: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_PEERS))
    export_interval_seconds: float = 3600.0
    erasure_settle_seconds: float = 2.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RetentionConfig:
        """Reads the retention settings.

        Raises:
            ConfigError: A setting is malformed or inconsistent (one line naming it).
        """
        env = Env(environ)
        bounds: dict[str, FieldBounds] = {}
        for name in FIELDS:
            base = DEFAULTS[name]
            prefix = f"CONCLAVE_RETENTION_{_ENV[name]}"
            default = int(env.seconds(f"{prefix}_SECONDS", base.default))
            minimum = int(env.seconds(f"{prefix}_MIN_SECONDS", base.minimum, minimum=1))
            maximum = int(env.seconds(f"{prefix}_MAX_SECONDS", base.maximum, minimum=1))
            if minimum > maximum:
                raise ConfigError(f"{prefix}_MIN_SECONDS: must not exceed {prefix}_MAX_SECONDS")
            if base.zero_means_off and (
                minimum < DISAPPEARING_FLOOR or maximum > DISAPPEARING_CEILING
            ):
                raise ConfigError(
                    f"{prefix}_MIN_SECONDS/_MAX_SECONDS: must lie within "
                    f"{DISAPPEARING_FLOOR}..{DISAPPEARING_CEILING} seconds"
                )
            if not (base.zero_means_off and default == 0) and not minimum <= default <= maximum:
                raise ConfigError(
                    f"{prefix}_SECONDS: must lie within {minimum}..{maximum} seconds"
                    + (" or be 0 (off)" if base.zero_means_off else "")
                )
            bounds[name] = FieldBounds(name, default, minimum, maximum, base.zero_means_off)
        peers: dict[str, str] = {}
        for peer in PEERS:
            variable = f"CONCLAVE_RETENTION_PEER_{peer.upper()}"
            target = env.text(variable, DEFAULT_PEERS[peer])
            if not _TARGET.match(target):
                raise ConfigError(
                    f"{variable}: expected host:port (or dns:///host:port), got {target!r}"
                )
            peers[peer] = target
        interval = env.seconds("CONCLAVE_RETENTION_EXPORT_INTERVAL_SECONDS", 3600.0, minimum=1.0)
        return cls(bounds=bounds, peers=peers, export_interval_seconds=interval)
