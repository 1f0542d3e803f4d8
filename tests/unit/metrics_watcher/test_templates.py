"""The PromQL the watcher sends: exact, per version and track, with raw queries filled alike."""

from __future__ import annotations

import pytest

from canaryflow.metrics_watcher.templates import (
    QueryContext,
    fill,
    render,
    sample_size_query,
)
from canaryflow_contracts.policy import MetricRule

CANARY = QueryContext("demo", "shop", "v2", "canary", 30)
SEL = 'namespace="demo",service="shop",version="v2",track="canary"'


def rule(template: str | None = None, query: str | None = None) -> MetricRule:
    return MetricRule(name="m", template=template, query=query, max=1)


def test_error_rate_is_the_share_of_5xx_for_the_canary_track() -> None:
    assert render(rule("error-rate"), CANARY) == (
        f'(sum(rate(http_requests_total{{{SEL},code=~"5.."}}[30s])) or vector(0))'
        f" / sum(rate(http_requests_total{{{SEL}}}[30s]))"
    )


def test_p99_latency_is_a_histogram_quantile_over_the_buckets() -> None:
    assert render(rule("p99-latency"), CANARY) == (
        "histogram_quantile(0.99, sum by (le) "
        f"(rate(http_request_duration_seconds_bucket{{{SEL}}}[30s])))"
    )


def test_request_rate_and_sample_size() -> None:
    assert render(rule("request-rate"), CANARY) == f"sum(rate(http_requests_total{{{SEL}}}[30s]))"
    assert sample_size_query(CANARY) == f"sum(increase(http_requests_total{{{SEL}}}[30s]))"


def test_stable_track_gets_its_own_version_and_track() -> None:
    stable = QueryContext("demo", "shop", "v1", "stable", 60)
    query = render(rule("request-rate"), stable)
    assert 'version="v1",track="stable"' in query
    assert "[60s]" in query


def test_a_raw_query_is_filled_with_the_same_variables_and_keeps_its_braces() -> None:
    raw = 'sum(rate(shop_purchases_total{namespace="{namespace}",version="{version}"}[{window}]))'
    assert render(rule(query=raw), CANARY) == (
        'sum(rate(shop_purchases_total{namespace="demo",version="v2"}[30s]))'
    )
    assert fill("{unknown} {track}", CANARY) == "{unknown} canary"


@pytest.mark.parametrize("hostile", ['v2"} or vector(1) #', "a\\b"])
def test_label_values_cannot_break_out_of_their_string(hostile: str) -> None:
    query = render(rule("request-rate"), QueryContext("demo", "shop", hostile, "canary", 30))
    escaped = hostile.replace("\\", "\\\\").replace('"', '\\"')
    assert f'version="{escaped}"' in query
