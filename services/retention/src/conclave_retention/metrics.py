"""Retention metrics. Labels never carry account, group or conversation ids."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

# The kinds of data purge jobs will report on (docs/deploy.md); each series exists from
# start-up at 0 so the purge-lag alert has something to evaluate before purges exist.
PURGE_DATA_KINDS = ("messages", "media", "audit_log", "sessions", "prekeys")

PURGE_LAG = Gauge(
    "conclave_retention_purge_lag_seconds",
    "Age of the oldest expired item still stored, by kind of data (0: nothing overdue).",
    ("data",),
)
POLICY_CHANGES = Counter(
    "conclave_retention_policy_changes_total",
    "SetAccountPolicy / SetConversationPolicy calls that changed a policy, by level.",
    ("level",),
)
MEMBERSHIP_EVENTS = Counter(
    "conclave_retention_membership_events_total",
    "conclave.events.group.membership events applied to the local membership table.",
)


def init_series() -> None:
    """Creates every labelled series at 0."""
    for kind in PURGE_DATA_KINDS:
        PURGE_LAG.labels(kind).set(0)
    for level in ("account", "conversation"):
        POLICY_CHANGES.labels(level)
