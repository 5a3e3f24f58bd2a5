"""Messaging metrics for scale testing (module-level, default registry).

Labels never carry account, device, session or group ids: cardinality stays bounded and
the metrics endpoint leaks no routing metadata.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES_SENT = Counter(
    "conclave_messaging_messages_sent_total",
    "Messages accepted for storage (retried duplicates excluded), by kind.",
    ("kind",),
)
FANOUT_RECIPIENTS = Histogram(
    "conclave_messaging_fanout_recipients",
    "Recipients per accepted message: addressed devices for 1:1, member accounts for groups.",
    ("kind",),
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
SEND_TO_PUSH_SECONDS = Histogram(
    "conclave_messaging_send_to_push_seconds",
    "From acceptance of a message to its push on a live device stream.",
    # Bounded size classes (docs/deploy.md, metrics contract); 1 = a 1:1 message.
    ("group_size",),
    # Targets (issue #6): 100-member p99 <= 100 ms, 1,000-member p99 <= 1 s.
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DELIVERIES = Counter("conclave_messaging_deliveries_total", "Messages pushed to device streams.")
STREAM_BACKLOG = Gauge(
    "conclave_messaging_stream_backlog",
    "Items received from a JetStream stream and not yet pushed to their device streams.",
    ("stream",),
)
CONNECTED_DEVICES = Gauge(
    "conclave_messaging_connected_devices", "Device streams open on this process."
)
REDELIVERIES = Counter(
    "conclave_messaging_redeliveries_total",
    "Items delivered again because an earlier delivery was not acknowledged.",
)
BACKLOG_ITEMS = Histogram(
    "conclave_messaging_catch_up_items",
    "Backlog items sent when a device stream opens (before catch_up_complete).",
    buckets=(0, 1, 10, 100, 1000, 10000),
)
LOCAL_FEEDS = Gauge(
    "conclave_messaging_feeds",
    "JetStream subscriptions this process holds for fan-out (one per live group, one per "
    "connected device mailbox).",
)

POLICY_REQUESTS = Counter(
    "conclave_messaging_policy_requests_total",
    "Retention policy look-ups (cache misses) by outcome: ok, no_responders, error.",
    ("outcome",),
)
POLICY_FALLBACKS = Counter(
    "conclave_messaging_policy_fallbacks_total",
    "Messages given the messaging defaults because retention is not deployed (no responders).",
)
EXPIRED_SKIPPED = Counter(
    "conclave_messaging_expired_skipped_total",
    "Stored items not delivered because their expire_time passed (the purge deletes them).",
)


def size_class(members: int) -> str:
    """The ``group_size`` label value for a group of ``members`` (1 for 1:1)."""
    if members <= 1:
        return "1"
    if members <= 10:
        return "2-10"
    if members <= 100:
        return "11-100"
    if members <= 1000:
        return "101-1000"
    return "1001+"
