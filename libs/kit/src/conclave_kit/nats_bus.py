"""NATS / JetStream connection with reconnect, and idempotent stream and consumer set-up.

Several replicas of a service start at once and each declares the streams it needs, so
set-up must be idempotent: creating an existing stream with the same configuration is a
no-op, and a changed configuration (e.g. more replicas in production) is applied as an
update rather than failing start-up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import fields

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError

from conclave_kit import metrics
from conclave_kit.errors import Unavailable
from conclave_kit.logs import get_logger

_log = get_logger("conclave.nats")
_STREAM_NAME_IN_USE = 10058
EVENTS_STREAM = "CONCLAVE_EVENTS"
EVENTS_SUBJECTS = ("conclave.events.>",)


async def connect_nats(urls: Sequence[str], *, name: str, timeout_seconds: float) -> NatsClient:
    """Connects to NATS, retrying until the deadline; afterwards reconnects forever.

    Args:
        urls: Server URLs (a cluster's seed list).
        name: Client name shown in NATS monitoring (the service name).
        timeout_seconds: Give up the *first* connection after this long.

    Raises:
        Unavailable: NATS was not reachable before the deadline.
    """
    holder: list[NatsClient] = []

    async def on_disconnected() -> None:
        metrics.DEPENDENCY_UP.labels("nats").set(0)
        # Draining at shutdown disconnects on purpose; only an unplanned loss is a warning.
        planned = bool(holder) and (holder[0].is_draining or holder[0].is_closed)
        (_log.info if planned else _log.warning)("nats_disconnected", planned=planned)

    async def on_reconnected() -> None:
        metrics.DEPENDENCY_UP.labels("nats").set(1)
        _log.info("nats_reconnected")

    async def on_error(err: Exception) -> None:
        _log.warning("nats_error", error_type=type(err).__name__, error=str(err))

    deadline = time.monotonic() + timeout_seconds
    delay = 0.1
    while True:
        try:
            # nats-py retries the *initial* connect forever when reconnects are allowed, so
            # the start-up deadline is enforced here.
            client = await asyncio.wait_for(
                nats.connect(
                    servers=list(urls),
                    name=f"conclave-{name}",
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,  # a running service never gives up on NATS
                    reconnect_time_wait=0.5,
                    disconnected_cb=on_disconnected,
                    reconnected_cb=on_reconnected,
                    error_cb=on_error,
                ),
                timeout=max(0.1, deadline - time.monotonic()),
            )
            holder.append(client)
            metrics.DEPENDENCY_UP.labels("nats").set(1)
            _log.info("nats_connected")
            return client
        except (TimeoutError, OSError, nats.errors.Error) as err:
            if time.monotonic() + delay > deadline:
                raise Unavailable(f"NATS unreachable: {type(err).__name__}") from err
            _log.warning("nats_retry", error_type=type(err).__name__, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


def events_stream_config(replicas: int) -> api.StreamConfig:
    """The shared stream for domain events (``conclave.events.>``).

    Every service declares it identically. File storage, 7 days of history so a consumer
    that was down can catch up, and a 2-minute duplicate window so outbox re-publication
    with the same ``Nats-Msg-Id`` is stored once.
    """
    return api.StreamConfig(
        name=EVENTS_STREAM,
        subjects=list(EVENTS_SUBJECTS),
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        max_age=7 * 24 * 3600,
        duplicate_window=120,
        num_replicas=replicas,
    )


def _differs(wanted: api.StreamConfig, current: api.StreamConfig) -> bool:
    for item in fields(api.StreamConfig):
        value = getattr(wanted, item.name)
        if value is not None and value != getattr(current, item.name):
            return True
    return False


async def ensure_stream(js: JetStreamContext, config: api.StreamConfig) -> api.StreamInfo:
    """Creates the stream, or updates it if its configuration changed. Idempotent.

    Raises:
        nats.js.errors.Error: The server rejected the configuration.
    """
    assert config.name is not None
    for _attempt in range(3):
        try:
            info = await js.stream_info(config.name)
        except NotFoundError:
            try:
                return await js.add_stream(config)
            except BadRequestError as err:
                if err.err_code != _STREAM_NAME_IN_USE:
                    raise
                continue  # another replica created it first: re-read and compare
        if _differs(config, info.config):
            _log.info("stream_updated", stream=config.name)
            return await js.update_stream(config)
        return info
    raise Unavailable(f"could not settle configuration of stream {config.name}")


async def ensure_consumer(
    js: JetStreamContext, stream: str, config: api.ConsumerConfig
) -> api.ConsumerInfo:
    """Creates or updates a durable consumer (the server's create-or-update is idempotent).

    Raises:
        nats.js.errors.Error: The server rejected the configuration.
    """
    return await js.add_consumer(stream, config)


async def subscribe_events(
    js: JetStreamContext,
    subject: str,
    durable: str,
    cb: Callable[[Msg], Awaitable[None]],
    *,
    ack_wait: float,
    max_deliver: int,
) -> None:
    """Consumes ``CONCLAVE_EVENTS`` ``subject`` through a durable consumer of the service.

    The consumer is shared by the service's replicas (deliver group ``durable``), so each
    event is handled once per deployment and none is lost while the service is down. The
    handler acknowledges: ``ack`` when done, ``term`` for a malformed event, nothing (or
    ``nak``) to have it redelivered after ``ack_wait`` seconds, at most ``max_deliver``
    times.
    """
    await js.subscribe(
        subject,
        queue=durable,
        durable=durable,
        cb=cb,
        manual_ack=True,
        stream=EVENTS_STREAM,
        config=api.ConsumerConfig(ack_wait=ack_wait, max_deliver=max_deliver),
    )
