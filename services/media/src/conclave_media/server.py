"""Wires the media service: servicer, manager, chunk storage, schema and ports."""

from __future__ import annotations

import grpc
from conclave.media.v1 import media_pb2, media_pb2_grpc
from conclave_kit.account_data import AccountDataServicer
from conclave_kit.runtime import Resources, ServiceSpec

from conclave_media.account_data import MediaAccountData
from conclave_media.config import MediaConfig
from conclave_media.manager import Clock, MediaManager
from conclave_media.policy import media_ttl_resolver
from conclave_media.service import MediaServiceServicer
from conclave_media.storage import JetStreamObjectStorage

DESCRIPTOR = media_pb2.DESCRIPTOR.services_by_name["MediaService"]
GRPC_SERVICE = DESCRIPTOR.full_name
# Margin on top of the longest a chunk may legitimately live, for the bucket's age limit.
_BACKSTOP_MARGIN_SECONDS = 24 * 3600.0


def build_spec(
    config: MediaConfig,
    clock: Clock | None = None,
    servicer: MediaServiceServicer | None = None,
) -> ServiceSpec:
    """The media service for the kit's runtime.

    Args:
        config: Media settings (limits, quota, TTLs).
        clock: Current time for expiry decisions; real time when None (tests move it).
        servicer: The servicer to wire; its ``manager`` is set once connected (tests and
            the future purge job reach :meth:`MediaManager.purge_expired` through it).
    """
    servicer = servicer or MediaServiceServicer()
    account_data = AccountDataServicer()

    def register(server: grpc.aio.Server, resources: Resources) -> None:
        media_pb2_grpc.add_MediaServiceServicer_to_server(servicer, server)

    async def connect(resources: Resources) -> None:
        # The bucket's age limit backs up the purge job: nothing can outlive its upload
        # window plus its TTL, so the limit never removes a chunk that is still served.
        storage = await JetStreamObjectStorage.open(
            resources.js,
            replicas=resources.config.stream_replicas,
            max_age_seconds=config.upload_ttl_seconds
            + config.blob_ttl_seconds
            + _BACKSTOP_MARGIN_SECONDS,
        )
        extra = {} if clock is None else {"clock": clock}
        servicer.manager = manager = MediaManager(
            config,
            resources.pool,
            storage,
            media_ttl=media_ttl_resolver(resources.nats),
            **extra,
        )
        account_data.provider = MediaAccountData(manager, resources.pool)

    return ServiceSpec(
        name="media",
        grpc_services=(GRPC_SERVICE,),
        migrations_package="conclave_media.migrations",
        register=register,
        default_grpc_port=50054,
        default_metrics_port=9104,
        extra_setup=(connect,),
        account_data=account_data,
    )
