"""Turning a request and its target's policy into steps, or into the reasons it is refused.

A request may tighten its policy but never loosen it: the platform team's policy is the
floor of caution, so a loosening is refused outright (naming the field) rather than quietly
clamped, and the requester learns what they asked for was not allowed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta

from canaryflow_contracts.events import (
    ContainerResources,
    PlannedStep,
    PolicyOverrides,
    ReleaseRequested,
)
from canaryflow_contracts.policy import (
    Analysis,
    Hook,
    InFlightLimits,
    MetricRule,
    MetricTemplate,
    Notify,
    OperatorGrant,
    ReleasePolicySpec,
)


@dataclass(frozen=True)
class EffectiveAnalysis:
    """The analysis limits after the request's tightenings (None: the policy has no such rule)."""

    min_requests: int
    max_error_rate: float | None
    max_p99_latency_seconds: float | None


@dataclass(frozen=True)
class Plan:
    steps: tuple[PlannedStep, ...]
    ready_deadline: datetime
    pod_ready_seconds: float
    pause_seconds: float
    analysis: EffectiveAnalysis
    tightened: Analysis  # what the metrics-watcher judges with


@dataclass(frozen=True)
class Refusal:
    reasons: tuple[str, ...]


def plan(request: ReleaseRequested, policy: ReleasePolicySpec, now: datetime) -> Plan | Refusal:
    """The steps this release takes under ``policy``, or every reason it may not."""
    overrides = request.overrides
    reasons = _loosenings(overrides, policy)
    if reasons:
        return Refusal(tuple(reasons))
    max_weight = min(policy.max_weight, overrides.max_weight or policy.max_weight)
    min_hold = overrides.hold_seconds or 0.0
    steps: list[PlannedStep] = []
    for step in policy.steps:
        weight = min(step.weight, max_weight)
        if steps and steps[-1].weight >= weight:
            break  # the lowered maximum cut the remaining steps off
        steps.append(
            PlannedStep(
                index=len(steps), weight=weight, hold_seconds=max(step.hold_seconds, min_hold)
            )
        )
    analysis = overrides.analysis
    effective = EffectiveAnalysis(
        min_requests=max(
            policy.analysis.min_requests,
            (analysis.min_requests if analysis else None) or 0,
        ),
        max_error_rate=_stricter(
            _policy_max(policy, MetricTemplate.ERROR_RATE),
            analysis.max_error_rate if analysis else None,
        ),
        max_p99_latency_seconds=_stricter(
            _policy_max(policy, MetricTemplate.P99_LATENCY),
            analysis.max_p99_latency_seconds if analysis else None,
        ),
    )
    return Plan(
        steps=tuple(steps),
        ready_deadline=now + timedelta(seconds=policy.deadlines.pod_ready_seconds),
        pod_ready_seconds=policy.deadlines.pod_ready_seconds,
        pause_seconds=policy.deadlines.pause_seconds,
        analysis=effective,
        tightened=_tightened(policy, effective),
    )


def _tightened(policy: ReleasePolicySpec, effective: EffectiveAnalysis) -> Analysis:
    """The policy's analysis with the effective limits written into its rules.

    A limit the request sets for a metric the policy does not check becomes a new rule.
    """
    limits = {
        MetricTemplate.ERROR_RATE: effective.max_error_rate,
        MetricTemplate.P99_LATENCY: effective.max_p99_latency_seconds,
    }
    rules = []
    for rule in policy.analysis.metrics:
        limit = limits.pop(MetricTemplate(rule.template), None) if rule.template in limits else None
        rules.append(rule.model_copy(update={"max": limit}) if limit is not None else rule)
    rules += [
        MetricRule(name=template.value, template=template, max=limit)
        for template, limit in limits.items()
        if limit is not None
    ]
    return policy.analysis.model_copy(
        update={"metrics": rules, "min_requests": effective.min_requests}
    )


def _loosenings(overrides: PolicyOverrides, policy: ReleasePolicySpec) -> list[str]:
    reasons = []
    if overrides.max_weight is not None and overrides.max_weight > policy.max_weight:
        reasons.append(
            f"overrides.max_weight {overrides.max_weight} loosens the policy's maxWeight "
            f"{policy.max_weight}: it may only be lowered"
        )
    shortest_hold = min(step.hold_seconds for step in policy.steps)
    if overrides.hold_seconds is not None and overrides.hold_seconds < shortest_hold:
        reasons.append(
            f"overrides.hold_seconds {overrides.hold_seconds:g} loosens the policy's shortest "
            f"hold of {shortest_hold:g}s: it may only be raised"
        )
    analysis = overrides.analysis
    if analysis is None:
        return reasons
    if analysis.min_requests is not None and analysis.min_requests < policy.analysis.min_requests:
        reasons.append(
            f"overrides.analysis.min_requests {analysis.min_requests} loosens the policy's "
            f"minRequests {policy.analysis.min_requests}: it may only be raised"
        )
    for field, template, value in (
        ("max_error_rate", MetricTemplate.ERROR_RATE, analysis.max_error_rate),
        ("max_p99_latency_seconds", MetricTemplate.P99_LATENCY, analysis.max_p99_latency_seconds),
    ):
        limit = _policy_max(policy, template)
        if value is not None and limit is not None and value > limit:
            reasons.append(
                f"overrides.analysis.{field} {value:g} loosens the policy's {template.value} "
                f"max {limit:g}: it may only be lowered"
            )
    return reasons


def _policy_max(policy: ReleasePolicySpec, template: MetricTemplate) -> float | None:
    """The strictest upper bound the policy sets on a built-in metric, if it sets one."""
    limits = [
        rule.max
        for rule in policy.analysis.metrics
        if rule.template == template and rule.max is not None
    ]
    return min(limits) if limits else None


def _stricter(policy_limit: float | None, override: float | None) -> float | None:
    if policy_limit is None or override is None:
        return override if policy_limit is None else policy_limit
    return min(policy_limit, override)


@dataclass(frozen=True)
class Admission:
    """An accepted request: the plan and what it was made from."""

    plan: Plan
    policy_name: str
    stable_image: str
    canary_resources: ContainerResources | None = None
    operators: list[OperatorGrant] | None = None
    max_weight: int = 100
    hooks: list[Hook] = dataclasses.field(default_factory=list)
    notify: list[Notify] = dataclasses.field(default_factory=list)
    limits: InFlightLimits | None = None


def limit_refusal(
    limits: InFlightLimits | None, namespace: str, in_flight: list[tuple[str, str]]
) -> str | None:
    """Why one more release in ``namespace`` would break the policy's limits; None if not.

    ``in_flight``: (namespace, release id) of every release in flight now. Checked when a
    request is admitted; two replicas admitting at the same instant can each see room for one
    more (the count is not a compare-and-set), so the limit can be passed by the replicas'
    count minus one at worst.
    """
    if limits is None:
        return None
    here = [rid for ns, rid in in_flight if ns == namespace]
    if limits.namespace is not None and len(here) >= limits.namespace:
        return (
            f"namespace {namespace} has {len(here)} release(s) in flight "
            f"({', '.join(sorted(here)[:5])}); its policy allows {limits.namespace}"
        )
    if limits.cluster is not None and len(in_flight) >= limits.cluster:
        return (
            f"the cluster has {len(in_flight)} release(s) in flight; "
            f"the policy allows {limits.cluster}"
        )
    return None
