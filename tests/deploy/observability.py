"""The alert rules and the dashboard, and a small PromQL helper, shared by the tests."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.deploy.manifests import K8S, ROOT, named, render

DASHBOARD = K8S / "base" / "monitoring" / "dashboards" / "conclave.json"
GENERATOR = ROOT / "deploy" / "grafana" / "generate_dashboard.py"
PROMTOOL_TESTS = Path(__file__).parent / "promtool" / "alerts_test.yaml"

# Exported today (libs/kit metrics, prometheus_client process collector, Prometheus itself,
# the NATS exporter sidecar).
EXISTING_METRICS = {
    "up",
    "grpc_server_started_total",
    "grpc_server_handled_total",
    "grpc_server_handling_seconds_bucket",
    "conclave_build_info",
    "conclave_dependency_up",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "gnatsd_varz_slow_consumers",
}
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "by", "without", "rate", "increase", "irate",
    "histogram_quantile", "absent", "or", "and", "unless", "offset", "on", "ignoring",
}  # fmt: skip


def contract_metrics() -> set[str]:
    """Metric names listed in docs/deploy.md's "Metrics contract" table."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    section = text.split("## Metrics contract", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_:]+)`", section, re.MULTILINE))


def metric_names(expr: str) -> set[str]:
    """Metric names used in a PromQL expression (label matchers and groupings removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr):
        word, call = match.group(1), match.group(2)
        if not call and word not in PROMQL_WORDS:
            names.add(word)
    return names


def dashboard() -> dict[str, Any]:
    """The committed Grafana dashboard JSON."""
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_exprs() -> list[str]:
    """Every panel query of the dashboard."""
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def rule_groups() -> list[dict[str, Any]]:
    """The rule groups of the rendered PrometheusRule."""
    rule = named(render("base"), "PrometheusRule", "conclave")
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def alerts() -> dict[str, str]:
    """Alert name -> PromQL expression."""
    return {r["alert"]: r["expr"] for g in rule_groups() for r in g["rules"] if "alert" in r}
