"""The judge's decisions: a pass needs a value, a threshold respected and enough requests."""

from __future__ import annotations

import pytest

from canaryflow.metrics_watcher.judge import (
    CANARY,
    SAMPLE_SIZE,
    STABLE,
    beyond_chance,
    evidence,
    judge,
    sample_check,
    verdict,
)
from canaryflow_contracts.events import BINOMIAL_GUARD, MetricCheck, VerdictAction, VerdictResult
from canaryflow_contracts.policy import MetricRule

ERRORS = MetricRule(name="error-rate", template="error-rate", max=0.05)
THROUGHPUT = MetricRule(name="request-rate", template="request-rate", min=5)
BAND = MetricRule(name="p99", template="p99-latency", min=0.01, max=0.5)
Q = "some promql"


def checks(*canary: MetricCheck, size: float = 400, min_requests: int = 50) -> list[MetricCheck]:
    return [sample_check(size, min_requests, query="size q"), *canary]


def test_a_value_within_max_passes_and_carries_its_evidence() -> None:
    check = judge(ERRORS, 0.01, 400, 50, query=Q)
    assert check == MetricCheck(
        metric="error-rate",
        track=CANARY,
        query=Q,
        value=0.01,
        threshold=0.05,
        comparison="<=",
        sample_size=400,
        passed=True,
    )
    assert verdict(checks(check), min_requests=50) == (
        VerdictResult.PASS,
        VerdictAction.CONTINUE,
        "1 canary check(s) within thresholds on 400 requests",
    )


def test_a_value_above_max_fails_and_asks_for_rollback() -> None:
    check = judge(ERRORS, 0.3, 400, 50, query=Q)
    assert (check.passed, check.threshold, check.comparison) == (False, 0.05, "<=")
    result, action, reason = verdict(checks(check), min_requests=50)
    assert (result, action) == (VerdictResult.FAIL, VerdictAction.ROLLBACK)
    assert reason == "error-rate 0.3 above max 0.05 on the canary (400 requests, p=2.8e-58)"


def test_a_share_of_errors_above_max_that_chance_explains_is_not_settled_yet() -> None:
    """2 errors in 34 requests (5.9 %) from a version erring on 0.5 %: seen on real traffic,
    it rolled a good version back. At max 5 % such a count is likely (p = 0.51)."""
    check = judge(ERRORS, 2 / 34, 34, 20, query=Q)

    assert check.passed is None
    assert check.method == BINOMIAL_GUARD and check.p_value == pytest.approx(0.5123, abs=1e-3)
    assert "within chance (p=0.51 >= 0.01)" in check.decision
    result, action, reason = verdict(checks(check, size=34, min_requests=20), min_requests=20)
    assert (result, action) == (VerdictResult.INCONCLUSIVE, VerdictAction.CONTINUE)
    assert reason.startswith("not settled: error-rate 0.05882 above max 0.05 on 34 requests")
    final = verdict(
        checks(check, size=34, min_requests=20),
        min_requests=20,
        final=True,
        extensions_left=1,
    )
    assert final[:2] == (VerdictResult.INCONCLUSIVE, VerdictAction.EXTEND)


def test_a_share_of_errors_chance_cannot_explain_fails_on_few_requests() -> None:
    # A version erring on 20 %: 7 errors in 34 requests (p = 0.0045 at 5 %).
    assert judge(ERRORS, 7 / 34, 34, 20, query=Q).passed is False
    # The same share over ten times the requests, and the bound's own edge.
    assert judge(ERRORS, 0.0588, 340, 20, query=Q).passed is None
    assert judge(ERRORS, 0.09, 340, 20, query=Q).passed is False
    assert beyond_chance(0.05, 100, 0.05) > 0.5


def test_values_that_are_not_shares_of_requests_are_judged_on_the_value() -> None:
    latency = MetricRule(name="p99", template="p99-latency", max=0.5)
    raw = MetricRule(name="errors", query="some promql", max=0.05)
    assert judge(latency, 0.51, 34, 20, query=Q).passed is False
    assert judge(raw, 2 / 34, 34, 20, query=Q).passed is False


def test_a_value_below_min_fails() -> None:
    check = judge(THROUGHPUT, 2.0, 400, 50, query=Q)
    assert (check.passed, check.threshold, check.comparison) == (False, 5, ">=")
    result, action, reason = verdict(checks(check), min_requests=50)
    assert (result, action) == (VerdictResult.FAIL, VerdictAction.ROLLBACK)
    assert "below min 5" in reason


def test_both_bounds_name_the_one_that_failed() -> None:
    assert judge(BAND, 0.2, 400, 50, query=Q).comparison == "<="
    assert judge(BAND, 0.2, 400, 50, query=Q).passed is True
    low = judge(BAND, 0.001, 400, 50, query=Q)
    assert (low.passed, low.threshold, low.comparison) == (False, 0.01, ">=")
    high = judge(BAND, 0.9, 400, 50, query=Q)
    assert (high.passed, high.threshold, high.comparison) == (False, 0.5, "<=")


def test_no_data_is_insufficient_never_a_pass() -> None:
    check = judge(ERRORS, None, 400, 50, query=Q)
    assert check.passed is None and check.value is None
    result, action, reason = verdict(checks(check), min_requests=50)
    assert (result, action) == (VerdictResult.INSUFFICIENT_DATA, VerdictAction.CONTINUE)
    assert reason == "no data for error-rate on the canary"


def test_too_few_canary_requests_is_insufficient_even_with_a_bad_value() -> None:
    check = judge(ERRORS, 0.9, 12, 50, query=Q)
    assert check.passed is None
    size = sample_check(12, 50, query="size q")
    assert (size.passed, size.threshold, size.comparison) == (None, 50, ">=")
    result, _, reason = verdict([size, check], min_requests=50)
    assert result is VerdictResult.INSUFFICIENT_DATA
    assert reason == "the canary served 12 requests in the window, fewer than minRequests 50"


def test_no_sample_series_counts_as_zero_requests() -> None:
    size = sample_check(None, 50, query="size q")
    assert (size.value, size.sample_size, size.passed) == (None, 0, None)


def test_provider_down_is_insufficient_with_its_reason() -> None:
    check = judge(ERRORS, None, 0, 50, query=Q)
    result, action, reason = verdict(
        checks(check, size=0), min_requests=50, provider_error="prometheus is not answering"
    )
    assert (result, action) == (VerdictResult.INSUFFICIENT_DATA, VerdictAction.CONTINUE)
    assert "prometheus is not answering" in reason


def test_a_definite_failure_wins_over_a_partial_outage() -> None:
    failing = judge(ERRORS, 0.4, 400, 50, query=Q)
    result, _, _ = verdict(checks(failing), min_requests=50, provider_error="timeout")
    assert result is VerdictResult.FAIL


def test_final_verdict_pauses_without_a_pass_and_continues_with_one() -> None:
    missing = judge(ERRORS, None, 400, 50, query=Q)
    result, action, reason = verdict(checks(missing), min_requests=50, final=True)
    assert (result, action) == (VerdictResult.INSUFFICIENT_DATA, VerdictAction.PAUSE)
    assert reason.startswith("the hold ended without a passing measurement")
    good = judge(ERRORS, 0.0, 400, 50, query=Q)
    assert verdict(checks(good), min_requests=50, final=True)[:2] == (
        VerdictResult.PASS,
        VerdictAction.CONTINUE,
    )


def test_stable_evidence_is_shown_but_never_judged() -> None:
    stable = evidence("error-rate", 0.9, 1000, query=Q)
    assert (stable.track, stable.threshold, stable.comparison, stable.passed) == (
        STABLE,
        None,
        "n/a",
        None,
    )
    stable_size = sample_check(3, 50, query="q", track=STABLE)
    assert (stable_size.metric, stable_size.passed, stable_size.threshold) == (
        SAMPLE_SIZE,
        None,
        None,
    )
    good = judge(ERRORS, 0.0, 400, 50, query=Q)
    assert verdict([*checks(good), stable, stable_size], min_requests=50)[0] is VerdictResult.PASS


def test_nothing_measured_is_insufficient() -> None:
    result, _, reason = verdict([], min_requests=50)
    assert result is VerdictResult.INSUFFICIENT_DATA
    assert reason == "no canary metric was measured"
