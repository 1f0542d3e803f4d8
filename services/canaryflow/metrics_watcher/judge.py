"""The judge: measured values in, checks and a verdict out, with no I/O.

Fail safe above all: a check passes only on a value, a threshold it respects and enough
canary requests behind it. No data, too little traffic, or a metrics backend that did not
answer make the check undecided (``passed=None``), and an undecided check makes the verdict
``insufficient_data``, never ``pass``. A definite failure wins over everything else, because
the evidence for it is already in hand.

Thresholds apply to the canary; the baseline track's values travel in the same verdict as
evidence for a person. Sequential comparisons against the baseline (``compare``) arrive here
already judged, with ``passed`` None when they are undecided: with enough data on both
tracks that is *inconclusive* (the test could not settle the question yet), with too little
it is insufficient data, exactly like a threshold check.

A share of requests (the ``error-rate`` templates) above ``max`` fails only when chance
cannot explain it at the window's sample size: a good version erring on 0.5 % of requests
shows 2 errors in 34 requests (5.9 %) about once in 80 windows, and a guard at 5 % on the
point estimate rolled such a version back (test_forgery, on real traffic). The one-sided
binomial test asks whether that many errors are likely if the true share were ``max``; below
``GUARD_ALPHA`` the check fails, otherwise it is not settled yet and the next tick, with more
requests, decides (a version erring on 20 % fails at 34 requests either way).

Actions: a failure is final and asks for a rollback at once (or, for a business metric whose
policy says so, a pause for a person's decision). A tick that is not final says ``continue``
whatever its result, because the analysis goes on; at the end of the hold the policy's
``verdicts`` say what insufficient data and inconclusive lead to: extend the hold (while
extensions are left, then pause), pause, roll back, or (inconclusive only) continue.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from scipy import stats

from canaryflow_contracts.events import BINOMIAL_GUARD, MetricCheck, VerdictAction, VerdictResult
from canaryflow_contracts.policy import MetricRule, MetricTemplate, OnVerdict, VerdictPolicy

CANARY = "canary"
STABLE = "stable"
SAMPLE_SIZE = "sample-size"

Comparison = Literal["<=", ">=", "n/a"]

PROPORTIONS = frozenset({MetricTemplate.ERROR_RATE, MetricTemplate.GATEWAY_ERROR_RATE})
"""Built-in templates whose value is a share of the window's requests."""
GUARD_ALPHA = 0.01


def beyond_chance(share: float, requests: float, bound: float) -> float:
    """P(at least this many errors | ``requests`` requests, each an error with ``bound``)."""
    trials = round(requests)
    events = min(round(share * requests), trials)
    return float(stats.binom.sf(events - 1, trials, bound))


def judge(
    rule: MetricRule,
    canary_value: float | None,
    sample_size: float,
    min_requests: int,
    *,
    query: str,
) -> MetricCheck:
    """The canary's check for one rule.

    With both ``max`` and ``min`` set, the check names the bound that failed, or ``max`` when
    the value respects both.
    """
    threshold, comparison = _bound(rule)
    passed: bool | None
    if canary_value is None or sample_size < min_requests:
        passed = None
    elif (
        rule.max is not None
        and canary_value > rule.max
        and rule.template in PROPORTIONS
        and math.isfinite(canary_value)
    ):
        p_value = beyond_chance(canary_value, sample_size, rule.max)
        failed = p_value < GUARD_ALPHA
        return MetricCheck(
            metric=rule.name,
            track=CANARY,
            query=query,
            value=canary_value,
            threshold=rule.max,
            comparison="<=",
            sample_size=sample_size,
            passed=False if failed else None,
            method=BINOMIAL_GUARD,
            p_value=p_value,
            decision=(
                f"above max beyond chance (p={p_value:.2g} < {GUARD_ALPHA:g})"
                if failed
                else f"{_number(canary_value)} above max {_number(rule.max)} on "
                f"{sample_size:.0f} requests, within chance (p={p_value:.2g} >= {GUARD_ALPHA:g})"
            ),
        )
    elif rule.max is not None and canary_value > rule.max:
        threshold, comparison, passed = rule.max, "<=", False
    elif rule.min is not None and canary_value < rule.min:
        threshold, comparison, passed = rule.min, ">=", False
    else:
        passed = True
    return MetricCheck(
        metric=rule.name,
        track=CANARY,
        query=query,
        value=canary_value,
        threshold=threshold,
        comparison=comparison,
        sample_size=sample_size,
        passed=passed,
    )


def sample_check(
    sample_size: float | None, min_requests: int, *, query: str, track: str = CANARY
) -> MetricCheck:
    """How many requests the window holds: the canary's must reach ``min_requests``."""
    size = sample_size or 0.0
    if track != CANARY:
        return evidence(SAMPLE_SIZE, sample_size, size, query=query, track=track)
    return MetricCheck(
        metric=SAMPLE_SIZE,
        track=track,
        query=query,
        value=sample_size,
        threshold=float(min_requests),
        comparison=">=",
        sample_size=size,
        passed=True if size >= min_requests else None,
    )


def evidence(
    metric: str, value: float | None, sample_size: float, *, query: str, track: str = STABLE
) -> MetricCheck:
    """A measured value that is shown, not judged (the stable track's numbers)."""
    return MetricCheck(
        metric=metric,
        track=track,
        query=query,
        value=value,
        threshold=None,
        comparison="n/a",
        sample_size=sample_size,
        passed=None,
    )


def inconclusive(check: MetricCheck, min_requests: int) -> bool:
    """An undecided test with enough data (on both tracks, for a comparison): it has not
    settled yet."""
    if check.passed is not None or not check.method or check.sample_size < min_requests:
        return False
    return check.method == BINOMIAL_GUARD or (check.baseline_sample_size or 0.0) >= min_requests


def _at_end(policy: OnVerdict, extensions_left: int) -> VerdictAction:
    if policy is OnVerdict.EXTEND:
        return VerdictAction.EXTEND if extensions_left > 0 else VerdictAction.PAUSE
    return VerdictAction(policy.value)


def verdict(
    checks: Sequence[MetricCheck],
    *,
    min_requests: int,
    provider_error: str | None = None,
    final: bool = False,
    actions: VerdictPolicy | None = None,
    extensions_left: int = 0,
    pause_on_fail: frozenset[str] = frozenset(),
) -> tuple[VerdictResult, VerdictAction, str]:
    """The result of one tick (or, with ``final``, of the step) from its checks.

    ``pause_on_fail`` names checks whose failure holds the release for a person instead of
    rolling it back (business metrics with ``onDrop: pause``).
    """
    actions = actions or VerdictPolicy()
    canary = [check for check in checks if check.track == CANARY]
    failed = [check for check in canary if check.passed is False]
    if failed:
        reason = "; ".join(_describe_failure(check) for check in failed)
        if all(check.metric in pause_on_fail for check in failed):
            return VerdictResult.FAIL, VerdictAction.PAUSE, f"{reason}; held for a decision"
        return VerdictResult.FAIL, VerdictAction.ROLLBACK, reason
    unsettled = [check for check in canary if inconclusive(check, min_requests)]

    undecided: str | None = None
    sample = next((check for check in canary if check.metric == SAMPLE_SIZE), None)
    if provider_error is not None:
        undecided = f"metrics unavailable, nothing can be judged: {provider_error}"
    elif not canary:
        undecided = "no canary metric was measured"
    elif sample is not None and sample.passed is None:
        undecided = (
            f"the canary served {_number(sample.sample_size)} requests in the window, "
            f"fewer than minRequests {min_requests}"
        )
    elif missing := [check for check in canary if check.passed is None and check not in unsettled]:
        plain = [check.metric for check in missing if not check.method]
        parts = [f"no data for {', '.join(plain)} on the canary"] if plain else []
        parts += [f"{check.metric}: {check.decision}" for check in missing if check.method]
        undecided = "; ".join(parts)

    if undecided is not None:
        if final:
            action = _at_end(actions.insufficient_data, extensions_left)
            return (
                VerdictResult.INSUFFICIENT_DATA,
                action,
                f"the hold ended without a passing measurement: {undecided}"
                + ("; extending the hold" if action is VerdictAction.EXTEND else ""),
            )
        return VerdictResult.INSUFFICIENT_DATA, VerdictAction.CONTINUE, undecided

    if unsettled:
        reason = "not settled: " + "; ".join(
            f"{check.metric} {check.decision}" for check in unsettled
        )
        if not final:
            return VerdictResult.INCONCLUSIVE, VerdictAction.CONTINUE, reason
        action = _at_end(actions.inconclusive, extensions_left)
        suffix = {
            VerdictAction.EXTEND: "; extending the hold",
            VerdictAction.CONTINUE: "; the policy continues on inconclusive",
        }.get(action, "")
        return VerdictResult.INCONCLUSIVE, action, f"at the end of the hold, {reason}{suffix}"

    judged = [check for check in canary if check.metric != SAMPLE_SIZE]
    size = sample.sample_size if sample is not None else judged[0].sample_size
    compared = [check for check in judged if check.method]
    parts = []
    if len(judged) > len(compared):
        parts.append(f"{len(judged) - len(compared)} canary check(s) within thresholds")
    if compared:
        parts.append(f"no regression against the baseline in {len(compared)} comparison(s)")
    reason = (
        f"{' and '.join(parts)} on {size:.0f} requests{' at the end of the hold' if final else ''}"
    )
    return VerdictResult.PASS, VerdictAction.CONTINUE, reason


def _bound(rule: MetricRule) -> tuple[float | None, Comparison]:
    if rule.max is not None:
        return rule.max, "<="
    return rule.min, ">="


def _describe_failure(check: MetricCheck) -> str:
    if check.method and check.method != BINOMIAL_GUARD:
        return f"{check.metric} {check.decision}"
    side = "above max" if check.comparison == "<=" else "below min"
    chance = f", p={check.p_value:.2g}" if check.method == BINOMIAL_GUARD else ""
    return (
        f"{check.metric} {_number(check.value)} {side} {_number(check.threshold)} "
        f"on the canary ({check.sample_size:.0f} requests{chance})"
    )


def _number(value: float | None) -> str:
    if value is None:
        return "no data"
    return f"{value:.4g}"
