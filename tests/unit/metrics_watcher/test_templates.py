"""The PromQL the watcher sends: exact, per version and track, with raw queries filled alike."""

from __future__ import annotations

import pytest

from canaryflow.metrics_watcher.templates import (
    QueryContext,
    count_queries,
    fill,
    for_analysis,
    render,
    sample_size_query,
)
from canaryflow_contracts.policy import Analysis, Comparison, MetricRule, NamedTemplate

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


# The gateway's side: Traefik's per-service series of the track's backend Service.
GATEWAY = 'service=~"demo-shop-canary-[^@]+@kubernetescrd"'


def test_gateway_error_rate_is_the_share_of_5xx_traefik_answered_for_the_track_service() -> None:
    assert render(rule("gateway-error-rate"), CANARY) == (
        f'(sum(rate(traefik_service_requests_total{{{GATEWAY},code=~"5.."}}[30s])) or vector(0))'
        f" / sum(rate(traefik_service_requests_total{{{GATEWAY}}}[30s]))"
    )


def test_gateway_p99_latency_and_request_rate_come_from_traefik() -> None:
    assert render(rule("gateway-p99-latency"), CANARY) == (
        "histogram_quantile(0.99, sum by (le) "
        f"(rate(traefik_service_request_duration_seconds_bucket{{{GATEWAY}}}[30s])))"
    )
    assert render(rule("gateway-request-rate"), CANARY) == (
        f"sum(rate(traefik_service_requests_total{{{GATEWAY}}}[30s]))"
    )


def test_the_baseline_track_is_its_own_backend_service_at_the_gateway() -> None:
    baseline = QueryContext("demo", "shop", "v1", "baseline", 30)
    query = render(rule("gateway-request-rate"), baseline)
    assert 'service=~"demo-shop-baseline-[^@]+@kubernetescrd"' in query
    assert "version" not in query  # the gateway knows Services, not image tags


def _comparison(template: str) -> Comparison:
    return Comparison(name="c", template=template)


def test_gateway_count_templates_are_cumulative_counters_and_buckets() -> None:
    errors = count_queries(_comparison("gateway-errors"), CANARY)
    assert errors.events == f'sum(traefik_service_requests_total{{{GATEWAY},code=~"5.."}})'
    assert errors.trials == f"sum(traefik_service_requests_total{{{GATEWAY}}})"
    latency = count_queries(_comparison("gateway-latency"), CANARY)
    assert latency.buckets == (
        f"sum by (le) (traefik_service_request_duration_seconds_bucket{{{GATEWAY}}})"
    )


def _analysis(
    *rules: MetricRule,
    compare: tuple[Comparison, ...] = (),
    templates: tuple[NamedTemplate, ...] = (),
) -> Analysis:
    return Analysis(metrics=list(rules), compare=list(compare), templates=list(templates))


def test_an_analysis_judged_only_at_the_gateway_counts_its_sample_at_the_gateway() -> None:
    gateway_only = _analysis(rule("gateway-error-rate"), compare=(_comparison("gateway-latency"),))
    assert sample_size_query(CANARY, for_analysis(gateway_only)) == (
        f"sum(increase(traefik_service_requests_total{{{GATEWAY}}}[30s]))"
    )


def test_an_analysis_with_any_app_rule_counts_its_sample_from_the_app() -> None:
    mixed = _analysis(rule("gateway-error-rate"), compare=(_comparison("latency"),))
    assert sample_size_query(CANARY, for_analysis(mixed)) == (
        f"sum(increase(http_requests_total{{{SEL}}}[30s]))"
    )


def test_a_policy_template_named_like_a_gateway_one_is_the_policy_s_own() -> None:
    own = NamedTemplate(name="gateway-error-rate", query="sum(my_errors{track='{track}'})")
    analysis = _analysis(rule("gateway-error-rate"), templates=(own,))
    templates = for_analysis(analysis)
    assert render(rule("gateway-error-rate"), CANARY, templates) == "sum(my_errors{track='canary'})"
    assert "http_requests_total" in sample_size_query(CANARY, templates)
