"""The sequential tests: valid under the null at every look, powerful against regressions."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from canaryflow.metrics_watcher.stats import (
    ALTERNATIVES,
    BucketTicks,
    Counts,
    Estimate,
    Sequential,
    histogram_test,
    rate_test,
    ratio_interval,
)


def ticks(
    rng: np.random.Generator, rate_c: float, rate_b: float, n: int = 400, count: int = 12
) -> list[Counts]:
    out = []
    for _ in range(count):
        nc, nb = rng.poisson(n), rng.poisson(n)
        out.append(Counts(rng.binomial(nc, rate_c), nc, rng.binomial(nb, rate_b), nb))
    return out


def ever_rejected(series: list[Counts], alpha: float = 0.01) -> bool:
    # Look after every tick, as the analysis does: the running maximum is what counts.
    return rate_test(series, alpha).rejected


def test_identical_rates_are_rarely_rejected_however_often_one_looks() -> None:
    rng = np.random.default_rng(1)
    false = sum(ever_rejected(ticks(rng, 0.01, 0.01)) for _ in range(400))
    assert false / 400 < 0.02


def test_a_5x_error_rate_is_rejected_quickly() -> None:
    rng = np.random.default_rng(2)
    detected = sum(ever_rejected(ticks(rng, 0.05, 0.01, n=500, count=2)) for _ in range(200))
    assert detected / 200 >= 0.95


def test_the_evidence_never_falls_below_one_and_the_p_value_is_its_inverse() -> None:
    result = rate_test([Counts(0, 100, 5, 100)], 0.01)
    assert result.evidence == 1.0 and result.p_value == 1.0 and not result.rejected
    strong = rate_test([Counts(60, 500, 5, 500)], 0.01)
    assert strong.rejected and strong.p_value == pytest.approx(1 / strong.evidence)
    assert strong.threshold == 100


def test_a_drop_is_tested_in_the_other_direction() -> None:
    drop = [Counts(10, 1000, 60, 1000)] * 3
    assert rate_test(drop, 0.01, higher_is_worse=False).rejected
    assert not rate_test(drop, 0.01, higher_is_worse=True).rejected


def test_no_traffic_is_no_evidence() -> None:
    assert not rate_test([], 0.01).rejected
    assert not rate_test([Counts(0, 0, 0, 0), Counts(3, 0, 0, 10)], 0.01).rejected


def test_no_look_yet_is_no_evidence_at_the_corrected_threshold() -> None:
    # Reported as evidence 0 (log -inf), p-value 1: nothing was measured.
    assert rate_test([], 0.01, tests=2) == Sequential(0.0, 200.0, 1.0, False)


def test_a_tick_where_one_side_served_nothing_carries_no_evidence() -> None:
    for empty_side in (Counts(5, 0, 0, 10), Counts(0, 10, 5, 0)):
        assert rate_test([empty_side] * 20, 0.01).evidence == 1.0


def test_a_single_trial_on_either_side_counts() -> None:
    assert rate_test([Counts(1, 1, 0, 1000)] * 10, 0.01).rejected
    assert rate_test([Counts(0, 1000, 1, 1)] * 10, 0.01, higher_is_worse=False).rejected


def test_negative_increments_of_a_reset_counter_count_as_none() -> None:
    reset = rate_test([Counts(-50, 100, 5, 100), Counts(40, 100, 5, 100)], 0.01)
    assert reset == rate_test([Counts(0, 100, 5, 100), Counts(40, 100, 5, 100)], 0.01)


def mixture_evidence(series: list[Counts], thetas: list[float], null: float = 1.0) -> float:
    """The mSPRT's evidence from its definition, in plain arithmetic: the largest, over the
    looks, of the mean over the alternatives (ratios ``null * theta``) of the likelihood ratio
    of the canary's share of the events (binomial given both tracks' trials) so far."""
    best, log_lr = 1.0, [0.0] * len(thetas)
    for tick in series:
        nc, nb = tick.canary_trials, tick.baseline_trials
        p0 = null * nc / (null * nc + nb)
        for k, theta in enumerate(thetas):
            p1 = null * theta * nc / (null * theta * nc + nb)
            log_lr[k] += tick.canary_events * math.log(p1 / p0)
            log_lr[k] += tick.baseline_events * math.log((1 - p1) / (1 - p0))
        best = max(best, sum(math.exp(value) for value in log_lr) / len(thetas))
    return best


def test_the_evidence_is_the_mixture_likelihood_ratio_at_its_best_look() -> None:
    # Worse, then a quiet tick that lowers the ratio: the test keeps the best look.
    series = [Counts(12, 200, 4, 200), Counts(0, 200, 9, 200)]
    up = [float(theta) for theta in ALTERNATIVES]
    down = [1 / theta for theta in up]
    assert rate_test(series, 0.01).evidence == pytest.approx(mixture_evidence(series, up))
    drop = [Counts(4, 200, 12, 200), Counts(9, 200, 0, 200)]
    low = rate_test(drop, 0.01, higher_is_worse=False).evidence
    assert low == pytest.approx(mixture_evidence(drop, down)) and low > 1.0
    both = rate_test(series, 0.01, two_sided=True).evidence
    assert both == pytest.approx(mixture_evidence(series, up + down))
    first_look = rate_test(series[:1], 0.01).evidence
    assert rate_test(series, 0.01).evidence == first_look > 1.0


def test_the_interval_is_every_ratio_the_two_sided_test_has_not_rejected() -> None:
    series = [Counts(30, 1000, 20, 1000), Counts(25, 1000, 20, 1000)]
    both = [float(theta) for theta in ALTERNATIVES] + [1 / float(t) for t in ALTERNATIVES]
    grid = np.geomspace(1 / 50, 50.0, 481)  # the grid the interval is evaluated on
    kept = [g for g in grid if mixture_evidence(series, both, null=float(g)) < 1 / 0.05]
    estimate = ratio_interval(series, 0.05)
    assert estimate.change == pytest.approx(55 / 40 - 1)
    assert (estimate.lower, estimate.upper) == pytest.approx((min(kept) - 1, max(kept) - 1))


def test_with_no_baseline_event_there_is_no_change_and_an_open_interval() -> None:
    assert ratio_interval([Counts(5, 100, 0, 100)], 0.05).change is None
    # Too little data to bound the ratio on either side: both ends are the grid's edges.
    assert ratio_interval([Counts(1, 10, 1, 10)], 0.05) == Estimate(0.0, None, None)


def test_a_ratio_beyond_the_grid_leaves_no_interval_but_keeps_the_change() -> None:
    assert ratio_interval([Counts(1000, 1000, 1, 1000)] * 5, 0.05) == Estimate(999.0, None, None)


def test_overwhelming_evidence_is_capped_at_e_to_the_700_and_stays_finite() -> None:
    assert rate_test([Counts(1000, 1000, 0, 1000)] * 5, 0.01).evidence == math.exp(700)


def test_bonferroni_raises_the_threshold() -> None:
    assert rate_test([Counts(1, 10, 1, 10)], 0.01, tests=18).threshold == 1800


def test_the_interval_covers_the_true_ratio_and_narrows_with_data() -> None:
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(100):
        estimate = ratio_interval(ticks(rng, 0.07, 0.1, n=2000, count=4), 0.05)
        assert estimate.lower is not None and estimate.upper is not None
        covered += estimate.lower <= -0.3 <= estimate.upper
    assert covered >= 93
    few = ratio_interval([Counts(7, 100, 10, 100)], 0.05)
    many = ratio_interval([Counts(700, 10000, 1000, 10000)], 0.05)
    assert few.change == pytest.approx(-0.3) and many.change == pytest.approx(-0.3)
    assert (many.upper or 0) - (many.lower or 0) < (few.upper or 9) - (few.lower or -9)


def _histogram(rng: np.random.Generator, sigma: float, n: int) -> tuple[tuple[float, ...], float]:
    bounds = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
    latencies = np.sort(rng.lognormal(np.log(0.05), sigma, n))
    cumulative = tuple(float(c) for c in np.searchsorted(latencies, bounds, side="right"))
    return cumulative, float(n)


def buckets(
    rng: np.random.Generator, sigma_c: float, sigma_b: float, count: int
) -> list[BucketTicks]:
    out = []
    for _ in range(count):
        canary, nc = _histogram(rng, sigma_c, 400)
        baseline, nb = _histogram(rng, sigma_b, 400)
        out.append(
            BucketTicks((0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0), canary, nc, baseline, nb)
        )
    return out


def test_a_wider_tail_with_the_same_median_is_caught_at_some_bucket() -> None:
    rng = np.random.default_rng(4)
    sigma = np.log(3) / 2.326  # p99 = 3 x median
    wider = np.log(6) / 2.326  # p99 doubled, same median
    result = histogram_test(buckets(rng, wider, sigma, 4), 0.01)
    assert result.test.rejected
    assert result.worst_bound is not None and result.worst_bound >= 0.1
    assert result.canary_exceedance is not None and result.baseline_exceedance is not None
    assert result.canary_exceedance > result.baseline_exceedance


def test_identical_latency_is_not_rejected() -> None:
    rng = np.random.default_rng(5)
    sigma = np.log(3) / 2.326
    rejected = sum(
        histogram_test(buckets(rng, sigma, sigma, 6), 0.01).test.rejected for _ in range(100)
    )
    assert rejected <= 2


def test_the_latency_test_pays_for_each_of_its_buckets() -> None:
    # Eight bounds are tested at once, so each must clear 8/alpha (Bonferroni): evidence that
    # would clear a single test's 1/alpha (here about 500) is not a regression yet.
    sigma = np.log(3) / 2.326
    wider = np.log(4) / 2.326
    result = histogram_test(buckets(np.random.default_rng(5), wider, sigma, 2), 0.01)
    assert result.test.threshold == pytest.approx(8 / 0.01)
    assert 1 / 0.01 < result.test.evidence < 8 / 0.01
    assert not result.test.rejected


def test_evidence_that_reaches_the_threshold_exactly_rejects() -> None:
    # Ville's inequality bounds the chance that the evidence ever *reaches* 1/alpha; the cap
    # at e^700 makes equality exact here.
    alpha = 1 / math.exp(700)
    overwhelming = [Counts(1000, 1000, 0, 1000)] * 5
    result = rate_test(overwhelming, alpha)
    assert result.evidence == result.threshold == math.exp(700)
    assert result.rejected
    single = histogram_test([BucketTicks((0.1,), (0.0,), 1000, (1000.0,), 1000)] * 5, alpha)
    assert single.test.evidence == single.test.threshold and single.test.rejected


def test_the_change_counts_only_requests_served() -> None:
    # A tick where the baseline served nothing is no evidence, but the canary's requests in it
    # were served; and no trial is invented for the side that served none.
    served = [Counts(10, 10, 10, 100), Counts(4, 40, 0, 0)]
    assert ratio_interval(served, 0.05).change == pytest.approx((14 / 50) / (10 / 100) - 1)
    assert ratio_interval([Counts(10, 10, 10, 100)], 0.05).change == pytest.approx(9.0)
    nothing = [Counts(0, 0, 0, 0), Counts(3, 0, 0, 0)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # quietly: no 0/0 on the way
        assert ratio_interval(nothing, 0.05) == Estimate(None, None, None)


def test_an_interval_end_one_grid_step_inside_the_edge_is_a_bound() -> None:
    # Only the grid's own ends (1/50 and 50) stand for "unbounded".
    low = ratio_interval([Counts(3, 100, 12, 100)], 0.05)
    assert low.lower == pytest.approx(float(np.geomspace(1 / 50, 50.0, 481)[1]) - 1)
    high = ratio_interval([Counts(12, 100, 3, 100)], 0.05)
    assert high.upper == pytest.approx(float(np.geomspace(1 / 50, 50.0, 481)[-2]) - 1)


def test_no_histogram_is_no_evidence() -> None:
    nothing = histogram_test([], 0.01)
    assert nothing == histogram_test([BucketTicks((), (), 10, (), 10)], 0.01)
    assert nothing.test == Sequential(1.0, 100.0, 1.0, False)
    assert (nothing.worst_bound, nothing.canary_exceedance, nothing.baseline_exceedance) == (
        None,
        None,
        None,
    )


def one_bucket(ticks: list[tuple[float, float, float, float]]) -> list[BucketTicks]:
    """Ticks of a histogram with one bound (1 s): (canary at or below it, canary total, the
    same for the baseline)."""
    return [BucketTicks((1.0,), (c,), nc, (b,), nb) for c, nc, b, nb in ticks]


# (canary at or below the bound, canary total, baseline at or below, baseline total)
AWKWARD_TICKS = [
    (50.0, 50.0, 0.0, 1.0),  # one baseline request, and it was slow; no slow canary one
    (80.0, 100.0, 90.0, 100.0),
    (101.0, 100.0, 101.0, 100.0),  # the bucket scraped after the total: none slower, not -1
    (0.0, 0.0, 45.0, 50.0),  # the canary served nothing: no evidence
    (0.0, 5.0, 0.0, 0.0),  # the baseline served nothing: no evidence either
    (0.0, 1.0, 100.0, 100.0),  # one canary request, and it was slow; no slow baseline one
]


def test_a_latency_bucket_is_the_rate_test_of_the_requests_slower_than_its_bound() -> None:
    result = histogram_test(one_bucket(AWKWARD_TICKS), 0.01)
    slower = [Counts(max(nc - c, 0), nc, max(nb - b, 0), nb) for c, nc, b, nb in AWKWARD_TICKS]
    expected = rate_test(slower, 0.01)
    assert expected.evidence > 1.0
    assert result.test.evidence == pytest.approx(expected.evidence)
    assert result.test.p_value == pytest.approx(expected.p_value)
    assert result.worst_bound == 1.0


def test_the_shares_slower_than_the_worst_bound_are_over_every_request_served() -> None:
    result = histogram_test(one_bucket(AWKWARD_TICKS), 0.01)
    # Canary: 0 + 20 + 0 + 0 + 5 + 1 slower out of 256; baseline: 1 + 10 + 0 + 5 + 0 + 0 of 351.
    assert result.canary_exceedance == pytest.approx(26 / 256)
    assert result.baseline_exceedance == pytest.approx(16 / 351)
    # A side that served nothing at all has no share.
    idle = histogram_test(one_bucket([(0.0, 0.0, 40.0, 50.0)] * 3), 0.01)
    assert idle.canary_exceedance is None and idle.baseline_exceedance == pytest.approx(0.2)
    idle = histogram_test(one_bucket([(40.0, 50.0, 0.0, 0.0)] * 3), 0.01)
    assert idle.baseline_exceedance is None and idle.canary_exceedance == pytest.approx(0.2)
    assert idle.test.evidence == 1.0


def test_the_worst_bound_is_the_bucket_with_the_most_evidence() -> None:
    # Three bounds over two ticks: only past 0.5 s is the canary much slower.
    bounds = (0.1, 0.5, 1.0)
    tick = BucketTicks(bounds, (10.0, 50.0, 100.0), 100, (10.0, 95.0, 100.0), 100)
    result = histogram_test([tick, tick], 0.01)
    assert result.worst_bound == 0.5
    assert (result.canary_exceedance, result.baseline_exceedance) == (0.5, 0.05)
    each = [
        rate_test([Counts(100 - c, 100, 100 - b, 100)] * 2, 0.01).evidence
        for c, b in zip(tick.canary, tick.baseline, strict=True)
    ]
    assert result.test.evidence == pytest.approx(max(each)) and each.index(max(each)) == 1
    assert result.test.threshold == pytest.approx(3 / 0.01)
    assert result.test.rejected and result.test.p_value == pytest.approx(1 / result.test.evidence)


def test_a_faster_canary_is_no_evidence_in_the_latency_test_and_a_huge_one_is_capped() -> None:
    faster = histogram_test([BucketTicks((0.1,), (100.0,), 100, (50.0,), 100)] * 3, 0.01)
    assert faster.test.evidence == 1.0 and faster.test.p_value == 1.0
    slower = histogram_test([BucketTicks((0.1,), (0.0,), 1000, (1000.0,), 1000)] * 5, 0.01)
    assert slower.test.evidence == math.exp(700)
    assert slower.test.p_value == pytest.approx(math.exp(-700))
