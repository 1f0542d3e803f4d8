"""How good is the judgement? Many synthetic canary analyses through the real analysis code.

No cluster and no Prometheus: a synthetic metrics provider serves cumulative counters that a
simulated canary and baseline produce tick by tick (Poisson traffic, binomial errors and
purchases, log-normal latencies counted into the pods' histogram buckets), and the
metrics-watcher's own ``Analyst`` (measure, compare, judge, verdict) runs each analysis with
a clock that jumps. A/A runs (canary identical to baseline) give the false-positive rate;
A/B runs (canary worse by a known amount) give the power and the time to detect.

    .venv/bin/python bench/judgement.py [--runs N] [--variant-runs N] [--seed S]

A second part runs experiments of several variants against one baseline on a business rate
(conversion) through ``experiment.Experiment``, the multi-variant decision rule; variants are
not yet carried by the services, so this part feeds the rule directly, look by look.

Targets (issue 4): false rollbacks below 1 % of A/A runs at alpha 0.01; a 5x error-rate
regression detected within 2 ticks in at least 95 % of runs; a p99-only 2x latency
regression detected in at least 90 % of runs.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from canaryflow.dataplane.shop import LATENCY_BUCKETS as BUCKETS
from canaryflow.metrics_watcher.analysis import AnalysisJob, Analyst
from canaryflow.metrics_watcher.experiment import (
    Experiment,
    ExperimentRule,
    Standing,
)
from canaryflow.metrics_watcher.progress import MemoryProgress
from canaryflow.metrics_watcher.stats import Counts, detection_time
from canaryflow.runtime.store import Versioned
from canaryflow_contracts.events import (
    AnalysisVerdict,
    PlannedStep,
    RequestAnalysis,
    TargetRef,
    VersionSpec,
)
from canaryflow_contracts.policy import ReleasePolicySpec
from canaryflow_contracts.state import ReleaseState, ReleaseStatus

Z_P99 = 2.3263478740408408
T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
TARGET = TargetRef(namespace="bench", name="shop")

# The traffic every run sees: per track and per tick (a 5 s tick at 100 requests/s per
# track, e.g. a 10 % canary of a 1000 requests/s service with a baseline of the same size).
REQUESTS_PER_TICK = 500
INTERVAL = 5.0
TICKS = 12  # a 60 s hold


@dataclass(frozen=True)
class Version:
    error_rate: float = 0.01
    median: float = 0.05
    p99: float = 0.15
    conversion: float = 0.05
    tail_probability: float = 0.0  # this share of requests is tail_multiplier times slower
    tail_multiplier: float = 1.0

    @property
    def sigma(self) -> float:
        return math.log(self.p99 / self.median) / Z_P99


@dataclass
class Track:
    """Cumulative counters of one track, advanced one tick at a time."""

    version: Version
    rng: np.random.Generator
    per_tick_mean: int = REQUESTS_PER_TICK
    requests: float = 0.0
    errors: float = 0.0
    visits: float = 0.0
    purchases: float = 0.0
    buckets: np.ndarray = field(default_factory=lambda: np.zeros(len(BUCKETS)))
    per_tick: list[float] = field(default_factory=list)

    def advance(self) -> None:
        n = int(self.rng.poisson(self.per_tick_mean))
        errors = int(self.rng.binomial(n, self.version.error_rate))
        purchases = int(self.rng.binomial(n - errors, self.version.conversion))
        latencies = self.rng.lognormal(math.log(self.version.median), self.version.sigma, n)
        if self.version.tail_probability:
            slow = self.rng.random(n) < self.version.tail_probability
            latencies[slow] *= self.version.tail_multiplier
        self.buckets += np.searchsorted(np.sort(latencies), BUCKETS, side="right")
        self.requests += n
        self.errors += errors
        self.visits += n
        self.purchases += purchases
        self.per_tick.append(n)


@dataclass
class SyntheticProvider:
    """Answers the analysis's queries from two simulated tracks (a tick starts with is_online)."""

    canary: Track
    baseline: Track
    name: str = "synthetic"
    started: bool = False

    def _track(self, query: str) -> Track:
        return self.canary if 'track="canary"' in query else self.baseline

    async def is_online(self) -> bool:
        # Each tick begins here: the tracks serve one interval of traffic first.
        if self.started:
            self.canary.advance()
            self.baseline.advance()
        self.started = True
        return True

    async def query(self, query: str) -> float | None:
        track = self._track(query)
        if "increase(" in query:  # the window's sample size
            window = int(re.search(r"\[(\d+)s\]", query).group(1))  # type: ignore[union-attr]
            return float(sum(track.per_tick[-max(1, round(window / INTERVAL)) :]))
        if "shop_purchases_total" in query:
            return track.purchases
        if "shop_visits_total" in query:
            return track.visits
        if 'code=~"5.."' in query:
            return track.errors
        return track.requests

    async def collection_gap(self, window_seconds: float) -> float | None:
        return 0.0  # the simulated source collects at every tick

    async def query_vector(self, query: str, label: str) -> dict[str, float]:
        track = self._track(query)
        values = {
            f"{bound:g}": float(count) for bound, count in zip(BUCKETS, track.buckets, strict=True)
        }
        values["+Inf"] = track.requests
        return values

    async def aclose(self) -> None:
        return None


class JumpingClock:
    def __init__(self) -> None:
        self.current = T0

    def now(self) -> datetime:
        return self.current

    async def sleep(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


class Analysing:
    async def get(self, release_id: str) -> Versioned | None:
        now = T0
        return Versioned(
            ReleaseState(
                release_id=release_id,
                target=TARGET,
                version=VersionSpec(image="registry.local/shop:v2"),
                policy="bench",
                requested_by="bench",
                steps=[PlannedStep(index=0, weight=10, hold_seconds=TICKS * INTERVAL)],
                status=ReleaseStatus.ANALYSING,
                phase_started_at=now,
                ready_deadline=now,
                created_at=now,
                updated_at=now,
            ),
            1,
        )


def policy(business: bool) -> ReleasePolicySpec:
    analysis: dict[str, object] = {
        "intervalSeconds": INTERVAL,
        "windowSeconds": 30,
        "minRequests": 100,
        "alpha": 0.01,
        "compare": [
            {"name": "errors", "template": "errors"},
            {"name": "latency", "template": "latency"},
        ],
        "verdicts": {"inconclusive": "continue"},
    }
    if business:
        analysis["business"] = [
            {"name": "conversion", "template": "conversion", "minimumDetectableEffect": 0.3}
        ]
    return ReleasePolicySpec.model_validate(
        {
            "targetRef": "shop",
            "steps": [{"weight": 10, "holdSeconds": TICKS * INTERVAL}],
            "analysis": analysis,
        }
    )


class FixedPolicy:
    def __init__(self, spec: ReleasePolicySpec) -> None:
        self.spec = spec

    async def get(self, namespace: str, name: str) -> ReleasePolicySpec:
        return self.spec


@dataclass(frozen=True)
class Run:
    failed: bool
    ticks: int | None  # ticks with data when it failed
    failing: tuple[str, ...]
    lift: tuple[float | None, float | None, float | None] | None


async def one_run(
    canary: Version,
    baseline: Version,
    spec: ReleasePolicySpec,
    rng: np.random.Generator,
    per_tick: int = REQUESTS_PER_TICK,
) -> Run:
    provider = SyntheticProvider(Track(canary, rng, per_tick), Track(baseline, rng, per_tick))
    verdicts: list[AnalysisVerdict] = []

    async def publish(release_id: str, verdict: AnalysisVerdict, event_id: str) -> None:
        verdicts.append(verdict)

    analyst = Analyst(
        provider=provider,
        clock=JumpingClock(),
        releases=Analysing(),
        policies=FixedPolicy(spec),
        publish=publish,
        progress=MemoryProgress(),
    )
    request = RequestAnalysis(
        target=TARGET,
        step=PlannedStep(index=0, weight=10, hold_seconds=TICKS * INTERVAL),
        canary_version="v2",
        stable_version="v1",
        policy="bench",
    )
    final = await analyst.run(AnalysisJob("bench", "bench-run", request, anchor=T0))
    assert final is not None
    failed = final.result.value == "fail"
    lift = None
    for check in final.checks:
        if check.method == "msprt-business":
            lift = (check.estimate, check.lower, check.upper)
    return Run(
        failed=failed,
        ticks=len(verdicts) - 1 if failed else None,  # the first tick only reads the base
        failing=tuple(c.metric for c in final.checks if c.passed is False),
        lift=lift,
    )


@dataclass(frozen=True)
class Scenario:
    name: str
    canary: Version
    business: bool = False
    per_tick: int = REQUESTS_PER_TICK
    runs_factor: float = 1.0


SCENARIOS = (
    Scenario("A/A: identical canary", Version(), runs_factor=2),
    Scenario("A/B: error rate 5x (1 % -> 5 %)", Version(error_rate=0.05)),
    Scenario("A/B: p99 2x, same median (150 -> 300 ms)", Version(p99=0.30)),
    Scenario("A/B: 2 % of requests 10x slower", Version(tail_probability=0.02, tail_multiplier=10)),
    Scenario("A/A: with a business metric", Version(), business=True),
    Scenario("A/B: conversion -30 % (5 % -> 3.5 %)", Version(conversion=0.035), business=True),
    Scenario("A/B: conversion -50 % (5 % -> 2.5 %)", Version(conversion=0.025), business=True),
    # Less traffic: how the same regressions fare with a fifth and a tenth of it.
    Scenario("A/B: error rate 5x at 100 requests/tick", Version(error_rate=0.05), per_tick=100),
    Scenario("A/B: error rate 5x at 50 requests/tick", Version(error_rate=0.05), per_tick=50),
    Scenario("A/B: p99 2x at 100 requests/tick", Version(p99=0.30), per_tick=100),
    Scenario("A/B: p99 2x at 50 requests/tick", Version(p99=0.30), per_tick=50),
    Scenario("A/A: at 50 requests/tick", Version(), per_tick=50, runs_factor=2),
)


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:5.1f} %"


async def single_canary(runs: int, seed: int) -> bool:
    rng = np.random.default_rng(seed)
    baseline = Version()
    print(
        f"judgement bench: {runs} runs per scenario; {REQUESTS_PER_TICK} requests per track per "
        f"{INTERVAL:g} s tick, hold {TICKS} ticks; alpha 0.01; baseline: 1 % errors, latency "
        f"median 50 ms / p99 150 ms, 5 % conversion"
    )
    ok = True
    for scenario in SCENARIOS:
        started = time.perf_counter()
        spec = policy(scenario.business)
        count = int(runs * scenario.runs_factor)
        results = [
            await one_run(scenario.canary, baseline, spec, rng, scenario.per_tick)
            for _ in range(count)
        ]
        failed = [r for r in results if r.failed]
        ticks = sorted(r.ticks for r in failed if r.ticks is not None)
        within2 = sum(1 for t in ticks if t <= 2)
        median = f"{ticks[len(ticks) // 2]}" if ticks else "-"
        line = (
            f"  {scenario.name:<44} {count:>5} runs  rolled back {_percent(len(failed), count)}"
            f"  within 2 ticks {_percent(within2, count)}  median ticks {median:>2}"
        )
        if scenario.business:
            lifts = [r.lift for r in results if r.lift is not None and r.lift[0] is not None]
            if lifts:
                true = scenario.canary.conversion / baseline.conversion - 1.0
                covered = sum(
                    1
                    for _, low, high in lifts
                    if (low is None or low <= true) and (high is None or true <= high)
                )
                line += f"  lift interval covers the truth {_percent(covered, len(lifts))}"
        print(f"{line}  ({time.perf_counter() - started:.0f}s)")
        if scenario.name.startswith("A/A") and len(failed) >= 0.01 * count:
            ok = False
        if scenario.name == "A/B: error rate 5x (1 % -> 5 %)" and within2 < 0.95 * count:
            ok = False
        if scenario.name.startswith("A/B: p99 2x, same") and len(failed) < 0.9 * count:
            ok = False
    return ok


# The multi-variant part: a shop of 50 visits a second converting 3 %, each variant and the
# baseline given 20 % of its visitors (10 a second each), looked at every 5 minutes for at
# most 8 hours; alpha 0.01 across every variant together.
SHOP_VISITS_PER_SECOND = 50.0
SHOP_CONVERSION = 0.03
SIDE_SHARE = 0.20
LOOK_SECONDS = 300.0
EXPERIMENT_LOOKS = 96
EXPERIMENT_ALPHA = 0.01


@dataclass(frozen=True)
class VariantScenario:
    name: str
    conversions: dict[str, float]  # each variant's true conversion rate
    better: str | None = None  # the one that should win
    worse: str | None = None  # the one that should be rolled back


@dataclass(frozen=True)
class ExperimentOutcome:
    winner: str | None
    ended_at: dict[str, tuple[Standing, float]]  # variant -> (why it ended, seconds)
    seconds: float  # when the experiment ended


VARIANT_SCENARIOS = (
    VariantScenario("A/A/A: three variants, none different", {"a": 0.03, "b": 0.03, "c": 0.03}),
    VariantScenario(
        "A/B/B: one variant +10 % conversion", {"a": 0.033, "b": 0.03, "c": 0.03}, better="a"
    ),
    VariantScenario(
        "A/B/B: one variant -20 % conversion", {"a": 0.024, "b": 0.03, "c": 0.03}, worse="a"
    ),
)


def one_experiment(scenario: VariantScenario, rng: np.random.Generator) -> ExperimentOutcome:
    rule = ExperimentRule(alpha=EXPERIMENT_ALPHA)
    experiment = Experiment(rule, list(scenario.conversions))
    mean_visits = SHOP_VISITS_PER_SECOND * SIDE_SHARE * LOOK_SECONDS
    ended: dict[str, tuple[Standing, float]] = {}
    for look in range(1, EXPERIMENT_LOOKS + 1):
        baseline_visits = int(rng.poisson(mean_visits))
        baseline = float(rng.binomial(baseline_visits, SHOP_CONVERSION))
        for name, rate in scenario.conversions.items():
            visits = int(rng.poisson(mean_visits))
            counts = Counts(float(rng.binomial(visits, rate)), visits, baseline, baseline_visits)
            experiment.add(name, [counts])
        decision = experiment.decide(final=look == EXPERIMENT_LOOKS)
        for variant in decision.variants:
            if variant.standing in {Standing.WORSE, Standing.SHORT}:
                ended.setdefault(variant.name, (variant.standing, look * LOOK_SECONDS))
        if decision.over:
            return ExperimentOutcome(decision.winner, ended, look * LOOK_SECONDS)
    raise AssertionError("the last look is final")


def _hours(seconds: list[float]) -> str:
    if not seconds:
        return "-"
    return f"{np.median(seconds) / 3600:.1f} h (p90 {np.percentile(seconds, 90) / 3600:.1f} h)"


def several_variants(runs: int, seed: int) -> bool:
    rng = np.random.default_rng(seed + 1)
    side = SHOP_VISITS_PER_SECOND * SIDE_SHARE
    print(
        f"\nmulti-variant experiments: {runs} runs per scenario; a shop of "
        f"{SHOP_VISITS_PER_SECOND:g} visits/s converting {SHOP_CONVERSION:.0%}, each variant "
        f"and the baseline {SIDE_SHARE:.0%} of visitors ({side:g}/s), a look every "
        f"{LOOK_SECONDS:g} s for at most {EXPERIMENT_LOOKS * LOOK_SECONDS / 3600:g} h; "
        f"alpha {EXPERIMENT_ALPHA} across all variants (Bonferroni: {EXPERIMENT_ALPHA / 3:.4f} "
        f"each); superiority with minimum lift 0"
    )
    ok = True
    for scenario in VARIANT_SCENARIOS:
        started = time.perf_counter()
        outcomes = [one_experiment(scenario, rng) for _ in range(runs)]
        promoted_wrongly = [o.winner not in {None, scenario.better} for o in outcomes]
        rolled_back_wrongly = [any(n != scenario.worse for n in o.ended_at) for o in outcomes]
        false_promotions, false_rollbacks = sum(promoted_wrongly), sum(rolled_back_wrongly)
        wrong = sum(p or r for p, r in zip(promoted_wrongly, rolled_back_wrongly, strict=True))
        line = (
            f"  {scenario.name:<40} {runs:>4} runs  false promotions "
            f"{_percent(false_promotions, runs)}  false rollbacks {_percent(false_rollbacks, runs)}"
            f"  runs with any wrong decision {_percent(wrong, runs)}"
        )
        if scenario.better is not None:
            found = [o.seconds for o in outcomes if o.winner == scenario.better]
            estimate = detection_time(
                baseline_rate=SHOP_CONVERSION,
                lift=scenario.conversions[scenario.better] / SHOP_CONVERSION - 1.0,
                variant_trials=side,
                baseline_trials=side,
                alpha=EXPERIMENT_ALPHA,
                variants=len(scenario.conversions),
            )
            line += (
                f"\n      promoted {_percent(len(found), runs)}, after {_hours(found)}; "
                f"detection_time estimated {estimate / 3600:.1f} h"
            )
        if scenario.worse is not None:
            caught = [
                o.ended_at[scenario.worse][1] for o in outcomes if scenario.worse in o.ended_at
            ]
            line += (
                f"\n      rolled back alone {_percent(len(caught), runs)}, after {_hours(caught)}"
            )
        print(f"{line}  ({time.perf_counter() - started:.0f}s)")
        if wrong > EXPERIMENT_ALPHA * runs:
            ok = False
    print("\n  how long a variant with +10 % conversion takes to be promoted (estimate), by share:")
    for share in (0.05, 0.10, 0.25):
        per_side = SHOP_VISITS_PER_SECOND * share
        times = [
            detection_time(
                baseline_rate=SHOP_CONVERSION,
                lift=0.10,
                variant_trials=per_side,
                baseline_trials=per_side,
                alpha=alpha,
                variants=variants,
            )
            / 3600
            for variants, alpha in ((1, 0.05), (2, 0.05), (3, 0.01))
        ]
        print(
            f"    variant and baseline {share:.0%} each ({per_side:g} visits/s): one variant at "
            f"alpha 0.05 {times[0]:.1f} h, two at 0.05 {times[1]:.1f} h, three at 0.01 "
            f"{times[2]:.1f} h"
        )
    return ok


async def main(runs: int, variant_runs: int, seed: int) -> int:
    ok = await single_canary(runs, seed)
    ok = several_variants(variant_runs, seed) and ok
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--variant-runs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=20261127)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.runs, args.variant_runs, args.seed)))
