"""The Grafana dashboard in deploy/grafana/: it parses, and every panel's query runs.

Why against the real Prometheus: a dashboard's PromQL is only checked when someone opens it;
here each query is sent to the stack's Prometheus with Grafana's variables filled in, so a
typo or a renamed metric fails the build instead of showing an empty panel.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from tests.support import PrometheusQuery

from canaryflow.runtime.observability import service_metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "canaryflow.json"
# Grafana's variables, as Grafana would fill them in.
VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$prefix": ".*"}


def _queries() -> list[tuple[str, str]]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            found.append((panel["title"], target["expr"]))
    return found


def _filled(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"an unknown variable in {expr!r}"
    return expr


def test_the_dashboard_parses_and_uses_only_metrics_the_services_export() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "canaryflow" and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    service_metrics()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    exported = {
        metric.name + suffix
        for metric in REGISTRY.collect()
        for suffix in suffixes.get(metric.type, ("",))
    }
    for title, expr in _queries():
        used = set(re.findall(r"\b(canaryflow_[a-z_]+)\s*\{", expr))
        assert used, f"{title}: no canaryflow metric in {expr!r}"
        assert used <= exported, f"{title}: {used - exported} is not exported"


@pytest.mark.stack
def test_every_panel_query_runs_against_the_stack_prometheus(prometheus: PrometheusQuery) -> None:
    queries = _queries()
    assert len(queries) >= 10
    for _, expr in queries:
        prometheus.query(_filled(expr))  # raises PromQueryError on invalid PromQL
