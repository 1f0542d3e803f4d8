"""The multi-variant decision: who wins, who is rolled back alone, and the error across all."""

from __future__ import annotations

import math

import numpy as np
import pytest

from canaryflow.metrics_watcher.experiment import (
    Experiment,
    ExperimentRule,
    Rule,
    Settle,
    Standing,
)
from canaryflow.metrics_watcher.stats import (
    ConfidenceSequence,
    Counts,
    detection_time,
    ratio_interval,
)

VISITS = 2000  # per side and look


def look(rng: np.random.Generator, variant_rate: float, baseline_rate: float) -> Counts:
    return Counts(
        float(rng.binomial(VISITS, variant_rate)),
        VISITS,
        float(rng.binomial(VISITS, baseline_rate)),
        VISITS,
    )


def feed(experiment: Experiment, rng: np.random.Generator, rates: dict[str, float]) -> None:
    """One look: every variant against the one baseline they share."""
    baseline = float(rng.binomial(VISITS, 0.05))
    for name, rate in rates.items():
        experiment.add(name, [Counts(float(rng.binomial(VISITS, rate)), VISITS, baseline, VISITS)])


def test_the_incremental_interval_is_the_interval_over_every_look() -> None:
    rng = np.random.default_rng(3)
    ticks = [look(rng, 0.06, 0.05) for _ in range(15)]
    sequence = ConfidenceSequence(0.05)
    for tick in ticks:
        sequence.add([tick])
    assert sequence.estimate() == ratio_interval(ticks, 0.05)
    assert sequence.looks == 15


def test_a_variant_that_sells_more_wins_and_the_equal_one_loses() -> None:
    rng = np.random.default_rng(1)
    experiment = Experiment(ExperimentRule(alpha=0.05), ["a", "b"])
    for _ in range(200):
        feed(experiment, rng, {"a": 0.05, "b": 0.065})
        decision = experiment.decide()
        if decision.over:
            break
    assert decision.over and decision.winner == "b", decision
    assert decision.of("b").standing is Standing.WINNER
    lower = decision.of("b").estimate.lower
    assert lower is not None and lower > 0.0
    assert decision.of("a").standing in {Standing.LOST, Standing.SHORT, Standing.WORSE}
    assert "b wins" in decision.reason


def test_a_worse_variant_is_ended_alone_and_the_others_go_on() -> None:
    rng = np.random.default_rng(2)
    experiment = Experiment(ExperimentRule(alpha=0.05), ["a", "b"])
    for _ in range(200):
        feed(experiment, rng, {"a": 0.03, "b": 0.05})
        decision = experiment.decide()
        if decision.of("a").standing is Standing.WORSE:
            break
    assert decision.of("a").standing is Standing.WORSE, decision
    assert not decision.over
    assert decision.of("b").standing is Standing.RUNNING
    assert "sells less than the baseline" in decision.of("a").reason
    ended = decision.of("a").estimate
    experiment.add("a", [Counts(500, VISITS, 1, VISITS)])  # it no longer serves: ignored
    assert experiment.decide().of("a").estimate == ended


def test_with_none_better_by_the_end_stable_stays() -> None:
    rng = np.random.default_rng(4)
    experiment = Experiment(ExperimentRule(minimum_lift=0.05, alpha=0.05), ["a", "b"])
    for _ in range(5):
        feed(experiment, rng, {"a": 0.05, "b": 0.05})
        assert not experiment.decide().over
    decision = experiment.decide(final=True)
    assert decision.over and decision.winner is None
    assert "stable stays" in decision.reason
    assert {v.standing for v in decision.variants} <= {Standing.LOST, Standing.SHORT}


def test_settling_on_the_best_waits_until_one_is_surely_best_or_time_is_up() -> None:
    rng = np.random.default_rng(5)
    experiment = Experiment(ExperimentRule(alpha=0.05, settle=Settle.BEST), ["a", "b"])
    for _ in range(40):
        feed(experiment, rng, {"a": 0.07, "b": 0.071})
        decision = experiment.decide()
        assert not decision.over, decision  # both qualify, neither is surely the better one
    assert {v.standing for v in decision.variants} == {Standing.QUALIFIED}
    final = experiment.decide(final=True)
    lowers = {v.name: v.estimate.lower or 0.0 for v in decision.variants}
    assert final.winner == max(lowers, key=lambda n: lowers[n])
    assert "time ran out" in final.reason


def test_settling_on_the_first_ends_when_one_qualifies_and_the_best_of_those_wins() -> None:
    rng = np.random.default_rng(5)
    first = Experiment(ExperimentRule(alpha=0.05), ["a", "b", "c"])
    best = Experiment(ExperimentRule(alpha=0.05, settle=Settle.BEST), ["a", "b", "c"])
    rates = {"a": 0.05, "b": 0.07, "c": 0.071}
    for _ in range(200):
        baseline = float(rng.binomial(VISITS, 0.05))
        for name, rate in rates.items():
            counts = [Counts(float(rng.binomial(VISITS, rate)), VISITS, baseline, VISITS)]
            first.add(name, counts)
            best.add(name, counts)
        decision = first.decide()
        if decision.over:
            break
    assert decision.winner in {"b", "c"}, decision
    qualified = [v for v in decision.variants if v.estimate.lower and v.estimate.lower > 0]
    assert decision.of(decision.winner).estimate.lower == max(
        v.estimate.lower or 0.0 for v in qualified
    )
    assert not best.decide().over  # the same data is not enough to call the best


def test_non_inferiority_promotes_a_variant_that_sells_no_less_than_the_margin() -> None:
    rng = np.random.default_rng(6)
    experiment = Experiment(ExperimentRule(Rule.NON_INFERIORITY, margin=0.2, alpha=0.05), ["a"])
    for _ in range(200):
        feed(experiment, rng, {"a": 0.05})
        decision = experiment.decide()
        if decision.over:
            break
    assert decision.winner == "a", decision


def test_the_error_rate_is_shared_by_the_variants() -> None:
    rng = np.random.default_rng(7)
    ticks = [look(rng, 0.055, 0.05) for _ in range(10)]
    one = Experiment(ExperimentRule(alpha=0.05), ["a"])
    three = Experiment(ExperimentRule(alpha=0.05), ["a", "b", "c"])
    one.add("a", ticks)
    three.add("a", ticks)
    assert three.level == pytest.approx(0.05 / 3)
    narrow, wide = one.decide().of("a").estimate, three.decide().of("a").estimate
    assert wide.lower is not None and narrow.lower is not None
    assert wide.lower < narrow.lower and (wide.upper or 0) > (narrow.upper or 0)


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        (lambda: ExperimentRule(alpha=0.0), "alpha"),
        (lambda: ExperimentRule(minimum_lift=-0.1), "non-negative"),
        (lambda: Experiment(ExperimentRule(), ["a", "a"]), "distinct"),
        (lambda: Experiment(ExperimentRule(), []), "one or more"),
    ],
)
def test_a_wrong_rule_is_refused_with_the_reason(rule: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        rule()  # type: ignore[operator]


def shop_detection(per_side: float = 5.0, lift: float = 0.10, variants: int = 2) -> float:
    return detection_time(
        baseline_rate=0.03,
        lift=lift,
        variant_trials=per_side,
        baseline_trials=per_side,
        alpha=0.05,
        variants=variants,
    )


def test_detection_time_follows_traffic_variants_and_effect() -> None:
    seconds = shop_detection()
    assert shop_detection(per_side=10.0) == pytest.approx(seconds / 2)
    assert shop_detection(variants=4) > seconds
    assert shop_detection(lift=0.2) < seconds
    assert shop_detection(lift=0.0) == math.inf
    # Ruling a 10 % drop out for a canary that changes nothing: as long as finding a 10 % lift.
    no_change = detection_time(
        baseline_rate=0.03, lift=0.0, variant_trials=5.0, baseline_trials=5.0, alpha=0.05, bar=-0.1
    )
    assert 0.5 * shop_detection(variants=1) < no_change < 2 * shop_detection(variants=1)


def test_detection_time_is_near_the_median_of_simulated_experiments() -> None:
    rng = np.random.default_rng(8)
    rate, lift, per_look = 0.05, 0.25, 400  # visits per side and 1-second look
    estimate = detection_time(
        baseline_rate=rate,
        lift=lift,
        variant_trials=per_look,
        baseline_trials=per_look,
        alpha=0.05,
        variants=1,
    )
    times = []
    for _ in range(30):
        sequence = ConfidenceSequence(0.05)
        for second in range(1, 2000):
            sequence.add(
                [
                    Counts(
                        float(rng.binomial(per_look, rate * (1 + lift))),
                        per_look,
                        float(rng.binomial(per_look, rate)),
                        per_look,
                    )
                ]
            )
            lower = sequence.estimate().lower
            if lower is not None and lower > 0.0:
                times.append(second)
                break
    assert len(times) == 30
    assert 0.5 < float(np.median(times)) / estimate < 2.0, (np.median(times), estimate)
