"""The statistics canary analysis relies on, checked with seeded generators and a hand clock."""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from dataclasses import dataclass, field

import pytest

from canaryflow.runtime.behaviour import DEFAULT_BEHAVIOUR, Behaviour
from canaryflow.simulator.model import GroupKey, PodInfo, Route, ServiceKey, Target
from canaryflow.simulator.split import split_from_pods
from canaryflow.simulator.traffic import (
    Outcome,
    StickySessions,
    TrafficGenerator,
    poisson,
    serve,
)

SHOP = ServiceKey("demo", "shop")
STABLE = GroupKey("v1", "stable")
CANARY = GroupKey("v2", "canary")


@dataclass
class Recorder:
    requests: list[tuple[ServiceKey, GroupKey, Outcome]] = field(default_factory=list)
    unrouted_count: int = 0

    def record(self, service: ServiceKey, group: GroupKey, outcome: Outcome) -> None:
        self.requests.append((service, group, outcome))

    def unrouted(self, service: ServiceKey, count: int) -> None:
        self.unrouted_count += count

    def by_group(self) -> Counter[GroupKey]:
        return Counter(group for _, group, _ in self.requests)


class HandClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pods(stable: int, canary: int) -> list[PodInfo]:
    return [PodInfo(f"s{i}", "v1", "stable", True) for i in range(stable)] + [
        PodInfo(f"c{i}", "v2", "canary", True) for i in range(canary)
    ]


def target(
    stable: int,
    canary: int,
    rps: float = 100.0,
    canary_behaviour: Behaviour = DEFAULT_BEHAVIOUR,
) -> Target:
    routes = tuple(
        Route(share, canary_behaviour if share.group == CANARY else DEFAULT_BEHAVIOUR)
        for share in split_from_pods(pods(stable, canary))
    )
    return Target(service=SHOP, rps=rps, routes=routes)


def run(
    generator: TrafficGenerator, clock: HandClock, targets: list[Target], seconds: float
) -> int:
    generator.tick(targets)
    total = 0
    for _ in range(round(seconds / 0.1)):
        clock.now += 0.1
        total += generator.tick(targets)
    return total


@pytest.mark.parametrize("lam", [0.5, 2.0, 12.0, 75.0, 400.0])
def test_poisson_mean_and_variance(lam: float) -> None:
    rng = random.Random(7)
    draws = [poisson(rng, lam) for _ in range(20_000)]
    assert statistics.fmean(draws) == pytest.approx(lam, rel=0.03)
    assert statistics.pvariance(draws) == pytest.approx(lam, rel=0.06)


def test_poisson_of_nothing_is_zero() -> None:
    rng = random.Random(1)
    assert poisson(rng, 0.0) == 0
    assert poisson(rng, -3.0) == 0
    assert poisson(rng, math.nan) == 0


def test_nine_stable_one_canary_sends_a_tenth_to_the_canary() -> None:
    shares = []
    for seed in range(20):
        recorder, clock = Recorder(), HandClock()
        generator = TrafficGenerator(recorder, random.Random(seed), clock)
        run(generator, clock, [target(9, 1)], seconds=60)
        counts = recorder.by_group()
        shares.append(counts[CANARY] / sum(counts.values()))
    # 6000 requests per run: one run's standard error is about 0.4 points.
    assert all(0.085 < share < 0.115 for share in shares), shares
    assert statistics.fmean(shares) == pytest.approx(0.10, abs=0.005)


def test_rate_follows_rps_and_elapsed_time() -> None:
    recorder, clock = Recorder(), HandClock()
    generator = TrafficGenerator(recorder, random.Random(3), clock)
    total = run(generator, clock, [target(3, 1, rps=20.0)], seconds=100)
    assert total == len(recorder.requests)
    assert total == pytest.approx(2000, rel=0.06)


def test_first_tick_sends_nothing_and_late_ticks_catch_up() -> None:
    recorder, clock = Recorder(), HandClock()
    generator = TrafficGenerator(recorder, random.Random(5), clock, max_step_s=5.0)
    assert generator.tick([target(1, 0, rps=1000.0)]) == 0
    clock.now += 2.0
    assert generator.tick([target(1, 0, rps=1000.0)]) == pytest.approx(2000, rel=0.1)
    clock.now += 3600.0
    assert generator.tick([target(1, 0, rps=1000.0)]) == pytest.approx(5000, rel=0.1)
    clock.now -= 10.0
    assert generator.tick([target(1, 0, rps=1000.0)]) == 0


def test_no_ready_pod_means_unrouted_requests() -> None:
    recorder, clock = Recorder(), HandClock()
    generator = TrafficGenerator(recorder, random.Random(5), clock)
    run(generator, clock, [target(0, 0, rps=50.0)], seconds=10)
    assert recorder.requests == []
    assert recorder.unrouted_count == pytest.approx(500, rel=0.2)


def test_a_gone_service_gets_no_more_traffic() -> None:
    recorder, clock = Recorder(), HandClock()
    generator = TrafficGenerator(recorder, random.Random(5), clock)
    run(generator, clock, [target(2, 0)], seconds=5)
    before = len(recorder.requests)
    assert before > 0
    run(generator, clock, [], seconds=5)
    assert len(recorder.requests) == before


def test_error_rate_and_conversion_follow_the_behaviour() -> None:
    behaviour = Behaviour(error_rate=0.2, conversion_rate=0.1)
    rng = random.Random(11)
    outcomes = [serve(behaviour, rng) for _ in range(50_000)]
    errors = sum(o.code == "500" for o in outcomes) / len(outcomes)
    assert errors == pytest.approx(0.2, abs=0.01)
    assert {o.code for o in outcomes} == {"200", "500"}
    # A failed request never sells: purchases per visit are conversion x (1 - error rate).
    assert not any(o.purchased for o in outcomes if o.code == "500")
    purchases = sum(o.purchased for o in outcomes) / len(outcomes)
    assert purchases == pytest.approx(0.1 * 0.8, abs=0.005)


def test_zero_rates_are_exact() -> None:
    rng = random.Random(2)
    perfect = [serve(Behaviour(error_rate=0.0, conversion_rate=0.0), rng) for _ in range(5000)]
    assert all(o.code == "200" and not o.purchased for o in perfect)
    broken = [serve(Behaviour(error_rate=1.0, conversion_rate=1.0), rng) for _ in range(5000)]
    assert all(o.code == "500" and not o.purchased for o in broken)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@pytest.mark.parametrize(("median_ms", "p99_ms"), [(50, 150), (20, 400), (100, 110)])
def test_lognormal_median_and_p99_match_the_configuration(median_ms: float, p99_ms: float) -> None:
    behaviour = Behaviour(median_s=median_ms / 1000, p99_s=p99_ms / 1000)
    rng = random.Random(13)
    latencies = [serve(behaviour, rng).latency_s for _ in range(100_000)]
    assert percentile(latencies, 0.5) == pytest.approx(median_ms / 1000, rel=0.03)
    assert percentile(latencies, 0.99) == pytest.approx(p99_ms / 1000, rel=0.05)


def test_tail_regression_moves_the_tail_not_the_median() -> None:
    base = Behaviour(median_s=0.05, p99_s=0.15)
    tail = Behaviour(median_s=0.05, p99_s=0.15, tail_probability=0.03, tail_multiplier=10.0)
    rng = random.Random(17)
    normal = [serve(base, rng).latency_s for _ in range(50_000)]
    slow = [serve(tail, rng).latency_s for _ in range(50_000)]
    assert percentile(slow, 0.5) == pytest.approx(percentile(normal, 0.5), rel=0.05)
    assert percentile(slow, 0.99) > 4 * percentile(normal, 0.99)
    # Above 200 ms: nearly every tail request (10 x a 50 ms median) and almost no other one.
    share_slow = sum(lat > 0.2 for lat in slow) / len(slow)
    assert share_slow == pytest.approx(0.03, abs=0.005)


def test_each_group_is_served_with_its_own_behaviour() -> None:
    recorder, clock = Recorder(), HandClock()
    generator = TrafficGenerator(recorder, random.Random(21), clock)
    bad = Behaviour(error_rate=0.5)
    run(generator, clock, [target(1, 1, rps=200.0, canary_behaviour=bad)], seconds=30)
    errors: Counter[GroupKey] = Counter()
    for _, group, outcome in recorder.requests:
        errors[group] += outcome.code == "500"
    counts = recorder.by_group()
    assert errors[CANARY] / counts[CANARY] == pytest.approx(0.5, abs=0.03)
    assert errors[STABLE] / counts[STABLE] < 0.02


def test_same_seed_same_traffic() -> None:
    def once() -> list[tuple[GroupKey, str, float]]:
        recorder, clock = Recorder(), HandClock()
        run(TrafficGenerator(recorder, random.Random(99), clock), clock, [target(4, 1)], 5)
        return [(g, o.code, o.latency_s) for _, g, o in recorder.requests]

    assert once() == once()


def sticky_generator(users: int, session_s: float) -> tuple[Recorder, HandClock, TrafficGenerator]:
    recorder, clock = Recorder(), HandClock()
    sticky = StickySessions(users=users, mean_session_s=session_s)
    return recorder, clock, TrafficGenerator(recorder, random.Random(8), clock, sticky=sticky)


def test_sticky_users_keep_their_group_within_a_session() -> None:
    recorder, clock, generator = sticky_generator(users=50, session_s=1e9)
    run(generator, clock, [target(1, 1, rps=200.0)], seconds=10)
    pins = dict(generator._pins[SHOP])
    assert len(pins) == 50
    assert {pin.group for pin in pins.values()} == {STABLE, CANARY}
    run(generator, clock, [target(1, 1, rps=200.0)], seconds=10)
    assert generator._pins[SHOP] == pins
    # Only whole users move: the canary's share of traffic is about its share of users.
    canary_users = sum(pin.group == CANARY for pin in pins.values()) / len(pins)
    counts = recorder.by_group()
    assert counts[CANARY] / sum(counts.values()) == pytest.approx(canary_users, abs=0.05)


def test_sticky_users_move_when_their_group_loses_its_pods() -> None:
    recorder, clock, generator = sticky_generator(users=20, session_s=1e9)
    run(generator, clock, [target(1, 1, rps=200.0)], seconds=5)
    recorder.requests.clear()
    run(generator, clock, [target(1, 0, rps=200.0)], seconds=5)
    assert set(recorder.by_group()) == {STABLE}


def test_sticky_split_converges_to_the_shares_as_sessions_end() -> None:
    recorder, clock, generator = sticky_generator(users=2000, session_s=2.0)
    # Everyone is pinned to stable before the canary exists ...
    run(generator, clock, [target(1, 0, rps=500.0)], seconds=10)
    recorder.requests.clear()
    # ... and sessions ending let the canary reach its share within a few session lengths.
    run(generator, clock, [target(3, 1, rps=500.0)], seconds=10)
    recorder.requests.clear()
    run(generator, clock, [target(3, 1, rps=500.0)], seconds=30)
    counts = recorder.by_group()
    assert counts[CANARY] / sum(counts.values()) == pytest.approx(0.25, abs=0.02)
