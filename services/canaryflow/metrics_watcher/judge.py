"""The judge: measured values in, checks and a verdict out, with no I/O.

Fail safe above all: a check passes only on a value, a threshold it respects and enough
canary requests behind it. No data, too little traffic, or a metrics backend that did not
answer make the check undecided (``passed=None``), and an undecided check makes the verdict
``insufficient_data``, never ``pass``. A definite failure wins over everything else, because
the evidence for it is already in hand.

Thresholds apply to the canary; the stable track's values travel in the same verdict as
evidence for a person (and, later, for a statistical comparison against a baseline).

Actions: a failure is final and asks for a rollback at once. A tick that is not final says
``continue`` whatever its result, because the analysis goes on; only the final verdict of a
step maps insufficient data to ``pause``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from canaryflow_contracts.events import MetricCheck, VerdictAction, VerdictResult
from canaryflow_contracts.policy import MetricRule

CANARY = "canary"
STABLE = "stable"
SAMPLE_SIZE = "sample-size"

Comparison = Literal["<=", ">=", "n/a"]


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


def verdict(
    checks: Sequence[MetricCheck],
    *,
    min_requests: int,
    provider_error: str | None = None,
    final: bool = False,
) -> tuple[VerdictResult, VerdictAction, str]:
    """The result of one tick (or, with ``final``, of the step) from its checks."""
    canary = [check for check in checks if check.track == CANARY]
    failed = [check for check in canary if check.passed is False]
    if failed:
        reason = "; ".join(_describe_failure(check) for check in failed)
        return VerdictResult.FAIL, VerdictAction.ROLLBACK, reason

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
    elif missing := [check.metric for check in canary if check.passed is None]:
        undecided = f"no data for {', '.join(missing)} on the canary"

    if undecided is not None:
        if final:
            return (
                VerdictResult.INSUFFICIENT_DATA,
                VerdictAction.PAUSE,
                f"the hold ended without a passing measurement: {undecided}",
            )
        return VerdictResult.INSUFFICIENT_DATA, VerdictAction.CONTINUE, undecided

    judged = [check for check in canary if check.metric != SAMPLE_SIZE]
    size = sample.sample_size if sample is not None else judged[0].sample_size
    reason = (
        f"{len(judged)} canary check(s) within thresholds on {size:.0f} requests"
        f"{' at the end of the hold' if final else ''}"
    )
    return VerdictResult.PASS, VerdictAction.CONTINUE, reason


def _bound(rule: MetricRule) -> tuple[float | None, Comparison]:
    if rule.max is not None:
        return rule.max, "<="
    return rule.min, ">="


def _describe_failure(check: MetricCheck) -> str:
    side = "above max" if check.comparison == "<=" else "below min"
    return (
        f"{check.metric} {_number(check.value)} {side} {_number(check.threshold)} "
        f"on the canary ({check.sample_size:.0f} requests)"
    )


def _number(value: float | None) -> str:
    if value is None:
        return "no data"
    return f"{value:.4g}"
