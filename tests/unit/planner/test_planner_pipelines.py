"""Release pipelines: one version, exactly as requested, through ordered environments; the
next starts only after the previous succeeded and its gate (if any) was opened; a failure
stops the pipeline where it happened."""

from __future__ import annotations

from canaryflow.planner import pipelines
from canaryflow.planner.pipelines import stage_id
from canaryflow_contracts import Envelope
from canaryflow_contracts.events import (
    EnvVar,
    PipelineEnvironment,
    PipelineRequested,
    PipelineStatusChanged,
    PipelineStopped,
    PipelineSucceeded,
    PipelineTransition,
    ReleaseRequested,
    TargetRef,
    VerdictResult,
    VersionSpec,
)
from canaryflow_contracts.state import (
    PipelineState,
    PipelineStatus,
    ReleaseState,
    ReleaseStatus,
    VerdictSummary,
)
from tests.unit.planner.factory import CHECK, accepted, at

PID = "web-v2"
VERSION = VersionSpec(
    image="registry.local:5000/shop/web:v2@sha256:" + "b" * 64,
    env=[EnvVar(name="FEATURE", value="on")],
)


def _request(gate: bool = True) -> Envelope[PipelineRequested]:
    request = PipelineRequested(
        target="web",
        version=VERSION,
        environments=[
            PipelineEnvironment(name="test", namespace="shop-test"),
            PipelineEnvironment(name="staging", namespace="shop-staging"),
            PipelineEnvironment(name="production", namespace="shop", gate=gate),
        ],
        requested_by="ci@shop",
    )
    return Envelope.wrap(request, release_id=PID, source="ci", id="pipe-req-1")


def _started(gate: bool = True) -> tuple[PipelineState, list[ReleaseRequested]]:
    planned = pipelines.plan(PID, _request(gate), at(0)).state
    assert planned is not None
    decision = pipelines.advance(planned, {}, at(1))
    assert decision.state is not None
    return decision.state, _starts(decision)


def _starts(decision: pipelines.PipelineDecision) -> list[ReleaseRequested]:
    return [c.data for c in decision.commands if isinstance(c.data, ReleaseRequested)]


def _release(pipeline: PipelineState, index: int, status: ReleaseStatus) -> ReleaseState:
    stage = pipeline.stages[index]
    return accepted().model_copy(
        update={
            "release_id": stage.release_id,
            "target": TargetRef(namespace=stage.namespace, name="web"),
            "version": pipeline.version,
            "pipeline": PID,
            "status": status,
        }
    )


def test_the_first_environment_starts_with_exactly_the_requested_version() -> None:
    state, starts = _started()

    assert starts == [
        ReleaseRequested(
            target=TargetRef(namespace="shop-test", name="web"),
            version=VERSION,
            requested_by="ci@shop",
            reason=f"pipeline {PID}, environment test",
            pipeline=PID,
        )
    ]
    running = {stage_id(PID, 0): _release(state, 0, ReleaseStatus.ANALYSING)}
    assert pipelines.advance(state, running, at(5)).state is None


def test_each_environment_starts_after_the_previous_succeeded_then_waits_at_the_gate() -> None:
    state, _ = _started()
    releases: dict[str, ReleaseState | None] = {
        stage_id(PID, 0): _release(state, 0, ReleaseStatus.SUCCEEDED)
    }

    after_test = pipelines.advance(state, releases, at(10))

    assert after_test.state is not None
    assert [r.target.namespace for r in _starts(after_test)] == ["shop-staging"]
    assert [r.version for r in _starts(after_test)] == [VERSION]
    releases[stage_id(PID, 1)] = _release(after_test.state, 1, ReleaseStatus.SUCCEEDED)

    at_gate = pipelines.advance(after_test.state, releases, at(20))

    assert at_gate.state is not None
    assert at_gate.state.status is PipelineStatus.WAITING
    assert _starts(at_gate) == []  # production is not touched before the gate opens
    statuses = [
        c.data.status for c in at_gate.commands if isinstance(c.data, PipelineStatusChanged)
    ]
    assert statuses == [PipelineTransition.ENVIRONMENT_SUCCEEDED, PipelineTransition.GATE_WAITING]
    assert pipelines.advance(at_gate.state, releases, at(30)).state is None
    assert pipelines.open_gate(at_gate.state, "staging", "alice", "", at(31)).state is None

    opened = pipelines.open_gate(at_gate.state, "production", "alice", "CAB ok", at(31))
    assert opened.state is not None and opened.state.status is PipelineStatus.RUNNING
    production = pipelines.advance(opened.state, releases, at(32))
    assert production.state is not None
    assert [r.target.namespace for r in _starts(production)] == ["shop"]

    releases[stage_id(PID, 2)] = _release(production.state, 2, ReleaseStatus.SUCCEEDED)
    done = pipelines.advance(production.state, releases, at(90))
    assert done.state is not None and done.state.status is PipelineStatus.SUCCEEDED
    assert [type(c.data) for c in done.commands][-1] is PipelineSucceeded


def test_a_failure_in_staging_stops_the_pipeline_and_never_touches_production() -> None:
    state, _ = _started(gate=False)
    releases: dict[str, ReleaseState | None] = {
        stage_id(PID, 0): _release(state, 0, ReleaseStatus.SUCCEEDED)
    }
    state = pipelines.advance(state, releases, at(10)).state  # type: ignore[assignment]
    assert state is not None
    failed = _release(state, 1, ReleaseStatus.ROLLED_BACK).model_copy(
        update={
            "outcome_reason": "error rate 0.2 > 0.05",
            "last_verdict": VerdictSummary(
                step_index=0, result=VerdictResult.FAIL, final=True, reason="x", checks=[CHECK]
            ),
        }
    )
    releases[stage_id(PID, 1)] = failed

    stopped = pipelines.advance(state, releases, at(20))

    assert stopped.state is not None and stopped.state.status is PipelineStatus.STOPPED
    assert _starts(stopped) == []
    (outcome,) = [c.data for c in stopped.commands if isinstance(c.data, PipelineStopped)]
    assert outcome.environment == "staging"
    assert outcome.evidence == [CHECK]
    assert "never started: production" in outcome.reasons[0]
    assert stopped.state.stages[2].started_at is None
    assert stopped.state.stages[0].outcome == "succeeded"  # test keeps the version
    assert pipelines.advance(stopped.state, releases, at(30)).state is None


def test_only_the_release_a_pipeline_started_with_its_version_may_join_it() -> None:
    state, (first,) = _started()

    assert pipelines.listed(state, stage_id(PID, 0), first) is None
    other = first.model_copy(update={"version": VersionSpec(image=VERSION.image)})
    assert "not the version" in (pipelines.listed(state, stage_id(PID, 0), other) or "")
    later = first.model_copy(update={"target": TargetRef(namespace="shop-staging", name="web")})
    assert "did not start" in (pipelines.listed(state, stage_id(PID, 1), later) or "")
    assert "does not exist" in (pipelines.listed(None, stage_id(PID, 0), first) or "")


def test_a_pipeline_with_a_namespace_twice_is_refused() -> None:
    twice = _request().data.model_copy(
        update={
            "environments": [
                PipelineEnvironment(name="a", namespace="shop"),
                PipelineEnvironment(name="b", namespace="shop"),
            ]
        }
    )
    assert pipelines.check(PID, twice) == [
        "each environment needs its own name and its own namespace"
    ]
    rejected = pipelines.plan(PID, _request(), at(0), ["nope"])
    assert rejected.state is not None and rejected.state.status is PipelineStatus.REJECTED
    assert [type(c.data) for c in rejected.commands] == [PipelineStopped]


def test_a_start_no_environment_reacted_to_is_sent_again() -> None:
    state, _ = _started()
    assert pipelines.reissue(state, {}, at(10)) == []
    (again,) = pipelines.reissue(state, {}, at(40))
    assert again.event_id == f"{PID}.start.1"
