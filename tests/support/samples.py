"""One payload of every event type in the catalogue, every optional part filled in.

Why: the contract tests put each type through the services' own publisher and check the bytes
against the published files; a type or an optional part left out here would go unchecked, so
``tests/unit/contracts/test_wire_contract.py`` asserts that every catalogue type is here.
"""

from __future__ import annotations

from datetime import UTC, datetime

from canaryflow_contracts import EventData
from canaryflow_contracts.events import (
    AbortRelease,
    AnalysisOverrides,
    AnalysisVerdict,
    ApplyPhase,
    CommandRefused,
    ConfigMapChange,
    ContainerResources,
    DeadLetter,
    EnvVar,
    GroupMember,
    GroupMemberRef,
    GroupPlanned,
    GroupPromoteMember,
    GroupRejected,
    GroupRequested,
    GroupRolledBack,
    GroupStatusChanged,
    GroupSucceeded,
    GroupTransition,
    HookCompleted,
    MetricCheck,
    OpenGate,
    OpenPipelineGate,
    OperatorCommandRefused,
    PauseRelease,
    PhaseFailed,
    PhaseReached,
    PipelineEnvironment,
    PipelinePlanned,
    PipelineRequested,
    PipelineStatusChanged,
    PipelineStopped,
    PipelineSucceeded,
    PipelineTransition,
    PlannedStep,
    PolicyOverrides,
    PromoteNow,
    PromotionCompleted,
    ReleaseFailed,
    ReleasePlanned,
    ReleaseRejected,
    ReleaseRequested,
    ReleaseRolledBack,
    ReleaseStatusChanged,
    ReleaseSucceeded,
    RequestAnalysis,
    RequestPromotion,
    RequestRefused,
    ResumeRelease,
    RollbackCompleted,
    RollbackFailed,
    RollbackRequested,
    RunHook,
    SetWeight,
    TargetRef,
    VerdictAction,
    VerdictResult,
    VersionSpec,
)
from canaryflow_contracts.policy import Analysis, Hook, HookType

TARGET = TargetRef(namespace="shop", name="web")
VERSION = VersionSpec(
    image="registry.example.com:5000/shop/web:v2",
    container="web",
    env=[EnvVar(name="FEATURE_X", value="on")],
    config_maps=[ConfigMapChange(name="web-config", data={"mode": "new"}, remove=["old"])],
    resources=ContainerResources(requests={"cpu": "250m"}, limits={"memory": "256Mi"}),
)
STEP = PlannedStep(index=1, weight=25, hold_seconds=30.0)
ANALYSIS = Analysis.model_validate(
    {
        "intervalSeconds": 5,
        "minRequests": 20,
        "metrics": [{"name": "errors", "template": "error-rate", "max": 0.05}],
    }
)
# hook.run carries a policy Hook, whose fields have camelCase aliases in the policy: the bus
# writes field names, and the schema must say so.
HOOK = Hook(
    name="load-test",
    type=HookType.ROLLOUT,
    url="http://load.shop/run",
    timeout_seconds=30,
    deadline_seconds=120,
)
THRESHOLD_CHECK = MetricCheck(
    metric="errors",
    track="canary",
    query='sum(rate(http_requests_total{code=~"5.."}[1m]))',
    value=0.01,
    threshold=0.05,
    comparison="<=",
    sample_size=1200,
    passed=True,
    decision="0.01 <= 0.05",
)
COMPARISON_CHECK = MetricCheck(
    metric="latency",
    track="canary",
    query="histogram_quantile(0.99, ...)",
    value=0.12,
    threshold=20.0,
    comparison=">=",
    sample_size=800,
    passed=None,
    method="msprt-rate",
    baseline_query="histogram_quantile(0.99, ...) baseline",
    baseline_value=0.11,
    baseline_sample_size=790,
    statistic=1.5,
    p_value=0.6,
    estimate=0.09,
    lower=-0.05,
    upper=0.2,
    decision="not enough evidence yet",
)


def one_of_each() -> list[EventData]:
    """A payload of every catalogue type (the release id they travel under: ``web-1``)."""
    return [
        ReleaseRequested(
            target=TARGET,
            version=VERSION,
            overrides=PolicyOverrides(max_weight=40, analysis=AnalysisOverrides(min_requests=100)),
            requested_by="ci@shop",
            reason="new checkout",
        ),
        RequestRefused(
            request_id="req-1",
            release_id="web-1",
            request_subject="canaryflow.release.requested.v1.web-1",
            reasons=["release id web-1 is already used"],
        ),
        ReleasePlanned(
            target=TARGET, version=VERSION, policy="web", steps=[STEP], request_id="req-1"
        ),
        ReleaseRejected(target=TARGET, reasons=["no policy"], request_id="req-1"),
        ReleaseStatusChanged(target=TARGET, status="paused", detail="paused by alice"),
        ReleaseSucceeded(target=TARGET, summary="promoted", evidence=[THRESHOLD_CHECK]),
        ReleaseRolledBack(target=TARGET, summary="errors", evidence=[COMPARISON_CHECK]),
        ReleaseFailed(target=TARGET, summary="could not restore"),
        ApplyPhase(
            target=TARGET,
            version=VERSION,
            step=STEP,
            ready_deadline=datetime(2026, 12, 1, 12, 0, tzinfo=UTC),
            canary_resources=ContainerResources(requests={"cpu": "100m"}),
        ),
        PhaseReached(
            target=TARGET,
            step=STEP,
            canary_weight=25.0,
            canary_ready=1,
            stable_ready=3,
            baseline_ready=1,
        ),
        PhaseFailed(target=TARGET, step=STEP, reason="pods not ready"),
        RequestAnalysis(
            target=TARGET,
            step=STEP,
            canary_version="v2",
            stable_version="v1",
            policy="web",
            analysis=ANALYSIS,
        ),
        AnalysisVerdict(
            target=TARGET,
            step=STEP,
            result=VerdictResult.PASS,
            action=VerdictAction.CONTINUE,
            final=True,
            reason="every check passed",
            checks=[THRESHOLD_CHECK, COMPARISON_CHECK],
        ),
        RequestPromotion(target=TARGET, version=VERSION),
        PromotionCompleted(target=TARGET, image=VERSION.image),
        RollbackRequested(target=TARGET, reason="pods failed", requested_by="executor"),
        RollbackCompleted(
            target=TARGET, reason="pods failed", stable_replicas=4, seconds_to_restore=1.5
        ),
        RollbackFailed(
            target=TARGET,
            reason="the API forbids the writes",
            attempts=3,
            final=True,
            leftovers=["deployment shop/web-canary"],
        ),
        PauseRelease(actor="alice@example", reason="lunch"),
        ResumeRelease(actor="alice@example"),
        AbortRelease(actor="alice@example", reason="wrong build"),
        PromoteNow(actor="alice@example"),
        SetWeight(actor="alice@example", weight=40),
        OperatorCommandRefused(
            target=TARGET, action="pause", actor="mallory", refusal="not allowed"
        ),
        OpenGate(actor="alice@example", gate="confirm-promotion"),
        RunHook(target=TARGET, version=VERSION, hook=HOOK, step_index=1),
        HookCompleted(target=TARGET, hook="load-test", step_index=1, ok=True, detail="200"),
        CommandRefused(
            command="io.canaryflow.phase.apply.v1",
            command_id="c-1",
            source="mallory",
            target=TARGET,
            reasons=["no live release web-1"],
            checks=["unknown-release"],
        ),
        DeadLetter(
            consumer="planner-requests",
            original_subject="canaryflow.release.requested.v1.web-1",
            deliveries=5,
            error="boom",
            payload="{",
            payload_bytes=1,
            payload_truncated=False,
        ),
        GroupRequested(
            members=[
                GroupMember(target=TargetRef(namespace="shop", name="api"), version=VERSION),
                GroupMember(target=TARGET, version=VERSION),
            ],
            requested_by="ci@example",
            reason="checkout needs the new cart API",
        ),
        GroupPlanned(members=[GROUP_MEMBER], request_id="g-1"),
        GroupRejected(reasons=["member 1 (shop/web): no ReleasePolicy"], request_id="g-1"),
        GroupStatusChanged(
            status=GroupTransition.MEMBER_WAITING,
            member="checkout-1-m1",
            target=TARGET,
            detail="checkout-1-m1 passed its canary and waits for the group",
        ),
        GroupPromoteMember(group="checkout-1", target=TARGET),
        GroupSucceeded(summary="2 member(s) promoted in order", members=[GROUP_MEMBER]),
        GroupRolledBack(
            summary="rolled back",
            members=[GROUP_MEMBER],
            failed_member="checkout-1-m2",
            reason="member checkout-1-m2 rolled_back: error rate",
            rolled_back_order=["checkout-1-m2", "checkout-1-m1"],
        ),
        PipelineRequested(
            target="web",
            version=VERSION,
            environments=[
                PipelineEnvironment(name="test", namespace="shop-test"),
                PipelineEnvironment(name="staging", namespace="shop-staging"),
                PipelineEnvironment(name="production", namespace="shop", gate=True),
            ],
            requested_by="ci@example",
        ),
        PipelinePlanned(version=VERSION, releases=["web-9-e1", "web-9-e2"], request_id="p-1"),
        PipelineStatusChanged(
            status=PipelineTransition.GATE_WAITING,
            environment="production",
            release_id="web-9-e3",
            detail="staging done: waiting for the gate before production",
        ),
        OpenPipelineGate(actor="alice@example", environment="production", reason="CAB ok"),
        PipelineSucceeded(summary="succeeded in test, staging, production", version=VERSION),
        PipelineStopped(
            environment="staging",
            release_id="web-9-e2",
            reasons=["staging (shop-staging) rolled_back: error rate"],
            evidence=[THRESHOLD_CHECK],
            request_id="p-1",
        ),
    ]


GROUP_MEMBER = GroupMemberRef(release_id="checkout-1-m1", target=TARGET)
