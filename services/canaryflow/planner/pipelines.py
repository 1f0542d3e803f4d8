"""Release pipelines: one version through ordered environments, with no I/O.

Each environment is an ordinary release of the same Deployment name in the environment's
namespace, under that namespace's ReleasePolicy (so test may be one step with smoke hooks
and staging a short canary, production the full one). The pipeline only decides when an
environment starts: once the one before it succeeded, and once its gate (if it has one) was
opened. The version is stored once in the pipeline's state and every environment's request
carries exactly it; the planner admits an environment's release only if its request names
that version (``listed``). A failure stops the pipeline where it happened: that release
rolled itself back, the earlier environments keep the version, the later ones never start.

Like ``groups``, ``advance`` reads the environments' release states, not events, so any
event about them, a restart or the reconcile pass decide the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from canaryflow.planner.machine import SOURCE, Command
from canaryflow_contracts import Envelope
from canaryflow_contracts.events import (
    PipelinePlanned,
    PipelineRequested,
    PipelineStatusChanged,
    PipelineStopped,
    PipelineSucceeded,
    PipelineTransition,
    ReleaseRequested,
    TargetRef,
)
from canaryflow_contracts.state import (
    HISTORY_LIMIT,
    HistoryEntry,
    PipelineStage,
    PipelineState,
    PipelineStatus,
    ReleaseState,
    ReleaseStatus,
)

MAX_PIPELINE_ID = 59
REISSUE_SECONDS = 30.0


@dataclass(frozen=True)
class PipelineDecision:
    state: PipelineState | None
    commands: list[Command] = field(default_factory=list)


def stage_id(pipeline_id: str, index: int) -> str:
    return f"{pipeline_id}-e{index + 1}"


def target_of(pipeline: PipelineState, stage: PipelineStage) -> TargetRef:
    return TargetRef(namespace=stage.namespace, name=pipeline.target)


def check(pipeline_id: str, request: PipelineRequested) -> list[str]:
    reasons = []
    if len(pipeline_id) > MAX_PIPELINE_ID:
        reasons.append(f"pipeline id {pipeline_id!r} is longer than {MAX_PIPELINE_ID} characters")
    names = [e.name for e in request.environments]
    spaces = [e.namespace for e in request.environments]
    if len(set(names)) != len(names) or len(set(spaces)) != len(spaces):
        reasons.append("each environment needs its own name and its own namespace")
    return reasons


def plan(
    pipeline_id: str,
    event: Envelope[PipelineRequested],
    now: datetime,
    reasons: list[str] | None = None,
) -> PipelineDecision:
    """The new pipeline (or, with ``reasons``, its rejection), and its first event."""
    request = event.data
    stages = [
        PipelineStage(
            name=env.name,
            namespace=env.namespace,
            gate=env.gate,
            release_id=stage_id(pipeline_id, index),
        )
        for index, env in enumerate(request.environments)
    ]
    state = PipelineState(
        pipeline_id=pipeline_id,
        target=request.target,
        version=request.version,
        stages=stages,
        status=PipelineStatus.REJECTED if reasons else PipelineStatus.RUNNING,
        requested_by=request.requested_by,
        reason=request.reason,
        request_id=event.id,
        outcome_reason="; ".join(reasons or []),
        created_at=now,
        updated_at=now,
        history=[HistoryEntry(time=now, event="requested", detail=request.reason)],
    )
    if reasons:
        stopped = PipelineStopped(environment="", reasons=reasons, request_id=event.id)
        return PipelineDecision(state, [Command(stopped, f"{pipeline_id}.rejected", pipeline_id)])
    planned = PipelinePlanned(
        version=request.version, releases=[s.release_id for s in stages], request_id=event.id
    )
    return PipelineDecision(state, [Command(planned, f"{pipeline_id}.planned", pipeline_id)])


def listed(
    pipeline: PipelineState | None, release_id: str, request: ReleaseRequested
) -> str | None:
    """Why a request naming a pipeline may not be its environment's release (None: it may)."""
    if pipeline is None:
        return f"pipeline {request.pipeline} does not exist"
    stage = next((s for s in pipeline.stages if s.release_id == release_id), None)
    if stage is None:
        return f"release {release_id} is not an environment of pipeline {pipeline.pipeline_id}"
    if request.target != target_of(pipeline, stage) or request.version != pipeline.version:
        return f"release {release_id} is not the version pipeline {pipeline.pipeline_id} moves"
    if stage.started_at is None:
        return f"pipeline {pipeline.pipeline_id} did not start environment {stage.name}"
    return None


def open_gate(
    pipeline: PipelineState, environment: str, actor: str, reason: str, now: datetime
) -> PipelineDecision:
    """The gate before ``environment`` is opened, if the pipeline waits there."""
    index = _next_index(pipeline)
    if pipeline.status is not PipelineStatus.WAITING or index is None:
        return PipelineDecision(None)
    stage = pipeline.stages[index]
    if stage.name != environment:
        return PipelineDecision(None)
    detail = f"gate before {environment} opened by {actor}" + (f": {reason}" if reason else "")
    opened = _stage(pipeline, index, gate_opened_at=now, gate_opened_by=actor)
    opened = _log(opened, now, "gate-opened", detail).model_copy(
        update={"status": PipelineStatus.RUNNING, "updated_at": now}
    )
    return PipelineDecision(
        opened, [_status(opened, index, PipelineTransition.GATE_OPENED, detail)]
    )


def waiting_for(pipeline: PipelineState) -> PipelineStage | None:
    """The environment whose gate the pipeline waits at, if it waits."""
    index = _next_index(pipeline)
    if pipeline.status is not PipelineStatus.WAITING or index is None:
        return None
    return pipeline.stages[index]


def advance(
    pipeline: PipelineState, releases: Mapping[str, ReleaseState | None], now: datetime
) -> PipelineDecision:
    if pipeline.status.terminal:
        return PipelineDecision(None)
    state = pipeline
    commands: list[Command] = []
    for _ in range(3 * len(pipeline.stages) + 3):
        stepped = _step(state, releases, now)
        if stepped is None:
            break
        state, more = stepped
        commands += more
    if state == pipeline:
        return PipelineDecision(None)
    return PipelineDecision(state.model_copy(update={"updated_at": now}), commands)


Step = tuple[PipelineState, list[Command]]


def _step(
    pipeline: PipelineState, releases: Mapping[str, ReleaseState | None], now: datetime
) -> Step | None:
    if pipeline.status is PipelineStatus.WAITING or pipeline.status.terminal:
        return None  # only an opened gate goes on; an ended pipeline stays ended
    for index, stage in enumerate(pipeline.stages):
        release = releases.get(stage.release_id)
        if stage.started_at is None:
            if stage.gate and stage.gate_opened_at is None:
                detail = (
                    f"{pipeline.stages[index - 1].name if index else 'the request'} done: "
                    f"waiting for the gate before {stage.name}: "
                    f"canaryflow open-pipeline-gate {pipeline.pipeline_id} {stage.name}"
                )
                waiting = _log(pipeline, now, "gate-waiting", detail).model_copy(
                    update={"status": PipelineStatus.WAITING}
                )
                return waiting, [_status(pipeline, index, PipelineTransition.GATE_WAITING, detail)]
            started = _stage(pipeline, index, started_at=now)
            detail = f"{stage.name} ({stage.namespace}) started: {pipeline.version.image}"
            return _log(started, now, "environment-started", detail), [
                start_command(pipeline, index),
                _status(pipeline, index, PipelineTransition.ENVIRONMENT_STARTED, detail),
            ]
        if release is None:
            return None  # its request is on its way
        status = release.status
        if status is ReleaseStatus.SUCCEEDED:
            if not stage.outcome:
                done = _stage(pipeline, index, outcome=status.value)
                detail = f"{stage.name} runs {pipeline.version.image}"
                return _log(done, now, "environment-succeeded", detail), [
                    _status(pipeline, index, PipelineTransition.ENVIRONMENT_SUCCEEDED, detail)
                ]
            continue
        if status in (ReleaseStatus.ROLLED_BACK, ReleaseStatus.FAILED, ReleaseStatus.REJECTED):
            return _stopped(pipeline, index, release, now)
        return None  # under way
    names = ", ".join(s.name for s in pipeline.stages)
    summary = f"{pipeline.version.image} succeeded in {names}"
    done = _log(pipeline, now, "succeeded", summary).model_copy(
        update={"status": PipelineStatus.SUCCEEDED}
    )
    outcome = PipelineSucceeded(summary=summary, version=pipeline.version)
    return done, [Command(outcome, f"{pipeline.pipeline_id}.succeeded", pipeline.pipeline_id)]


def _stopped(pipeline: PipelineState, index: int, release: ReleaseState, now: datetime) -> Step:
    stage = pipeline.stages[index]
    why = release.outcome_reason or release.status.value
    reason = f"{stage.name} ({stage.namespace}) {release.status.value}: {why}"
    later = [s.name for s in pipeline.stages[index + 1 :]]
    if later:
        reason += f"; never started: {', '.join(later)}"
    stopped = _stage(pipeline, index, outcome=release.status.value)
    stopped = _log(stopped, now, "stopped", reason).model_copy(
        update={
            "status": PipelineStatus.STOPPED,
            "stopped_at_stage": stage.name,
            "outcome_reason": reason,
        }
    )
    verdict = release.last_verdict
    outcome = PipelineStopped(
        environment=stage.name,
        release_id=stage.release_id,
        reasons=[reason],
        evidence=verdict.checks if verdict is not None else [],
        request_id=pipeline.request_id,
    )
    return stopped, [Command(outcome, f"{pipeline.pipeline_id}.stopped", pipeline.pipeline_id)]


def reissue(
    pipeline: PipelineState, releases: Mapping[str, ReleaseState | None], now: datetime
) -> list[Command]:
    """A start no environment reacted to (a crash between the write and the publish)."""
    if pipeline.status.terminal:
        return []
    late = now - timedelta(seconds=REISSUE_SECONDS)
    return [
        start_command(pipeline, index)
        for index, stage in enumerate(pipeline.stages)
        if stage.started_at is not None
        and stage.started_at < late
        and releases.get(stage.release_id) is None
    ]


def start_command(pipeline: PipelineState, index: int) -> Command:
    stage = pipeline.stages[index]
    why = f"pipeline {pipeline.pipeline_id}, environment {stage.name}"
    request = ReleaseRequested(
        target=target_of(pipeline, stage),
        version=pipeline.version,
        requested_by=pipeline.requested_by,
        reason=f"{why}: {pipeline.reason}" if pipeline.reason else why,
        pipeline=pipeline.pipeline_id,
    )
    return Command(request, f"{pipeline.pipeline_id}.start.{index + 1}", stage.release_id)


def _next_index(pipeline: PipelineState) -> int | None:
    return next((i for i, s in enumerate(pipeline.stages) if s.started_at is None), None)


def _status(
    pipeline: PipelineState, index: int, status: PipelineTransition, detail: str
) -> Command:
    stage = pipeline.stages[index]
    changed = PipelineStatusChanged(
        status=status, environment=stage.name, release_id=stage.release_id, detail=detail
    )
    event_id = f"{pipeline.pipeline_id}.{status.value}.{index + 1}"
    return Command(changed, event_id, pipeline.pipeline_id)


def _stage(pipeline: PipelineState, index: int, **update: object) -> PipelineState:
    stages = list(pipeline.stages)
    stages[index] = stages[index].model_copy(update=update)
    return pipeline.model_copy(update={"stages": stages})


def _log(pipeline: PipelineState, now: datetime, event: str, detail: str) -> PipelineState:
    entry = HistoryEntry(time=now, event=event, detail=detail, actor=SOURCE)
    return pipeline.model_copy(update={"history": [*pipeline.history, entry][-HISTORY_LIMIT:]})
