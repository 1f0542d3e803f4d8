"""Builders for planner tests: a policy, a target, requests and events in their envelopes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from canaryflow.planner import machine
from canaryflow.planner.planning import Admission
from canaryflow.planner.validation import DeploymentFacts, check_request
from canaryflow.runtime.policies import PolicyObject
from canaryflow_contracts import Envelope, EventData
from canaryflow_contracts.events import (
    AnalysisVerdict,
    MetricCheck,
    PhaseReached,
    PlannedStep,
    PolicyOverrides,
    ReleaseRequested,
    TargetRef,
    VerdictAction,
    VerdictResult,
    VersionSpec,
)
from canaryflow_contracts.state import ReleaseState

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
RID = "shop-web-1"
TARGET = TargetRef(namespace="shop", name="web")
NEW_IMAGE = "registry.local:5000/shop/web:v2"
OLD_IMAGE = "registry.local:5000/shop/web:v1"

POLICY_SPEC: dict[str, Any] = {
    "targetRef": "web",
    "steps": [
        {"weight": 10, "holdSeconds": 30},
        {"weight": 25, "holdSeconds": 30},
        {"weight": 50, "holdSeconds": 60},
    ],
    "maxWeight": 50,
    "analysis": {
        "intervalSeconds": 5,
        "minRequests": 50,
        "metrics": [
            {"name": "errors", "template": "error-rate", "max": 0.05},
            {"name": "latency", "template": "p99-latency", "max": 0.5},
        ],
    },
    "deadlines": {"podReadySeconds": 60, "pauseSeconds": 300},
    # Anyone may do anything here; tests/unit/planner/test_planner_operators.py narrows it.
    "operators": [
        {"subject": "*", "actions": ["pause", "resume", "abort", "promote", "set-weight"]}
    ],
}
DEPLOYMENT = DeploymentFacts(replicas=4, containers=(("web", OLD_IMAGE),))


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def envelope(data: EventData, event_id: str, source: str = "test") -> Envelope[Any]:
    return Envelope.wrap(data, release_id=RID, source=source, id=event_id)


def request(overrides: PolicyOverrides | None = None, image: str = NEW_IMAGE) -> ReleaseRequested:
    return ReleaseRequested(
        target=TARGET,
        version=VersionSpec(image=image),
        overrides=overrides or PolicyOverrides(),
        requested_by="ci@shop",
    )


def policy(**changes: Any) -> PolicyObject:
    return PolicyObject(name="web-policy", spec={**POLICY_SPEC, **changes})


def admission(req: ReleaseRequested | None = None, now: datetime = T0) -> Admission:
    admitted = check_request(req or request(), DEPLOYMENT, [policy()], now)
    assert isinstance(admitted, Admission), admitted
    return admitted


def accepted(now: datetime = T0) -> ReleaseState:
    decision = machine.accept(RID, envelope(request(), "req-1", "ci"), admission(now=now), now)
    assert decision.state is not None
    return decision.state


def step(state: ReleaseState, index: int) -> PlannedStep:
    return state.steps[index]


def reached(state: ReleaseState, index: int) -> PhaseReached:
    return PhaseReached(
        target=TARGET, step=step(state, index), canary_weight=25.0, canary_ready=1, stable_ready=3
    )


CHECK = MetricCheck(
    metric="errors",
    track="canary",
    query='sum(rate(http_requests_total{code=~"5.."}[30s]))',
    value=0.2,
    threshold=0.05,
    comparison="<=",
    sample_size=400,
    passed=False,
)


def verdict(
    state: ReleaseState,
    index: int,
    result: VerdictResult,
    *,
    final: bool = True,
) -> AnalysisVerdict:
    action = {
        VerdictResult.PASS: VerdictAction.CONTINUE,
        VerdictResult.FAIL: VerdictAction.ROLLBACK,
    }.get(result, VerdictAction.PAUSE)
    return AnalysisVerdict(
        target=TARGET,
        step=step(state, index),
        result=result,
        action=action,
        final=final,
        reason=f"{result.value} at step {index}",
        checks=[CHECK] if result is VerdictResult.FAIL else [],
    )


@dataclass
class FakeCluster:
    deployments: dict[str, DeploymentFacts] = field(
        default_factory=lambda: {"shop/web": DEPLOYMENT, "shop/api": DEPLOYMENT}
    )
    policies: list[PolicyObject] = field(
        default_factory=lambda: [
            policy(),
            PolicyObject("api-policy", {**policy().spec, "targetRef": "api"}),
        ]
    )

    async def deployment(self, namespace: str, name: str) -> DeploymentFacts | None:
        return self.deployments.get(f"{namespace}/{name}")

    async def release_policies(
        self, namespace: str, targeting: str | None = None
    ) -> list[PolicyObject]:
        return self.policies if namespace == "shop" else []
