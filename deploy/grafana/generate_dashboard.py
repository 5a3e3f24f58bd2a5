"""Generates the Conclave Grafana dashboard (dashboards as code, grafana-foundation-sdk).

    .venv/bin/python deploy/grafana/generate_dashboard.py          # rewrite the JSON
    .venv/bin/python deploy/grafana/generate_dashboard.py --check  # exit 1 if it is stale

The output, deploy/k8s/base/monitoring/dashboards/conclave.json, is committed and shipped as
a ConfigMap that Grafana's dashboard sidecar loads (label grafana_dashboard=1). Edit this
file, never the JSON; tests/deploy/test_observability.py fails when the two differ.
Metric names: docs/deploy.md ("Metrics contract").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders.common import VizLegendOptions
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DatasourceVariable,
    Row,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import DataSourceRef, GridPos

OUTPUT = Path(__file__).resolve().parents[1] / "k8s/base/monitoring/dashboards/conclave.json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
SERVICES = 'job=~"conclave-(auth|keys|messaging|media|retention)"'
SERVER_ERRORS = 'grpc_code=~"INTERNAL|UNAVAILABLE|UNKNOWN|DATA_LOSS|DEADLINE_EXCEEDED"'
RATE = "$__rate_interval"
ALL_RPCS = f"sum by (job) (rate(grpc_server_handled_total{{{SERVICES}}}[{RATE}]))"


def _query(expr: str, legend: str, ref: str = "A") -> Dataquery:
    return Dataquery().expr(expr).legend_format(legend).ref_id(ref).range().datasource(DATASOURCE)


def _series(
    title: str,
    unit: str,
    queries: list[tuple[str, str]],
    pos: tuple[int, int, int, int],
    description: str,
) -> Timeseries:
    x, y, w, h = pos
    panel = (
        Timeseries()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .grid_pos(GridPos(x=x, y=y, w=w, h=h))
        .line_width(1)
        .fill_opacity(10)
        .legend(
            VizLegendOptions()
            .display_mode(LegendDisplayMode.TABLE)
            .placement(LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
    )
    for index, (expr, legend) in enumerate(queries):
        panel = panel.with_target(_query(expr, legend, chr(ord("A") + index)))
    return panel


def _stat(title: str, unit: str, expr: str, pos: tuple[int, int, int, int], desc: str) -> Stat:
    x, y, w, h = pos
    return (
        Stat()
        .title(title)
        .description(desc)
        .unit(unit)
        .datasource(DATASOURCE)
        .grid_pos(GridPos(x=x, y=y, w=w, h=h))
        .with_target(_query(expr, "{{job}}"))
    )


def build() -> Dashboard:
    """The dashboard: messaging, RPCs per service, security, retention, resources."""
    return (
        Dashboard("Conclave")
        .uid("conclave-overview")
        .description("Conclave: fan-out, RPCs, auth, retention (generated: deploy/grafana)")
        .tags(["conclave", "generated"])
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("utc")
        .with_variable(DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        # ---- messaging ------------------------------------------------------------------
        .with_row(Row("Messaging").grid_pos(GridPos(x=0, y=0, w=24, h=1)))
        .with_panel(
            _series(
                "Send → push latency by group size (p50 / p99)",
                "s",
                [
                    (
                        "histogram_quantile(0.99, sum by (group_size, le) "
                        f"(rate(conclave_messaging_send_to_push_seconds_bucket[{RATE}])))",
                        "p99 {{group_size}}",
                    ),
                    (
                        "histogram_quantile(0.5, sum by (group_size, le) "
                        f"(rate(conclave_messaging_send_to_push_seconds_bucket[{RATE}])))",
                        "p50 {{group_size}}",
                    ),
                ],
                (0, 1, 12, 8),
                "From SendMessage accepted to the push on a recipient's Subscribe stream. "
                "Target p99 250 ms for groups up to 1,000 (alert ConclaveGroupFanoutSlow).",
            )
        )
        .with_panel(
            _series(
                "Deliveries / s",
                "ops",
                [(f"sum(rate(conclave_messaging_deliveries_total[{RATE}]))", "deliveries/s")],
                (12, 1, 6, 8),
                "Messages pushed to devices per second, all replicas.",
            )
        )
        .with_panel(
            _series(
                "Connected devices",
                "short",
                [("sum(conclave_messaging_connected_devices)", "devices")],
                (18, 1, 6, 8),
                "Open Subscribe streams, all replicas.",
            )
        )
        .with_panel(
            _series(
                "JetStream backlog by stream",
                "short",
                [("max by (stream) (conclave_messaging_stream_backlog)", "{{stream}}")],
                (0, 9, 12, 8),
                "Undelivered messages per stream (alert ConclaveStreamBacklog above 10,000).",
            )
        )
        .with_panel(
            _series(
                "NATS slow consumers",
                "short",
                [
                    (
                        "sum by (server_id) (increase("
                        'gnatsd_varz_slow_consumers{job="nats-metrics"}[5m]))',
                        "{{server_id}}",
                    )
                ],
                (12, 9, 12, 8),
                "Clients nats-server disconnected for falling 64 MB behind.",
            )
        )
        # ---- RPCs -----------------------------------------------------------------------
        .with_row(Row("RPCs per service").grid_pos(GridPos(x=0, y=17, w=24, h=1)))
        .with_panel(
            _series(
                "RPC rate",
                "reqps",
                [
                    (
                        f"sum by (job) (rate(grpc_server_handled_total{{{SERVICES}}}[{RATE}]))",
                        "{{job}}",
                    )
                ],
                (0, 18, 8, 8),
                "Completed RPCs per second by service.",
            )
        )
        .with_panel(
            _series(
                "Server error ratio",
                "percentunit",
                [
                    (
                        # "or 0 * all": a service without errors shows 0, not "No data".
                        "(sum by (job) (rate(grpc_server_handled_total"
                        f"{{{SERVICES},{SERVER_ERRORS}}}[{RATE}])) or 0 * {ALL_RPCS})"
                        f" / {ALL_RPCS}",
                        "{{job}}",
                    )
                ],
                (8, 18, 8, 8),
                "INTERNAL, UNAVAILABLE, UNKNOWN, DATA_LOSS, DEADLINE_EXCEEDED over all RPCs "
                "(alert ConclaveHighErrorRatio above 5 %).",
            )
        )
        .with_panel(
            _series(
                "Unary latency p99",
                "s",
                [
                    (
                        "histogram_quantile(0.99, sum by (job, le) (rate("
                        f'grpc_server_handling_seconds_bucket{{{SERVICES},grpc_type="unary"}}[{RATE}])))',
                        "{{job}}",
                    )
                ],
                (16, 18, 8, 8),
                "Includes Argon2 password RPCs on auth.",
            )
        )
        .with_panel(
            _stat(
                "Ready replicas",
                "short",
                f"sum by (job) (up{{{SERVICES}}})",
                (0, 26, 12, 4),
                "Scrapable replicas per service (alert ConclaveServiceDown at 0).",
            )
        )
        .with_panel(
            _stat(
                "Dependencies up",
                "short",
                f"min by (job) (conclave_dependency_up{{{SERVICES}}})",
                (12, 26, 12, 4),
                "1 when every replica is connected to PostgreSQL and NATS.",
            )
        )
        # ---- security -------------------------------------------------------------------
        .with_row(Row("Auth").grid_pos(GridPos(x=0, y=30, w=24, h=1)))
        .with_panel(
            _series(
                "Authentication failures",
                "reqps",
                [
                    (
                        'sum by (job) (rate(grpc_server_handled_total{job=~"conclave-.+",'
                        f'grpc_code="UNAUTHENTICATED"}}[{RATE}]))',
                        "UNAUTHENTICATED {{job}}",
                    ),
                    (f"sum(rate(conclave_auth_totp_failures_total[{RATE}]))", "TOTP failures"),
                ],
                (0, 31, 12, 8),
                "Rejected tokens and credentials per service; failed TOTP checks.",
            )
        )
        .with_panel(
            _series(
                "Refresh-token reuse",
                "short",
                [
                    (
                        "sum(increase(conclave_auth_refresh_token_reuse_total[10m]))",
                        "reuses / 10 min",
                    )
                ],
                (12, 31, 12, 8),
                "Replayed refresh tokens (each revoked a session family).",
            )
        )
        # ---- retention ------------------------------------------------------------------
        .with_row(Row("Retention").grid_pos(GridPos(x=0, y=39, w=24, h=1)))
        .with_panel(
            _series(
                "Purge lag",
                "s",
                [("max by (data) (conclave_retention_purge_lag_seconds)", "{{data}}")],
                (0, 40, 8, 8),
                "How overdue the oldest expired item still stored is (alert above 1 h).",
            )
        )
        .with_panel(
            _series(
                "Items purged",
                "ops",
                [
                    (
                        f"sum by (data) (rate(conclave_retention_purged_items_total[{RATE}]))",
                        "{{data}}",
                    )
                ],
                (8, 40, 8, 8),
                "Expired items deleted per second by scheduled and on-demand purges.",
            )
        )
        .with_panel(
            _series(
                "Purge runs and erasures",
                "ops",
                [
                    (
                        "sum by (trigger, outcome) "
                        f"(rate(conclave_retention_purge_runs_total[{RATE}]))",
                        "purge {{trigger}} {{outcome}}",
                    ),
                    (
                        f"sum by (outcome) (rate(conclave_retention_erasures_total[{RATE}]))",
                        "erasure {{outcome}}",
                    ),
                ],
                (16, 40, 8, 8),
                "Purge runs of every service, and account.deleted events handled.",
            )
        )
        # ---- resources ------------------------------------------------------------------
        .with_row(Row("Resources").grid_pos(GridPos(x=0, y=48, w=24, h=1)))
        .with_panel(
            _series(
                "CPU by service",
                "percentunit",
                [
                    (
                        f"sum by (job) (rate(process_cpu_seconds_total{{{SERVICES}}}[{RATE}]))",
                        "{{job}}",
                    )
                ],
                (0, 49, 12, 8),
                "Cores used; one replica cannot use more than one (one event loop).",
            )
        )
        .with_panel(
            _series(
                "Memory by service",
                "bytes",
                [
                    (
                        f"sum by (job) (process_resident_memory_bytes{{{SERVICES}}})",
                        "{{job}}",
                    )
                ],
                (12, 49, 12, 8),
                "Resident memory, all replicas.",
            )
        )
    )


def render() -> str:
    """The dashboard as stable, sorted JSON text."""
    model = build().build()
    data = json.loads(json.dumps(model, cls=JSONEncoder))
    # Stable, unique panel ids (the builders leave them unset), in layout order.
    for number, panel in enumerate(data["panels"], start=1):
        panel["id"] = number
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> int:
    """Writes the JSON, or with --check reports whether the committed copy is current."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the JSON is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
