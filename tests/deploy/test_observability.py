"""Alerts and dashboard: generated, valid, unit-tested, and built on metrics that exist or
are promised in docs/deploy.md's metrics contract."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.manifests import named, render
from tests.deploy.observability import (
    EXISTING_METRICS,
    GENERATOR,
    PROMTOOL_TESTS,
    alerts,
    contract_metrics,
    dashboard,
    dashboard_exprs,
    metric_names,
    rule_groups,
)

REQUIRED_ALERTS = {
    "ConclaveServiceDown",
    "ConclaveHighErrorRatio",
    "ConclaveGroupFanoutSlow",
    "ConclaveStreamBacklog",
    "NatsSlowConsumers",
    "ConclaveRetentionPurgeLag",
    "ConclaveTotpFailureSpike",
    "ConclaveRefreshTokenReuse",
}


def test_metric_names_helper() -> None:
    """The PromQL name extractor ignores functions, labels, durations and groupings."""
    expr = (
        "histogram_quantile(0.99, sum by (job, le) (rate(grpc_server_handling_seconds_bucket"
        '{job=~"conclave-.+"}[5m]))) > 0.5 or absent(up{job="x"})'
    )
    assert metric_names(expr) == {"grpc_server_handling_seconds_bucket", "up"}


def test_dashboard_json_matches_its_generator() -> None:
    """The committed dashboard JSON is exactly what deploy/grafana generates."""
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_dashboard_has_the_panels_operators_need() -> None:
    """Latency by group size, deliveries, devices, backlog, RPCs, auth failures, purge lag."""
    board = dashboard()
    titles = " | ".join(p["title"] for p in board["panels"])
    for needed in (
        "Send → push latency by group size",
        "Deliveries / s",
        "Connected devices",
        "JetStream backlog",
        "RPC rate",
        "Server error ratio",
        "Unary latency p99",
        "Authentication failures",
        "Purge lag",
    ):
        assert needed in titles
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"], panel["title"]


def test_dashboard_ships_as_a_sidecar_configmap() -> None:
    """The dashboard ConfigMap carries Grafana's sidecar label and the generated JSON."""
    cm = named(render("overlays/prod"), "ConfigMap", "conclave-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["conclave.json"]) == dashboard()


def test_queries_use_existing_or_contracted_metrics() -> None:
    """Every metric in an alert or panel is exported today or listed in the contract."""
    contract = contract_metrics()
    assert len(contract) >= 7
    known = EXISTING_METRICS | contract
    used: set[str] = set()
    for expr in [*alerts().values(), *dashboard_exprs()]:
        names = metric_names(expr)
        assert names, expr
        # A histogram is exported as <name>_bucket, _sum and _count.
        bases = {name: re.sub(r"_(bucket|sum|count)$", "", name) for name in names}
        unknown = {name for name, base in bases.items() if known.isdisjoint({name, base})}
        assert unknown == set(), (unknown, expr)
        used |= names | set(bases.values())
    # Every contracted metric is actually used by an alert or a panel.
    assert contract <= used, contract - used


def test_alerts_cover_the_failure_modes() -> None:
    """Service down, errors, fan-out, backlog, slow consumers, purge lag, auth abuse."""
    names = set(alerts())
    assert names >= REQUIRED_ALERTS
    for group in rule_groups():
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert {"summary", "description"} <= set(rule["annotations"])
    tested = yaml.safe_load(PROMTOOL_TESTS.read_text())
    fired = {
        case["alertname"]
        for test in tested["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert fired == names, names - fired


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """The PrometheusRule's groups as a plain rules file, next to the promtool tests."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups()}))
    shutil.copy(PROMTOOL_TESTS, tmp_path / "alerts_test.yaml")
    return tmp_path


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_checks_and_unit_tests_the_rules(rules_dir: Path) -> None:
    """promtool check rules passes and every alert fires (or not) as its unit test expects."""
    assert PROMTOOL is not None
    for args in (["check", "rules", "rules.yaml"], ["test", "rules", "alerts_test.yaml"]):
        result = subprocess.run(
            [PROMTOOL, *args],
            cwd=rules_dir,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
