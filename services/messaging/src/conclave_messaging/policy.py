"""Retention policies as messaging applies them: per-message expiry, cached per replica.

Retention owns the policies; messaging asks it, for every accepted message, which
undelivered-message TTL and disappearing timer apply to (sender account, conversation)
over the internal request/reply subject ``conclave.internal.retention.policy``
(``ResolvePolicyRequest`` in, serialized ``EffectivePolicy`` out).

* Answers are cached per (account, conversation) for up to :data:`CACHE_SECONDS`, so a
  busy conversation costs one request a minute, not one per message.
* Every replica follows ``conclave.events.retention.policy_changed`` (an ordered consumer,
  deliver-new, like the kit's revocation list) and drops the entries a change affects, so
  new values apply to the next message instead of up to a minute later.
* "No responders" means retention is not deployed: the messaging defaults apply (stream
  TTL, no disappearing timer), with a warning and ``conclave_messaging_policy_fallbacks``.
  Any other failure uses a cached value if there is one (even an old one), else the send
  fails UNAVAILABLE: a message must never be stored with a longer life than its policy
  allows just because retention was slow.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import nats.errors
from conclave.common.v1 import types_pb2
from conclave.events.v1 import events_pb2
from conclave.retention.v1 import retention_pb2 as R
from conclave_kit.errors import Unavailable
from conclave_kit.logs import get_logger
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

from conclave_messaging.metrics import POLICY_FALLBACKS, POLICY_REQUESTS

RESOLVE_SUBJECT = "conclave.internal.retention.policy"
POLICY_CHANGED = "conclave.events.retention.policy_changed"
CACHE_SECONDS = 60.0
# Entries a replica keeps at most: memory follows active conversations, not all of them.
MAX_CACHED = 100_000
REQUEST_TIMEOUT_SECONDS = 0.5  # a send waits at most this long for retention
FALLBACK_LOG_SECONDS = 60.0  # "retention not deployed" is logged at most once a minute

_log = get_logger("conclave.messaging.policy")

# Called with every policy_changed event after the cache dropped what it affects.
ChangeListener = Callable[[events_pb2.RetentionPolicyChanged], Awaitable[None]]


@dataclass(frozen=True)
class Policy:
    """What messaging applies to a message: both values in seconds (timer 0 = off)."""

    ttl_seconds: float
    disappearing_seconds: float

    def expiry(self, now: datetime, max_age_seconds: float) -> datetime:
        """``now`` plus the timer when set, else plus the TTL, capped at ``max_age``.

        The cap: JetStream drops the message at the stream's ``max_age`` whatever the
        index says, so a later expiry would be a promise the server does not keep.
        """
        life = self.disappearing_seconds if self.disappearing_seconds > 0 else self.ttl_seconds
        return now + timedelta(seconds=min(life, max_age_seconds))


def conversation_key(ref: types_pb2.ConversationRef) -> str:
    """Cache key part of a conversation as its account sees it."""
    which = ref.WhichOneof("conversation")
    if which == "group_id":
        return f"g:{ref.group_id}"
    if which == "peer_account_id":
        return f"p:{ref.peer_account_id}"
    return ""


class PolicyResolver:
    """Resolves and caches effective policies for sends (see the module docstring).

    Args:
        nats: NATS connection (request/reply to retention, policy_changed consumer).
        default_ttl_seconds: The messaging default TTL (stream ``max_age``), used when
            retention is not deployed.
        timeout_seconds: How long a send waits for retention's answer.
        monotonic: Monotonic seconds for cache ages (injectable for tests).
    """

    def __init__(
        self,
        nats: NatsClient,
        default_ttl_seconds: float,
        *,
        timeout_seconds: float = REQUEST_TIMEOUT_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nats = nats
        self._default = Policy(default_ttl_seconds, 0.0)
        self._timeout = timeout_seconds
        self._monotonic = monotonic
        self._cache: dict[tuple[str, str], tuple[Policy, float]] = {}
        # Bumped by every invalidation: an answer requested before it may predate the
        # change, so it is used for that send but not cached.
        self._generation = 0
        self._last_fallback_log = -FALLBACK_LOG_SECONDS
        self._listeners: list[ChangeListener] = []
        self._sub: Subscription | None = None

    def add_change_listener(self, listener: ChangeListener) -> None:
        """Calls ``listener`` for every policy change (the hub pushes timer changes)."""
        self._listeners.append(listener)

    async def start(self) -> None:
        """Follows ``conclave.events.retention.policy_changed`` from now on."""

        async def on_event(msg: Msg) -> None:
            try:
                event = events_pb2.RetentionPolicyChanged.FromString(msg.data)
            except Exception:  # a malformed event must not stop the subscription
                _log.warning("policy_event_malformed")
                return
            self.invalidate(event)
            for listener in self._listeners:
                try:
                    await listener(event)
                except Exception as err:  # the cache is right; only a live notice failed
                    _log.warning("policy_change_listener_failed", error_type=type(err).__name__)

        self._sub = await self._nats.jetstream().subscribe(
            POLICY_CHANGED,
            cb=on_event,
            ordered_consumer=True,
            config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.NEW),
        )

    async def stop(self) -> None:
        """Stops following changes."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    def invalidate(self, event: events_pb2.RetentionPolicyChanged) -> None:
        """Drops the cached entries a change can affect."""
        self._generation += 1
        account = event.account_id
        which = event.conversation.WhichOneof("conversation")
        if which is None:  # account level: every conversation of that account
            doomed = [k for k in self._cache if k[0] == account]
        elif which == "group_id":  # a group's policy applies to every member's sends
            group = conversation_key(event.conversation)
            doomed = [k for k in self._cache if k[1] == group]
        else:  # a direct conversation's policy is shared by both parties
            peer = event.conversation.peer_account_id
            doomed = [(account, f"p:{peer}"), (peer, f"p:{account}")]
        key: tuple[str, str]
        for key in doomed:
            self._cache.pop(key, None)

    async def resolve(self, account_id: str, conversation: types_pb2.ConversationRef) -> Policy:
        """The policy for a message ``account_id`` sends in ``conversation``.

        Raises:
            Unavailable: Retention failed to answer and nothing is cached.
        """
        key = (account_id, conversation_key(conversation))
        cached = self._cache.get(key)
        now = self._monotonic()
        if cached is not None and now - cached[1] < CACHE_SECONDS:
            return cached[0]
        generation = self._generation
        request = R.ResolvePolicyRequest(account_id=account_id, conversation=conversation)
        try:
            reply = await self._nats.request(
                RESOLVE_SUBJECT, request.SerializeToString(), timeout=self._timeout
            )
            policy = _parse(reply)
        except nats.errors.NoRespondersError:
            POLICY_REQUESTS.labels("no_responders").inc()
            return self._fallback()
        except Exception as err:
            POLICY_REQUESTS.labels("error").inc()
            if cached is not None:  # stale beats unavailable: the value was right recently
                _log.warning("policy_stale_used", error_type=type(err).__name__)
                return cached[0]
            raise Unavailable("retention policy unavailable; retry shortly") from None
        POLICY_REQUESTS.labels("ok").inc()
        if generation == self._generation:
            if len(self._cache) >= MAX_CACHED:
                self._evict(now)
            self._cache[key] = (policy, now)
        return policy

    def _evict(self, now: float) -> None:
        """Drops entries past their age; if none were, the oldest half (insertion order).

        Expired entries are only kept as a fallback for a failing retention server, so
        dropping them costs at most an UNAVAILABLE during an outage, never a wrong expiry.
        """
        fresh = {k: v for k, v in self._cache.items() if now - v[1] < CACHE_SECONDS}
        if len(fresh) >= MAX_CACHED:
            fresh = dict(list(fresh.items())[len(fresh) // 2 :])
        self._cache = fresh

    def _fallback(self) -> Policy:
        POLICY_FALLBACKS.inc()
        now = self._monotonic()
        if now - self._last_fallback_log >= FALLBACK_LOG_SECONDS:
            self._last_fallback_log = now
            _log.warning(
                "retention_not_deployed",
                detail="no responder on conclave.internal.retention.policy; "
                "messaging defaults apply (stream TTL, no disappearing timer)",
            )
        return self._default


def _parse(reply: Msg) -> Policy:
    """The policy in a reply; raises on an error reply or a malformed one."""
    headers = reply.headers or {}
    if any(h.lower() in ("nats-service-error", "status", "error") for h in headers):
        raise ValueError("retention answered with an error")
    effective = R.EffectivePolicy.FromString(reply.data)
    policy = effective.policy
    if not policy.HasField("undelivered_message_ttl"):
        raise ValueError("reply without undelivered_message_ttl")
    ttl = policy.undelivered_message_ttl.ToTimedelta().total_seconds()
    timer = policy.disappearing_message_timer.ToTimedelta().total_seconds()
    if ttl <= 0 or timer < 0:
        raise ValueError("reply with an impossible policy")
    return Policy(ttl, timer)
