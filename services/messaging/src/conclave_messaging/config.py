"""Messaging-specific settings (on top of the kit's :class:`ServiceConfig`).

Every limit here is a deployment setting documented in ``messaging.proto``; the defaults
are the documented ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from conclave_kit.config import Env, ServiceConfig

KIB = 1024


@dataclass(frozen=True)
class MessagingConfig:
    """Settings of the messaging service.

    Attributes:
        service: Common settings (ports, database, NATS, token verification keys).
        max_members: Member cap of new groups (``CONCLAVE_MESSAGING_MAX_MEMBERS``).
        max_metadata_bytes: Largest encrypted group metadata.
        max_direct_ciphertext_bytes: Largest 1:1 ciphertext (per device).
        max_group_ciphertext_bytes: Largest group (sender-key) ciphertext.
        dedup_window_seconds: How long a message id is remembered for idempotent retries
            (JetStream duplicate window of the message streams).
        message_ttl_seconds: How long an undelivered message is kept (stream ``max_age``).
        check_devices: Match 1:1 envelopes against the key directory's published devices
            (``device_mismatch`` outcome). Only tests of fan-out alone turn it off.
        purge_concurrency: JetStream delete requests a purge keeps in flight.
        purge_secure_erase: Overwrite purged messages in the JetStream store instead of
            only dropping them (``no_erase`` false; slower, see docs/operations.md).
    """

    service: ServiceConfig
    max_members: int = 10_000
    max_metadata_bytes: int = 16 * KIB
    max_direct_ciphertext_bytes: int = 96 * KIB
    max_group_ciphertext_bytes: int = 256 * KIB
    dedup_window_seconds: float = 24 * 3600.0
    message_ttl_seconds: float = 30 * 24 * 3600.0
    check_devices: bool = True
    purge_concurrency: int = 64
    purge_secure_erase: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MessagingConfig:
        """Reads all messaging settings.

        Raises:
            ConfigError: A setting is missing or malformed (one line naming it).
        """
        env = Env(environ)
        service = ServiceConfig.from_env(
            "messaging", default_grpc_port=50053, default_metrics_port=9103, environ=environ
        )
        return cls(
            service=service,
            max_members=env.integer(
                "CONCLAVE_MESSAGING_MAX_MEMBERS", 10_000, minimum=2, maximum=100_000
            ),
            dedup_window_seconds=env.seconds(
                "CONCLAVE_MESSAGING_DEDUP_WINDOW_SECONDS", 24 * 3600.0, minimum=60
            ),
            message_ttl_seconds=env.seconds(
                "CONCLAVE_MESSAGING_MESSAGE_TTL_SECONDS", 30 * 24 * 3600.0, minimum=3600
            ),
            check_devices=env.flag("CONCLAVE_MESSAGING_CHECK_DEVICES", True),
            purge_concurrency=env.integer(
                "CONCLAVE_MESSAGING_PURGE_CONCURRENCY", 64, minimum=1, maximum=1024
            ),
            purge_secure_erase=env.flag("CONCLAVE_MESSAGING_PURGE_SECURE_ERASE", False),
        )
