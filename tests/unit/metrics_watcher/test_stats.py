"""The sequential tests: valid under the null at every look, powerful against regressions."""

from __future__ import annotations

import numpy as np
import pytest

from canaryflow.metrics_watcher.stats import (
    BucketTicks,
    Counts,
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
