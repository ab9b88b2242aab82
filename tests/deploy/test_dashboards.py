"""The shipped Grafana dashboard and Prometheus alert rules only name metrics the daemon
exports (a renamed metric would otherwise leave an alert that can never fire)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.metrics_core import Metric

from syncd.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "syncd-dashboard.json"
ALERTS = DEPLOY / "prometheus" / "syncd-alerts.yml"
NAME = re.compile(r"\b(?:syncd|process)_[a-z0-9_]+\b")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def exported() -> set[str]:
    """Every sample name the daemon's registry can produce."""
    families: list[Metric] = list(Metrics().registry.collect())
    return {
        family.name + suffix for family in families for suffix in SUFFIXES.get(family.type, ("",))
    }


def dashboard_expressions() -> list[str]:
    document = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in document["panels"] for target in panel["targets"]]


def test_every_metric_in_the_dashboard_is_exported() -> None:
    names = {name for expr in dashboard_expressions() for name in NAME.findall(expr)}
    assert len(names) >= 10
    assert names - exported() == set()


def test_every_metric_in_the_alert_rules_is_exported() -> None:
    text = ALERTS.read_text()
    expressions = re.findall(r"expr: (>\n(?:\s{10}.*\n)+|.*)", text)
    names = {name for expr in expressions for name in NAME.findall(expr)}
    assert len(names) >= 8
    assert names - exported() == set()
    alerts = set(re.findall(r"alert: (\w+)", text))
    # The list: lag, refusals, drops, readiness, upload rejects.
    for wanted in ("CommitToSendLag", "Refusals", "LiveDrops", "NotReady", "UploadRejects"):
        assert any(wanted in alert for alert in alerts), wanted
