"""Retention metrics. Labels never carry account, group, conversation, run or erasure ids.

The purge-lag and purged-items series (``conclave_retention_purge_lag_seconds{data}``,
``conclave_retention_purged_items_total{data}``) belong to the kit
(``conclave_kit.account_data``), which every server runs for its own data.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SERVERS = ("auth", "keys", "messaging", "media", "retention")

POLICY_CHANGES = Counter(
    "conclave_retention_policy_changes_total",
    "SetAccountPolicy / SetConversationPolicy calls that changed a policy, by level.",
    ("level",),
)
MEMBERSHIP_EVENTS = Counter(
    "conclave_retention_membership_events_total",
    "conclave.events.group.membership events applied to the local membership table.",
)
POLICY_RESOLUTIONS = Counter(
    "conclave_retention_policy_resolutions_total",
    "conclave.internal.retention.policy requests answered, by outcome (ok, malformed).",
    ("outcome",),
)
PURGE_SERVER_RESULTS = Counter(
    "conclave_retention_run_purge_server_results_total",
    "RunPurge calls of one server's PurgeExpired, by server and outcome "
    "(completed, deadline_exceeded, unavailable, failed).",
    ("server", "outcome"),
)
RUN_PURGE_SECONDS = Histogram(
    "conclave_retention_run_purge_seconds",
    "Duration of RunPurge (all servers, until the last answered or the deadline passed).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
EXPORTS = Counter(
    "conclave_retention_exports_total",
    "ExportMyData calls, by outcome (delivered, rate_limited, unavailable).",
    ("outcome",),
)
EXPORT_BYTES = Histogram(
    "conclave_retention_export_bytes",
    "Size of delivered export documents.",
    buckets=(1e3, 1e4, 1e5, 1e6, 1e7, 1e8),
)
ERASURE_REQUESTS = Counter(
    "conclave_retention_erasure_requests_total",
    "DeleteAccount outcomes: started, repeated (pending erasure returned), "
    "confirmation_mismatch, bad_credentials.",
    ("outcome",),
)
ERASURE_REPORTS = Counter(
    "conclave_retention_erasure_reports_total",
    "conclave.events.erasure.completed events applied, by reporting server.",
    ("server",),
)
ERASURES_COMPLETED = Counter(
    "conclave_retention_erasures_completed_total",
    "Erasures that reached COMPLETE (every server reported, events stream scrubbed).",
)
ERASURE_PENDING_OLDEST = Gauge(
    "conclave_retention_erasure_oldest_pending_seconds",
    "Age of the oldest erasure not yet COMPLETE (0: none); alert when it stays high.",
)
SCRUB_SECONDS = Histogram(
    "conclave_retention_event_scrub_seconds",
    "Duration of one scan of CONCLAVE_EVENTS removing the events of erased accounts.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
SCRUBBED_EVENTS = Counter(
    "conclave_retention_scrubbed_events_total",
    "CONCLAVE_EVENTS messages deleted because they named an erased account.",
)


def init_series() -> None:
    """Creates every labelled series at 0."""
    for level in ("account", "conversation"):
        POLICY_CHANGES.labels(level)
    for outcome in ("ok", "malformed"):
        POLICY_RESOLUTIONS.labels(outcome)
    for server in SERVERS:
        ERASURE_REPORTS.labels(server)
        for outcome in ("completed", "deadline_exceeded", "unavailable", "failed"):
            PURGE_SERVER_RESULTS.labels(server, outcome)
    for outcome in ("delivered", "rate_limited", "unavailable"):
        EXPORTS.labels(outcome)
    for outcome in ("started", "repeated", "confirmation_mismatch", "bad_credentials"):
        ERASURE_REQUESTS.labels(outcome)
    ERASURE_PENDING_OLDEST.set(0)
