"""Canary against baseline from cumulative readings, and what the verdict makes of it."""

from __future__ import annotations

import math

import pytest

from canaryflow.metrics_watcher import stats
from canaryflow.metrics_watcher.compare import (
    HistogramReading,
    Outcome,
    RateReading,
    Reading,
    histogram_increments,
    judge_histogram,
    judge_rates,
    rate_increments,
)
from canaryflow.metrics_watcher.judge import sample_check, verdict
from canaryflow.metrics_watcher.templates import CountQueries
from canaryflow_contracts.events import VerdictAction, VerdictResult
from canaryflow_contracts.policy import BusinessMetric, Comparison, VerdictPolicy

ERRORS = Comparison(name="errors", template="errors")
LATENCY = Comparison(name="latency", template="latency")
CONVERSION = BusinessMetric(name="conversion", template="conversion", minimum_detectable_effect=0.3)
Q = CountQueries(events="events{canary}", trials="trials{canary}")
QB = CountQueries(events="events{baseline}", trials="trials{baseline}")


def rates(*points: tuple[float, float, float, float]) -> list[Reading]:
    return [Reading(RateReading(ec, tc), RateReading(eb, tb)) for ec, tc, eb, tb in points]


def judge(rule: Comparison | BusinessMetric, history: list[Reading], min_requests: int = 100):  # type: ignore[no-untyped-def]
    return judge_rates(
        rule, history, alpha=0.01, min_requests=min_requests, canary_queries=Q, baseline_queries=QB
    )


def test_increments_start_at_the_first_complete_reading_and_skip_gaps() -> None:
    history = [
        Reading(RateReading(None, None), RateReading(1, 10)),  # canary not scraped yet
        *rates((2, 100, 1, 100), (5, 300, 2, 290)),
        Reading(RateReading(9, 500), RateReading(None, None)),  # baseline unreadable
        *rates((10, 700, 4, 690)),
    ]
    ticks = rate_increments(history)
    assert [
        (t.canary_events, t.canary_trials, t.baseline_events, t.baseline_trials) for t in ticks
    ] == [
        (3, 200, 1, 190),
        (5, 400, 2, 400),
    ]


def test_an_absent_error_series_is_zero_errors_and_a_reset_counts_nothing() -> None:
    ticks = rate_increments(
        [Reading(RateReading(None, 100), RateReading(0, 100)), *rates((0, 50, 1, 200))]
    )
    assert [(t.canary_trials, t.baseline_events) for t in ticks] == [(0, 1)]


def test_a_much_worse_canary_fails_with_its_evidence() -> None:
    judged = judge(ERRORS, rates((0, 0, 0, 0), (60, 1000, 10, 1000)))
    assert judged.outcome is Outcome.FAIL
    check = judged.check
    assert check.passed is False and check.method == "msprt-rate"
    assert (check.value, check.baseline_value) == (0.06, 0.01)
    assert (check.sample_size, check.baseline_sample_size) == (1000, 1000)
    assert check.statistic is not None and check.threshold == 100
    assert check.statistic >= check.threshold and check.comparison == "<"
    assert check.estimate == pytest.approx(5.0)
    assert check.query == "events{canary} / trials{canary}"
    assert check.baseline_query == "events{baseline} / trials{baseline}"
    assert "significantly higher" in check.decision


def test_too_few_requests_is_insufficient_and_a_similar_canary_passes() -> None:
    few = judge(ERRORS, rates((0, 0, 0, 0), (1, 50, 1, 60)))
    assert few.outcome is Outcome.INSUFFICIENT and few.check.passed is None
    fine = judge(ERRORS, rates((0, 0, 0, 0), (10, 1000, 11, 1000)))
    assert fine.outcome is Outcome.PASS and fine.check.passed is True


def test_a_business_metric_needs_its_interval_to_rule_out_the_effect() -> None:
    small = judge(CONVERSION, rates((0, 0, 0, 0), (50, 1000, 50, 1000)))
    assert small.outcome is Outcome.INCONCLUSIVE
    assert small.check.method == "msprt-business"
    assert small.check.lower is not None and small.check.lower < -0.3
    plenty = judge(CONVERSION, rates((0, 0, 0, 0), (5000, 100000, 5000, 100000)))
    assert plenty.outcome is Outcome.PASS
    assert plenty.check.lower is not None and -0.3 < plenty.check.lower < 0 < (
        plenty.check.upper or 0
    )
    drop = judge(CONVERSION, rates((0, 0, 0, 0), (250, 10000, 500, 10000)))
    assert drop.outcome is Outcome.FAIL and drop.check.estimate == pytest.approx(-0.5)
    assert "significantly lower" in drop.check.decision


def test_an_inconclusive_business_metric_says_how_long_ruling_the_effect_out_takes() -> None:
    history = rates((0, 0, 0, 0), (50, 1000, 50, 1000), (100, 2000, 100, 2000))
    judged = judge_rates(
        CONVERSION,
        history,
        alpha=0.01,
        min_requests=100,
        canary_queries=Q,
        baseline_queries=QB,
        interval_seconds=5,
    )
    assert judged.outcome is Outcome.INCONCLUSIVE
    needed = stats.detection_time(
        baseline_rate=0.05,
        lift=0.0,
        variant_trials=1000,
        baseline_trials=1000,
        alpha=0.01,
        bar=-0.3,
    )
    seconds = math.ceil(needed) * 5
    assert seconds > 10  # more than the two readings so far
    assert judged.check.decision.endswith(
        f"needs about {seconds} s of readings in all to rule it out"
    ), judged.check.decision
    # Without the interval (a caller that does not know it) nothing is guessed.
    assert "needs about" not in judge(CONVERSION, history).check.decision


def hist(canary: dict[str, float], baseline: dict[str, float]) -> Reading:
    return Reading(HistogramReading(canary), HistogramReading(baseline))


def test_histogram_readings_become_per_bucket_increments() -> None:
    history = [
        hist({"0.1": 10, "0.5": 18, "+Inf": 20}, {"0.1": 9, "0.5": 19, "+Inf": 20}),
        hist({"0.1": 100, "0.5": 150, "+Inf": 200}, {"0.1": 189, "0.5": 199, "+Inf": 200}),
    ]
    (tick,) = histogram_increments(history)
    assert tick.bounds == (0.1, 0.5)
    assert (tick.canary, tick.canary_total, tick.baseline, tick.baseline_total) == (
        (90, 132),
        180,
        (180, 180),
        180,
    )
    judged = judge_histogram(
        LATENCY, history, alpha=0.01, min_requests=100, canary_queries=Q, baseline_queries=QB
    )
    assert judged.outcome is Outcome.FAIL and judged.check.method == "msprt-histogram"
    assert "slower than" in judged.check.decision


def test_the_verdict_of_an_unsettled_comparison_follows_the_policy() -> None:
    unsettled = judge(CONVERSION, rates((0, 0, 0, 0), (50, 1000, 50, 1000))).check
    checks = [sample_check(1000, 100, query="size"), unsettled]
    assert verdict(checks, min_requests=100)[:2] == (
        VerdictResult.INCONCLUSIVE,
        VerdictAction.CONTINUE,
    )
    extend = verdict(checks, min_requests=100, final=True, extensions_left=1)
    assert extend[:2] == (VerdictResult.INCONCLUSIVE, VerdictAction.EXTEND)
    assert "extending the hold" in extend[2]
    exhausted = verdict(checks, min_requests=100, final=True, extensions_left=0)
    assert exhausted[:2] == (VerdictResult.INCONCLUSIVE, VerdictAction.PAUSE)
    onward = VerdictPolicy(inconclusive="continue")
    assert (
        verdict(checks, min_requests=100, final=True, actions=onward)[1] is VerdictAction.CONTINUE
    )


def test_a_drop_held_for_a_person_pauses_and_a_technical_failure_still_rolls_back() -> None:
    drop = judge(CONVERSION, rates((0, 0, 0, 0), (250, 10000, 500, 10000))).check
    size = sample_check(10000, 100, query="size")
    held = verdict([size, drop], min_requests=100, pause_on_fail=frozenset({"conversion"}))
    assert held[:2] == (VerdictResult.FAIL, VerdictAction.PAUSE)
    errors = judge(ERRORS, rates((0, 0, 0, 0), (60, 1000, 10, 1000))).check
    both = verdict([size, drop, errors], min_requests=100, pause_on_fail=frozenset({"conversion"}))
    assert both[:2] == (VerdictResult.FAIL, VerdictAction.ROLLBACK)


def test_insufficient_data_at_the_end_can_extend_or_roll_back_but_never_continue() -> None:
    few = judge(ERRORS, rates((0, 0, 0, 0), (1, 50, 1, 60))).check
    checks = [sample_check(1000, 100, query="size"), few]
    extend = VerdictPolicy(insufficient_data="extend")
    assert verdict(checks, min_requests=100, final=True, actions=extend, extensions_left=1)[:2] == (
        VerdictResult.INSUFFICIENT_DATA,
        VerdictAction.EXTEND,
    )
    back = VerdictPolicy(insufficient_data="rollback")
    assert verdict(checks, min_requests=100, final=True, actions=back)[1] is VerdictAction.ROLLBACK
    with pytest.raises(ValueError, match="never a pass"):
        VerdictPolicy(insufficient_data="continue")
