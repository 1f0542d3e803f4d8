"""A release's state as the planner keeps it in the JetStream KV bucket.

It lives in contracts because other parties read it: the CLI's ``status``, the metrics-watcher
(to stop judging a release that moved on) and the rollback service. Only the planner writes
it, always with compare-and-set on the KV revision.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import ConfigDict, Field, ValidationError

from canaryflow_contracts.events import (
    ContainerResources,
    MetricCheck,
    PlannedStep,
    TargetRef,
    VerdictAction,
    VerdictResult,
    VersionSpec,
)
from canaryflow_contracts.policy import Analysis, Hook, Notify, OperatorGrant
from canaryflow_contracts.text import TextModel

HISTORY_LIMIT = 100
SEEN_EVENTS_LIMIT = 200


class ReleaseStatus(StrEnum):
    APPLYING = "applying"  # waiting for the executor to put the current step in place
    ANALYSING = "analysing"  # step in place, waiting for the metrics-watcher's verdict
    PROMOTING = "promoting"
    WAITING = "waiting"  # for hooks or gates before it applies, analyses or promotes
    ROLLING_BACK = "rolling_back"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    REJECTED = "rejected"

    @property
    def terminal(self) -> bool:
        return self in (
            ReleaseStatus.SUCCEEDED,
            ReleaseStatus.ROLLED_BACK,
            ReleaseStatus.FAILED,
            ReleaseStatus.REJECTED,
        )


class Waiting(TextModel):
    """What a WAITING release waits for: hooks and gates, in order, then ``then``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: str = Field(description="pre-rollout, rollout or promotion.")
    step_index: int
    queue: list[str] = Field(description="Hooks and gates still to pass; the first is current.")
    then: ReleaseStatus = Field(description="Where the release goes once the queue is empty.")
    deadline: datetime = Field(description="When the current hook or gate runs out of time.")


class HistoryEntry(TextModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    time: datetime
    event: str
    detail: str = ""
    actor: str = ""


class VerdictSummary(TextModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    step_index: int
    result: VerdictResult
    final: bool
    reason: str
    checks: list[MetricCheck] = Field(default_factory=list)
    action: VerdictAction | None = Field(default=None, description="What the policy said.")


class ReleaseState(TextModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    release_id: str
    target: TargetRef
    version: VersionSpec
    stable_image: str = Field(default="", description="The image stable ran when planned.")
    policy: str
    requested_by: str
    steps: list[PlannedStep]
    analysis: Analysis | None = Field(
        default=None, description="The analysis after the request's tightenings."
    )
    status: ReleaseStatus
    step_index: int = 0
    paused: bool = False
    paused_at: datetime | None = None
    held_or_resumed_at: datetime | None = Field(
        default=None,
        description="When the latest pause or resume command obeyed or seen was sent (its "
        "time): an older one arriving later is stale.",
    )
    canary_weight: float = 0.0
    phase_started_at: datetime
    ready_deadline: datetime
    pause_limit_seconds: float = Field(
        default=600, description="A release paused for lack of data is rolled back after this."
    )
    last_command_at: datetime | None = Field(
        default=None, description="When the planner last issued a command; drives reconcile."
    )
    reissued: int = Field(default=0, description="Commands re-issued by reconcile so far.")
    analysis_request: str = Field(
        default="",
        description="The id of the RequestAnalysis judging the current step (the first one, or "
        "the one sent after a resume); a re-issue continues it. Empty: written before it was "
        "kept, the step's first request.",
    )
    rollback_failures: int = Field(
        default=0,
        description="Rollback attempts that failed or went unanswered; bounded, then failed.",
    )
    last_verdict: VerdictSummary | None = None
    outcome_reason: str = ""
    created_at: datetime
    updated_at: datetime
    trace_parent: str = Field(default="", description="W3C traceparent of the release's root span.")
    canary_resources: ContainerResources | None = Field(
        default=None, description="The policy's resources for the canary's container, if any."
    )
    operators: list[OperatorGrant] | None = Field(
        default=None, description="The policy's operators when the release was planned."
    )
    max_weight: int = Field(default=100, description="No step, not even an operator's, beyond.")
    hooks: list[Hook] = Field(default_factory=list, description="The policy's hooks and gates.")
    notify: list[Notify] = Field(default_factory=list, description="The policy's notifications.")
    waiting: Waiting | None = None
    group: str = Field(default="", description="The release group it is a member of, if any.")
    pipeline: str = Field(default="", description="The pipeline it is an environment of, if any.")
    history: list[HistoryEntry] = Field(default_factory=list)
    seen_event_ids: list[str] = Field(default_factory=list)

    @property
    def current_step(self) -> PlannedStep:
        return self.steps[min(self.step_index, len(self.steps) - 1)]

    @property
    def ready_window(self) -> timedelta:
        """The time the current step has to be in place: every step gets the first one's."""
        return max(self.ready_deadline - self.phase_started_at, timedelta(0))


class GroupStatus(StrEnum):
    RUNNING = "running"  # members are canaried one by one, in dependency order
    PROMOTING = "promoting"  # every member passed: promoted one by one, in that order
    ROLLING_BACK = "rolling_back"  # a member failed: the started ones go back, last first
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    REJECTED = "rejected"

    @property
    def terminal(self) -> bool:
        return self in (GroupStatus.SUCCEEDED, GroupStatus.ROLLED_BACK, GroupStatus.REJECTED)


class GroupMemberState(TextModel):
    """One member as the group sees it: what the group asked of its release, and when."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    release_id: str
    target: TargetRef
    version: VersionSpec
    started_at: datetime | None = Field(default=None, description="Its request was published.")
    ready_at: datetime | None = Field(default=None, description="It reached the group's gate.")
    promote_sent_at: datetime | None = None
    rollback_sent_at: datetime | None = None
    outcome: str = Field(default="", description="The member release's terminal status.")


class GroupState(TextModel):
    """A release group as the planner keeps it (key ``group.<id>``), written with
    compare-and-set like a release. Its members are ordinary releases; the group only decides
    when each starts, leaves the group's gate, or is rolled back."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group_id: str
    members: list[GroupMemberState]
    status: GroupStatus
    requested_by: str
    reason: str = ""
    request_id: str
    outcome_reason: str = ""
    failed_member: str = ""
    rolled_back_order: list[str] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime
    trace_parent: str = ""
    history: list[HistoryEntry] = Field(default_factory=list)


class PipelineStatus(StrEnum):
    RUNNING = "running"  # an environment's release is under way (or about to start)
    WAITING = "waiting"  # at the gate before the next environment
    SUCCEEDED = "succeeded"
    STOPPED = "stopped"  # an environment failed: the later ones never start
    REJECTED = "rejected"

    @property
    def terminal(self) -> bool:
        return self in (PipelineStatus.SUCCEEDED, PipelineStatus.STOPPED, PipelineStatus.REJECTED)


class PipelineStage(TextModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    namespace: str
    gate: bool = False
    release_id: str
    gate_opened_at: datetime | None = None
    gate_opened_by: str = ""
    started_at: datetime | None = None
    outcome: str = ""


class PipelineState(TextModel):
    """A release pipeline as the planner keeps it (key ``pipeline.<id>``), compare-and-set.
    ``version`` is the one artefact every environment gets, exactly as requested."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pipeline_id: str
    target: str
    version: VersionSpec
    stages: list[PipelineStage]
    status: PipelineStatus
    requested_by: str
    reason: str = ""
    request_id: str
    stopped_at_stage: str = ""
    outcome_reason: str = ""
    created_at: datetime
    updated_at: datetime
    trace_parent: str = ""
    history: list[HistoryEntry] = Field(default_factory=list)


def read_state(raw: bytes | str) -> ReleaseState:
    """A stored release state, written by this version or a newer one.

    Why: during a rolling upgrade a newer planner writes fields this version does not know, and
    the models forbid unknown fields (so that a typo in a policy is refused). Read strictly,
    every handler that reads the state fails: in the fault campaign the rollback services, one
    commit older than the planner, dead-lettered every rollback of a run and left canaries
    behind. So a reader keeps what it understands: fields it does not know are dropped, at any
    depth; anything else invalid still raises.
    """
    data = json.loads(raw)
    try:
        return ReleaseState.model_validate(data)
    except ValidationError as error:
        unknown = [e["loc"] for e in error.errors() if e["type"] == "extra_forbidden"]
        if not unknown:
            raise
        for location in unknown:
            _drop(data, location)
        return ReleaseState.model_validate(data)


def _drop(data: Any, location: tuple[int | str, ...]) -> None:
    *path, last = location
    for step in path:
        data = data[step]
    del data[last]
