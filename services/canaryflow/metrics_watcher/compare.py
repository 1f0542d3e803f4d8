"""Canary against the live baseline: cumulative counters in, one judged check out, no I/O.

Each tick reads every comparison's counters (cumulative since the pods started) on both
tracks; the increments between ticks are what the sequential test consumes, so the test
sees exactly the requests served since the analysis began, however the ticks fell. A tick
whose reading is incomplete (a provider error, a series not yet scraped) is skipped: the
next complete one covers its requests.

Outcomes: a rejected test fails at once, whatever the sample (the test is valid at any
size). Otherwise fewer than ``minRequests`` on either track is insufficient data; a rule
with a minimum effect passes only once the confidence interval rules that effect out, and is
inconclusive until then; a rule without one passes when the test has not rejected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from canaryflow.metrics_watcher import stats
from canaryflow.metrics_watcher.templates import CountQueries
from canaryflow_contracts.events import MetricCheck
from canaryflow_contracts.policy import Better, BusinessMetric, Comparison

CANARY = "canary"
INF = "+Inf"


class Outcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INSUFFICIENT = "insufficient"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class RateReading:
    """Cumulative counter values on one track at one tick (None: no series)."""

    events: float | None
    trials: float | None

    def complete(self) -> tuple[float, float] | None:
        if self.trials is None:
            return None
        # A counter of errors that never happened may have no series at all: zero events.
        return (self.events or 0.0, self.trials)


@dataclass(frozen=True)
class HistogramReading:
    """Cumulative bucket counts by ``le`` on one track at one tick (``+Inf`` = all)."""

    buckets: dict[str, float]


TrackReading = RateReading | HistogramReading


@dataclass(frozen=True)
class Reading:
    canary: TrackReading
    baseline: TrackReading


@dataclass(frozen=True)
class Judged:
    check: MetricCheck
    outcome: Outcome


def rate_increments(history: Sequence[Reading]) -> list[stats.Counts]:
    """Per-tick increments from cumulative readings; counter resets count as zero."""
    previous: tuple[float, float, float, float] | None = None
    ticks: list[stats.Counts] = []
    for reading in history:
        if not isinstance(reading.canary, RateReading) or not isinstance(
            reading.baseline, RateReading
        ):
            continue
        canary, baseline = reading.canary.complete(), reading.baseline.complete()
        if canary is None or baseline is None:
            continue
        current = (*canary, *baseline)
        if previous is not None:
            delta = [max(now - before, 0.0) for now, before in zip(current, previous, strict=True)]
            ticks.append(stats.Counts(*delta))
        previous = current
    return ticks


def _bounds(buckets: dict[str, float]) -> dict[float, float]:
    parsed: dict[float, float] = {}
    for le, value in buckets.items():
        try:
            parsed[float(le)] = value
        except ValueError:
            continue
    return parsed


def histogram_increments(history: Sequence[Reading]) -> list[stats.BucketTicks]:
    previous: tuple[dict[float, float], dict[float, float]] | None = None
    ticks: list[stats.BucketTicks] = []
    for reading in history:
        if not isinstance(reading.canary, HistogramReading) or not isinstance(
            reading.baseline, HistogramReading
        ):
            continue
        canary, baseline = _bounds(reading.canary.buckets), _bounds(reading.baseline.buckets)
        if math.inf not in canary or math.inf not in baseline:
            continue
        if previous is not None:
            before_c, before_b = previous
            bounds = tuple(
                sorted(
                    b
                    for b in set(canary) & set(baseline) & set(before_c) & set(before_b)
                    if b != math.inf
                )
            )

            def delta(now: dict[float, float], before: dict[float, float], bound: float) -> float:
                return max(now[bound] - before[bound], 0.0)

            ticks.append(
                stats.BucketTicks(
                    bounds=bounds,
                    canary=tuple(delta(canary, before_c, b) for b in bounds),
                    canary_total=delta(canary, before_c, math.inf),
                    baseline=tuple(delta(baseline, before_b, b) for b in bounds),
                    baseline_total=delta(baseline, before_b, math.inf),
                )
            )
        previous = (canary, baseline)
    return ticks


def _queries(queries: CountQueries) -> str:
    if queries.buckets is not None:
        return queries.buckets
    return f"{queries.events} / {queries.trials}"


def _percent(value: float | None) -> str:
    return "no data" if value is None else f"{100 * value:.3g} %"


def _change(value: float | None) -> str:
    if value is None:
        return "unbounded"
    return f"{100 * value:+.3g} %"


def _too_little(canary: float, baseline: float, min_requests: int) -> str:
    return (
        f"too little data: {canary:.0f} canary and {baseline:.0f} baseline trials, "
        f"fewer than minRequests {min_requests}"
    )


def _time_needed(
    sides: tuple[float, float, float], looks: int, bar: float, alpha: float, interval_seconds: float
) -> str:
    """How long ruling out ``bar`` takes, in all, for a canary that changes nothing at the
    traffic of ``looks`` readings ``interval_seconds`` apart; ``sides``: canary trials,
    baseline events and baseline trials over them."""
    nc, xb, nb = sides
    needed = stats.detection_time(
        baseline_rate=xb / nb if nb else 0.0,
        lift=0.0,
        variant_trials=nc / looks if looks else 0.0,
        baseline_trials=nb / looks if looks else 0.0,
        alpha=alpha,
        bar=bar,
    )
    if math.isinf(needed):
        return "; no estimate of the time needed: the baseline saw no event yet"
    seconds = math.ceil(needed) * interval_seconds
    return (
        f"; at this traffic a canary that changes nothing needs about {seconds:.0f} s of "
        f"readings in all to rule it out"
    )


def judge_rates(
    rule: Comparison | BusinessMetric,
    history: Sequence[Reading],
    *,
    alpha: float,
    min_requests: int,
    canary_queries: CountQueries,
    baseline_queries: CountQueries,
    interval_seconds: float | None = None,
) -> Judged:
    """``interval_seconds``: the time between readings, for how long an inconclusive
    comparison would need at the traffic seen."""
    ticks = rate_increments(history)
    business = isinstance(rule, BusinessMetric)
    higher_is_worse = rule.better is Better.LOWER
    # A business metric reports its interval, so it is judged by the two-sided test that
    # interval inverts: "significant drop" and "the interval lies below zero" never disagree.
    test = stats.rate_test(ticks, alpha, higher_is_worse=higher_is_worse, two_sided=business)
    xc = sum(t.canary_events for t in ticks)
    nc = sum(t.canary_trials for t in ticks)
    xb = sum(t.baseline_events for t in ticks)
    nb = sum(t.baseline_trials for t in ticks)
    effect = rule.minimum_detectable_effect if isinstance(rule, BusinessMetric) else rule.min_effect
    estimate = (
        stats.ratio_interval(ticks, alpha)
        if effect is not None
        else stats.Estimate(xc / nc / (xb / nb) - 1.0 if nc and nb and xb else None, None, None)
    )
    worse = "higher" if higher_is_worse else "lower"
    moved_badly = estimate.change is not None and (
        estimate.change > 0 if higher_is_worse else estimate.change < 0
    )
    if test.rejected and (moved_badly or not business):
        outcome = Outcome.FAIL
        decision = (
            f"significantly {worse} on the canary than on the baseline: evidence "
            f"{test.evidence:.3g} >= {test.threshold:.3g} (alpha {alpha:g})"
        )
    elif nc < min_requests or nb < min_requests:
        outcome, decision = Outcome.INSUFFICIENT, _too_little(nc, nb, min_requests)
    elif effect is None:
        outcome = Outcome.PASS
        decision = (
            f"no significant difference (evidence {test.evidence:.3g} < {test.threshold:.3g})"
        )
    else:
        bound = estimate.upper if higher_is_worse else estimate.lower
        ruled_out = bound is not None and (bound < effect if higher_is_worse else bound > -effect)
        outcome = Outcome.PASS if ruled_out else Outcome.INCONCLUSIVE
        decision = (
            f"{'rules out' if ruled_out else 'cannot yet rule out'} a change of "
            f"{'+' if higher_is_worse else '-'}{100 * effect:.3g} % "
            f"(interval {_change(estimate.lower)} to {_change(estimate.upper)})"
        )
        if not ruled_out and interval_seconds:
            bar = effect if higher_is_worse else -effect
            decision += _time_needed((nc, xb, nb), len(ticks), bar, alpha, interval_seconds)
    return _judged(
        rule.name,
        "msprt-business" if business else "msprt-rate",
        queries=(canary_queries, baseline_queries),
        sides=(xc / nc if nc else None, nc, xb / nb if nb else None, nb),
        test=test,
        estimate=estimate,
        outcome=outcome,
        decision=decision,
    )


def judge_histogram(
    rule: Comparison,
    history: Sequence[Reading],
    *,
    alpha: float,
    min_requests: int,
    canary_queries: CountQueries,
    baseline_queries: CountQueries,
) -> Judged:
    ticks = histogram_increments(history)
    result = stats.histogram_test(ticks, alpha)
    test = result.test
    nc = sum(t.canary_total for t in ticks)
    nb = sum(t.baseline_total for t in ticks)
    where = (
        f"requests slower than {result.worst_bound:g}s: canary "
        f"{_percent(result.canary_exceedance)} vs baseline {_percent(result.baseline_exceedance)}"
        if result.worst_bound is not None
        else "no bucket to compare"
    )
    if test.rejected:
        outcome = Outcome.FAIL
        decision = (
            f"slower on the canary: {where}; evidence {test.evidence:.3g} >= "
            f"{test.threshold:.3g} (alpha {alpha:g} over {len(ticks[0].bounds)} buckets)"
        )
    elif nc < min_requests or nb < min_requests:
        outcome, decision = Outcome.INSUFFICIENT, _too_little(nc, nb, min_requests)
    else:
        outcome = Outcome.PASS
        decision = f"no bucket significantly slower ({where}; evidence {test.evidence:.3g})"
    change = None
    if result.canary_exceedance is not None and result.baseline_exceedance:
        change = result.canary_exceedance / result.baseline_exceedance - 1.0
    return _judged(
        rule.name,
        "msprt-histogram",
        queries=(canary_queries, baseline_queries),
        sides=(result.canary_exceedance, nc, result.baseline_exceedance, nb),
        test=test,
        estimate=stats.Estimate(change, None, None),
        outcome=outcome,
        decision=decision,
    )


def _judged(
    name: str,
    method: str,
    *,
    queries: tuple[CountQueries, CountQueries],
    sides: tuple[float | None, float, float | None, float],
    test: stats.Sequential,
    estimate: stats.Estimate,
    outcome: Outcome,
    decision: str,
) -> Judged:
    """The evidence of one comparison: both tracks' numbers, the statistic, the decision."""
    canary_value, canary_size, baseline_value, baseline_size = sides
    check = MetricCheck(
        metric=name,
        track=CANARY,
        query=_queries(queries[0]),
        value=canary_value,
        threshold=test.threshold,
        comparison="<",
        sample_size=canary_size,
        passed={Outcome.PASS: True, Outcome.FAIL: False}.get(outcome),
        method=method,
        baseline_query=_queries(queries[1]),
        baseline_value=baseline_value,
        baseline_sample_size=baseline_size,
        statistic=test.evidence,
        p_value=test.p_value,
        estimate=estimate.change,
        lower=estimate.lower,
        upper=estimate.upper,
        decision=decision,
    )
    return Judged(check, outcome)
