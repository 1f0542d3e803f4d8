"""Several variants against one live baseline: does one of them sell more, and which?

A UX team's question ("will the new layout sell more?") is a decision among K variants on a
business rate (purchases per visit), each served beside the baseline. This module is that
decision, on counts only, with the error rate controlled across the variants together.

The rule
--------
Each variant's ratio of rates to the baseline (its lift, ratio - 1) is followed with the
anytime-valid confidence sequence of ``stats.ConfidenceSequence`` at level ``alpha / K``
(Bonferroni over the K variants, fixed when the experiment starts). By the union bound the K
intervals cover their true lifts *all at once and at every look* with probability at least
``1 - alpha``, whatever the dependence the shared baseline creates between them and whenever
the experiment stops. Every decision below is a statement about the intervals, so on that
event no decision is wrong: the probability of *any* false promotion or false rollback, across
all variants and all looks together (the family-wise error), is at most ``alpha``.

At each look, with ``bar`` the lift a winner must surely exceed (``minimum_lift`` for
superiority, ``-margin`` for non-inferiority):

- a variant whose interval lies wholly below the bar cannot win: it is ended and rolled back
  alone (``worse`` when the interval is also below 0, i.e. it surely sells less than the
  baseline; ``short`` when it is merely short of the bar); its share goes back to stable,
  never to the other variants;
- a variant whose interval lies wholly above the bar *qualifies*;
- ``settle: first`` (the default) ends the experiment at the first look where any variant
  qualifies; when several qualify at once, the one with the highest lower bound wins;
- ``settle: best`` ends it only when a qualified variant has the highest lower bound and no
  variant still running could be better than it (every other upper bound at or below its
  lower bound): slower, as variants close to each other take long to tell apart;
- at the end of the experiment's time, the qualified variant with the highest lower bound
  wins (the others are rolled back); with none qualified, stable stays.

"Best" is claimed only with confidence: the winner's lift is surely above the bar, and under
``settle: best`` (ended before its time) surely at least that of every variant still
running. Under ``settle: first`` the winner is a variant that surely sells more, possibly not
the one that sells most. ``stats.detection_time`` says beforehand how long a variant with a
given lift takes to qualify at the traffic it will get.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from canaryflow.metrics_watcher.stats import ConfidenceSequence, Counts, Estimate


class Rule(StrEnum):
    SUPERIORITY = "superiority"  # promote a variant that surely sells more (by minimum_lift)
    NON_INFERIORITY = "non-inferiority"  # promote one that surely sells no less than -margin


class Settle(StrEnum):
    FIRST = "first"  # the first variant that qualifies wins
    BEST = "best"  # a qualified variant wins once no other could be better


@dataclass(frozen=True)
class ExperimentRule:
    rule: Rule = Rule.SUPERIORITY
    minimum_lift: float = 0.0  # superiority: the lift a winner must surely exceed (0.02: +2 %)
    margin: float = 0.0  # non-inferiority: how much less a winner may sell (0.01: -1 %)
    alpha: float = 0.05  # the family-wise error rate, across every variant and look
    settle: Settle = Settle.FIRST

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be between 0 and 1, not {self.alpha}")
        if self.minimum_lift < 0.0 or self.margin < 0.0:
            raise ValueError("minimum_lift and margin are non-negative fractions (0.02: 2 %)")

    @property
    def bar(self) -> float:
        """The lift a variant's whole interval must lie above to qualify."""
        return self.minimum_lift if self.rule is Rule.SUPERIORITY else -self.margin


class Standing(StrEnum):
    RUNNING = "running"  # undecided
    QUALIFIED = "qualified"  # surely above the bar; may still lose to a better one
    WINNER = "winner"
    WORSE = "worse"  # surely sells less than the baseline: rolled back alone
    SHORT = "short"  # surely below the bar (not surely worse): rolled back alone
    LOST = "lost"  # the experiment ended with another winner, or with none


@dataclass(frozen=True)
class VariantStanding:
    name: str
    standing: Standing
    estimate: Estimate
    reason: str


@dataclass(frozen=True)
class Decision:
    over: bool
    winner: str | None
    variants: tuple[VariantStanding, ...]
    reason: str

    def of(self, name: str) -> VariantStanding:
        return next(v for v in self.variants if v.name == name)


def _percent(value: float | None, unbounded: str) -> str:
    return unbounded if value is None else f"{value:+.1%}"


def _interval(estimate: Estimate) -> str:
    return (
        f"lift {_percent(estimate.change, 'unknown')} "
        f"[{_percent(estimate.lower, '-inf')}, {_percent(estimate.upper, '+inf')}]"
    )


class Experiment:
    """The variants' intervals, fed look by look, and the decision they support."""

    def __init__(self, rule: ExperimentRule, variants: Sequence[str]) -> None:
        if not variants or len(set(variants)) != len(variants):
            raise ValueError("an experiment needs one or more variants with distinct names")
        self.rule = rule
        # Bonferroni over the variants the experiment started with (never fewer later).
        self.level = rule.alpha / len(variants)
        self._sequences = {name: ConfidenceSequence(self.level) for name in variants}
        self._ended: dict[str, VariantStanding] = {}

    def add(self, variant: str, ticks: Sequence[Counts]) -> None:
        """The next looks' counts of ``variant`` against the baseline (an ended one's are
        ignored: it no longer serves)."""
        if variant not in self._ended:
            self._sequences[variant].add(ticks)

    def decide(self, *, final: bool = False) -> Decision:
        """The decision the intervals support now; ``final``: the experiment's time is up."""
        bar = self.rule.bar
        live: dict[str, Estimate] = {}
        for name, sequence in self._sequences.items():
            if name in self._ended:
                continue
            estimate = sequence.estimate()
            if estimate.upper is not None and estimate.upper < bar:
                worse = estimate.upper < 0.0
                why = (
                    f"sells less than the baseline: {_interval(estimate)}"
                    if worse
                    else f"cannot reach the bar of {bar:+.1%}: {_interval(estimate)}"
                )
                standing = Standing.WORSE if worse else Standing.SHORT
                self._ended[name] = VariantStanding(name, standing, estimate, why)
            else:
                live[name] = estimate
        qualified = {n: e for n, e in live.items() if e.lower is not None and e.lower > bar}
        best = max(qualified, key=lambda n: qualified[n].lower or 0.0, default=None)
        if best is not None:
            floor = qualified[best].lower or 0.0
            rivals = [
                n for n, e in live.items() if n != best and (e.upper is None or e.upper > floor)
            ]
            if final or not rivals or self.rule.settle is Settle.FIRST:
                why = f"surely above {bar:+.1%}"
                if rivals and final:
                    why += ", the best lower bound when time ran out"
                elif rivals:
                    why += ", the first to qualify"
                return self._over(best, live, f"{best} wins: {_interval(live[best])}, {why}")
        if not live:
            return self._over(None, live, "every variant was ended: stable stays")
        if final:
            return self._over(
                None, live, f"no variant surely above {bar:+.1%} in time: stable stays"
            )
        standings = tuple(self._ended.values()) + tuple(
            VariantStanding(
                n,
                Standing.QUALIFIED if n in qualified else Standing.RUNNING,
                e,
                _interval(e),
            )
            for n, e in live.items()
        )
        return Decision(False, None, self._ordered(standings), "running")

    def _over(self, winner: str | None, live: Mapping[str, Estimate], reason: str) -> Decision:
        standings = list(self._ended.values())
        for name, estimate in live.items():
            if name == winner:
                standings.append(VariantStanding(name, Standing.WINNER, estimate, reason))
            else:
                why = f"{winner} won" if winner else reason
                standings.append(
                    VariantStanding(name, Standing.LOST, estimate, f"{why}; {_interval(estimate)}")
                )
        return Decision(True, winner, self._ordered(tuple(standings)), reason)

    def _ordered(self, standings: tuple[VariantStanding, ...]) -> tuple[VariantStanding, ...]:
        order = list(self._sequences)
        return tuple(sorted(standings, key=lambda v: order.index(v.name)))
