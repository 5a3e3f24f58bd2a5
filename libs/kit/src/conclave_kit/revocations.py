"""Session revocations, known to every service within a second.

Access tokens are verified offline, so a revoked session's token would stay valid until it
expires (minutes). Auth publishes ``conclave.events.session.revoked`` (through its outbox);
every service keeps a deny-list fed by a JetStream subscription and rejects the session's
tokens until the last one has expired. On start-up the subscription replays the events of
the last token lifetime, so a restarted service forgets nothing that still matters.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from conclave.events.v1 import events_pb2
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from conclave_kit.logs import get_logger
from conclave_kit.tokens import Claims

SUBJECT = "conclave.events.session.revoked"
_log = get_logger("conclave.revocations")

Listener = Callable[[events_pb2.SessionRevoked], None]


class RevocationList:
    """Deny-list of revoked sessions with expiry.

    Args:
        replay_seconds: How far back to replay events at start (the access-token lifetime
            plus clock leeway).
        clock: Unix time source (injectable for tests).
    """

    def __init__(
        self, replay_seconds: float = 330.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._revoked: dict[str, float] = {}
        self._replay = replay_seconds
        self._clock = clock
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        """Calls ``listener`` for every revocation (e.g. to close live streams)."""
        self._listeners.append(listener)

    def revoke(self, session_id: str, until: float) -> None:
        """Marks ``session_id`` revoked until Unix time ``until``."""
        self._revoked[session_id] = max(until, self._revoked.get(session_id, 0.0))

    def is_revoked(self, claims: Claims) -> bool:
        """True when the token's session was revoked (the AuthGate hook)."""
        until = self._revoked.get(claims.session_id)
        if until is None:
            return False
        if until < self._clock():
            del self._revoked[claims.session_id]
            return False
        return True

    def handle(self, event: events_pb2.SessionRevoked) -> None:
        """Applies one event (idempotent: the same event twice changes nothing)."""
        expiry = (
            event.access_token_expire_time.ToSeconds()
            if event.HasField("access_token_expire_time")
            else self._clock() + self._replay
        )
        # Keep the entry a little past the last token's expiry to cover clock skew.
        self.revoke(event.session_id, expiry + 30)
        for listener in self._listeners:
            listener(event)

    async def subscribe(self, js: JetStreamContext) -> None:
        """Replays recent revocations, then follows new ones (ordered push consumer)."""
        start = datetime.now(UTC) - timedelta(seconds=self._replay)

        async def on_message(msg: Msg) -> None:
            try:
                event = events_pb2.SessionRevoked.FromString(msg.data)
            except Exception:  # a malformed event must not stop the subscription
                _log.warning("revocation_event_malformed")
                return
            self.handle(event)

        await js.subscribe(
            SUBJECT,
            cb=on_message,
            ordered_consumer=True,
            config=api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_TIME,
                opt_start_time=start,
            ),
        )
        await asyncio.sleep(0)
