"""Auth follows account retention policies for the one value it enforces: the audit TTL.

Retention publishes ``conclave.events.retention.policy_changed`` after every
SetAccountPolicy (and SetConversationPolicy, which has no audit value: ignored). Auth keeps
the account's ``audit_log_ttl`` in ``accounts.audit_log_ttl_seconds`` (NULL: deployment
default) and its purge deletes audit entries older than that. One durable consumer shared
by the replicas (``auth-policy-changed``); applying an event twice is harmless, and events
of one account arrive in publication order (retention's outbox), so the last one wins.
"""

from __future__ import annotations

import uuid

from conclave.events.v1 import events_pb2
from conclave_kit.logs import get_logger
from conclave_kit.nats_bus import subscribe_events
from conclave_kit.runtime import Resources
from nats.aio.msg import Msg

POLICY_CHANGED = "conclave.events.retention.policy_changed"
CONSUMER = "auth-policy-changed"
_log = get_logger("conclave.auth.policies")


async def apply_policy_change(
    resources: Resources, event: events_pb2.RetentionPolicyChanged
) -> bool:
    """Stores the account's audit TTL from an account-level change; True if one applied."""
    if event.HasField("conversation"):
        return False
    ttl = None
    if event.policy.HasField("audit_log_ttl"):
        ttl = int(event.policy.audit_log_ttl.ToTimedelta().total_seconds()) or None
    result = await resources.pool.execute(
        "UPDATE accounts SET audit_log_ttl_seconds = $2 WHERE account_id = $1",
        uuid.UUID(event.account_id),
        ttl,
    )
    return result != "UPDATE 0"


async def consume_policy_changes(resources: Resources) -> None:
    """Start-up step: subscribes to retention policy changes."""

    async def handle(msg: Msg) -> None:
        try:
            event = events_pb2.RetentionPolicyChanged.FromString(msg.data)
            uuid.UUID(event.account_id)
        except Exception:  # malformed: retrying cannot help
            _log.warning("policy_changed_malformed")
            await msg.term()
            return
        await apply_policy_change(resources, event)
        await msg.ack()

    await subscribe_events(
        resources.js, POLICY_CHANGED, CONSUMER, handle, ack_wait=30, max_deliver=20
    )
