"""Turning a split into requests, kept free of I/O and of real time.

Canary analysis is statistics, so the tests must be able to check the statistics: the
random generator and the clock are injected, and one tick can be driven by hand. Arrivals
are a Poisson process (what independent users produce) rather than a fixed count per tick,
so rates in Prometheus fluctuate the way real traffic does.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from canaryflow.runtime.behaviour import Behaviour
from canaryflow.simulator.model import GroupKey, Route, ServiceKey, Target

# Knuth's method multiplies uniforms until the product drops below exp(-lam); above this
# mean exp(-lam) loses precision and the loop gets long, so larger means are drawn as a sum
# of independent Poisson draws (a sum of Poissons is Poisson).
_POISSON_CHUNK = 30.0

Clock = Callable[[], float]


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson-distributed count with mean ``lam``."""
    if not lam > 0.0:
        return 0
    count = 0
    while lam > _POISSON_CHUNK:
        count += _poisson_small(rng, _POISSON_CHUNK)
        lam -= _POISSON_CHUNK
    return count + _poisson_small(rng, lam)


def _poisson_small(rng: random.Random, lam: float) -> int:
    limit = math.exp(-lam)
    count = 0
    product = rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


@dataclass(frozen=True)
class Outcome:
    code: str
    latency_s: float
    purchased: bool


def serve(behaviour: Behaviour, rng: random.Random) -> Outcome:
    """One request served by a version that behaves as configured.

    Every request is a visit; only a request that succeeded can end in a purchase, so a
    version that fails also loses sales (observed purchases per visit are
    conversion_rate x (1 - error_rate)).
    """
    failed = rng.random() < behaviour.error_rate
    latency = rng.lognormvariate(behaviour.mu, behaviour.sigma)
    if behaviour.tail_probability > 0.0 and rng.random() < behaviour.tail_probability:
        latency *= behaviour.tail_multiplier
    purchased = not failed and rng.random() < behaviour.conversion_rate
    return Outcome(code="500" if failed else "200", latency_s=latency, purchased=purchased)


class RequestSink(Protocol):
    def record(self, service: ServiceKey, group: GroupKey, outcome: Outcome) -> None: ...

    def unrouted(self, service: ServiceKey, count: int) -> None: ...


@dataclass(frozen=True)
class StickySessions:
    """Users drawn from a pool keep the group they first saw for a session.

    Sessions end after an exponentially distributed time (mean ``mean_session_s``); without
    an end, every user pinned before a canary existed would never see it.
    """

    users: int
    mean_session_s: float


@dataclass(frozen=True)
class _Pin:
    group: GroupKey
    expires: float


class TrafficGenerator:
    def __init__(
        self,
        sink: RequestSink,
        rng: random.Random,
        clock: Clock = time.monotonic,
        sticky: StickySessions | None = None,
        max_step_s: float = 5.0,
    ) -> None:
        self._sink = sink
        self._rng = rng
        self._clock = clock
        self._sticky = sticky
        self._max_step_s = max_step_s
        self._last: float | None = None
        self._pins: dict[ServiceKey, dict[int, _Pin]] = {}

    def tick(self, targets: Iterable[Target]) -> int:
        """Generate the requests due since the previous tick; return how many.

        The elapsed time is measured rather than assumed, so a late tick makes up for the
        time it missed and the long-run rate stays right. A step longer than ``max_step_s``
        (a suspended process) is cut short instead of sending one huge burst.
        """
        now = self._clock()
        elapsed = 0.0 if self._last is None else min(max(now - self._last, 0.0), self._max_step_s)
        self._last = now
        total = 0
        seen: set[ServiceKey] = set()
        for target in targets:
            seen.add(target.service)
            total += self.generate(target, elapsed, now)
        for gone in set(self._pins) - seen:
            del self._pins[gone]
        return total

    def generate(self, target: Target, elapsed_s: float, now: float) -> int:
        """Requests for one Service over ``elapsed_s`` seconds."""
        count = poisson(self._rng, target.rps * elapsed_s)
        if count == 0:
            return 0
        routes = [route for route in target.routes if route.share.weight > 0.0]
        if not routes:
            self._sink.unrouted(target.service, count)
            return count
        for route in self._choose(target.service, routes, count, now):
            self._sink.record(target.service, route.group, serve(route.behaviour, self._rng))
        return count

    def _choose(
        self, service: ServiceKey, routes: Sequence[Route], count: int, now: float
    ) -> list[Route]:
        cumulative = list(itertools.accumulate(route.share.weight for route in routes))
        if self._sticky is None:
            return self._rng.choices(routes, cum_weights=cumulative, k=count)
        pins = self._pins.setdefault(service, {})
        by_group = {route.group: route for route in routes}
        chosen: list[Route] = []
        for _ in range(count):
            user = self._rng.randrange(self._sticky.users)
            pin = pins.get(user)
            route = by_group.get(pin.group) if pin is not None and pin.expires > now else None
            if route is None:
                route = self._rng.choices(routes, cum_weights=cumulative)[0]
                session = self._rng.expovariate(1.0 / self._sticky.mean_session_s)
                pins[user] = _Pin(route.group, now + session)
            chosen.append(route)
        return chosen
