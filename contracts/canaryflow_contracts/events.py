"""The event catalogue: every fact and command that moves a release, as typed payloads.

Facts are past tense (``PhaseReached``), commands imperative (``ApplyPhase``). Each payload
names its owner in its docstring: exactly one service publishes it. Payloads carry the target
so that a consumer (the rollback service above all) can act without asking another service.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from canaryflow_contracts.envelope import Envelope, EventData, envelope_of
from canaryflow_contracts.identifiers import DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN, IMAGE_PATTERN
from canaryflow_contracts.policy import Analysis, Hook, OperatorAction
from canaryflow_contracts.text import TextModel


class _Part(TextModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TargetRef(_Part):
    """The Deployment a release changes."""

    namespace: str = Field(pattern=DNS_LABEL_PATTERN, max_length=63)
    name: str = Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)

    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class EnvVar(_Part):
    name: str = Field(pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str


class ConfigMapChange(_Part):
    """New data for one ConfigMap the target references, as part of the new version.

    The canary gets its own copy (``<name>-<release id>``) with the change, so stable never
    sees it; promotion points stable at that copy, and a rollback deletes it.
    """

    name: str = Field(
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=189,
        description="The ConfigMap as the target references it (after an earlier release, "
        "the name it had before canaryflow made versioned copies of it).",
    )
    data: dict[str, str] = Field(default_factory=dict, description="Keys set (added or replaced).")
    remove: list[str] = Field(default_factory=list, description="Keys removed.")


class ContainerResources(_Part):
    """Requests and limits of one container, in Kubernetes quantities (``cpu: 250m``)."""

    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)


class VersionSpec(_Part):
    """What the new version is: an image, optionally with environment and configuration changes.

    The image may be the one stable runs: a release that changes only configuration is
    canaried like any other.
    """

    image: str = Field(pattern=IMAGE_PATTERN, max_length=512)
    container: str | None = Field(
        default=None, description="Container to change; defaults to the pod's first container."
    )
    env: list[EnvVar] = Field(default_factory=list, description="Env vars set on that container.")
    config_maps: list[ConfigMapChange] = Field(
        default_factory=list, description="ConfigMap data changes, canaried on versioned copies."
    )
    resources: ContainerResources | None = Field(
        default=None, description="Requests/limits for that container (replaced as a whole)."
    )


class AnalysisOverrides(_Part):
    """Tightenings of the policy's analysis. Values may only be stricter than the policy's."""

    max_error_rate: float | None = Field(default=None, ge=0, le=1)
    max_p99_latency_seconds: float | None = Field(default=None, gt=0)
    min_requests: int | None = Field(default=None, ge=1)


class PolicyOverrides(_Part):
    """A request may tighten its target's policy, never loosen it (the planner refuses that)."""

    max_weight: int | None = Field(default=None, ge=1, le=100)
    hold_seconds: float | None = Field(default=None, gt=0, description="Minimum hold per step.")
    analysis: AnalysisOverrides | None = None


# --------------------------------------------------------------------------- public request


class ReleaseRequested(EventData):
    """Public API. Published by any system (CI, bots, the CLI) to ask for a release.

    The envelope's ``subject`` is the release id the requester chose; ``id`` is the event id.
    """

    event_domain = "release"
    event_name = "requested"

    target: TargetRef
    version: VersionSpec
    overrides: PolicyOverrides = Field(default_factory=PolicyOverrides)
    requested_by: str = Field(min_length=1, max_length=256)
    reason: str = Field(default="", max_length=2048)
    group: str = Field(
        default="",
        max_length=63,
        description="The release group this release is a member of ('' for none). Set by the "
        "planner on the member requests it publishes for a GroupRequested: a member waits "
        "at the group's gate before promotion until every member passed. A request naming a "
        "group that does not list it is rejected.",
    )
    pipeline: str = Field(
        default="",
        max_length=63,
        description="The release pipeline this release is an environment of ('' for none). "
        "Set by the planner on the requests it publishes for a PipelineRequested; a request "
        "naming a pipeline that did not start it is rejected.",
    )


class RequestRefused(EventData):
    """Owner: planner. A message on the request subjects that cannot become the release it names.

    Not a release's outcome: a refused request changed nothing, and the release it named (if
    any) goes on or stays free as if it had never been sent. It is published on
    ``<prefix>.request.refused.v1.<token>``, keyed by the *request* (``request_token`` of its
    envelope id), never on the release's subjects: a reused release id, a duplicate of a
    request already handled, an envelope that does not parse or breaks the contract, a
    subject outside the grammar. The envelope's ``subject`` is that token.
    """

    event_domain = "request"
    event_name = "refused"
    subject_key = "requestToken"

    request_id: str = Field(
        description="The request's envelope id as sent; if it had none, its Nats-Msg-Id "
        "header; if neither, '<stream>:<sequence>' of the stored message."
    )
    release_id: str = Field(
        description="The release id the request's subject named, as sent ('' if none)."
    )
    request_subject: str = Field(description="The NATS subject the request was published on.")
    reasons: list[str] = Field(min_length=1, description="Every reason, in words.")


# --------------------------------------------------------------------------- planner


class PlannedStep(_Part):
    index: int = Field(ge=0)
    weight: int = Field(ge=0, le=100, description="Share of traffic for the canary, in percent.")
    hold_seconds: float = Field(ge=0)


class ReleasePlanned(EventData):
    """Owner: planner. The request is valid; these are the steps it will take."""

    event_domain = "release"
    event_name = "planned"

    target: TargetRef
    version: VersionSpec
    policy: str
    steps: list[PlannedStep]
    request_id: str = Field(
        default="",
        description="The envelope id of the request this release was made from: a requester "
        "knows its request's answer by it ('' from planners older than the field).",
    )


class ReleaseRejected(EventData):
    """Owner: planner. Terminal: the release's request was judged and rejected (no policy, a
    busy target...); nothing in the cluster changed, and the release id stays used."""

    event_domain = "release"
    event_name = "rejected"

    target: TargetRef
    reasons: list[str]
    request_id: str = Field(
        default="",
        description="The envelope id of the request this release was made from: a requester "
        "knows its request's answer by it ('' from planners older than the field).",
    )


class ApplyPhase(EventData):
    """Owner: planner (command to the executor). Put the canary at this step's weight."""

    event_domain = "phase"
    event_name = "apply"

    target: TargetRef
    version: VersionSpec
    step: PlannedStep
    ready_deadline: datetime = Field(description="Canary pods must be Ready by then.")
    canary_resources: ContainerResources | None = Field(
        default=None, description="The policy's resources for the canary's container, if any."
    )


class RequestAnalysis(EventData):
    """Owner: planner (command to the metrics-watcher). Judge the canary during this step."""

    event_domain = "analysis"
    event_name = "requested"

    target: TargetRef
    step: PlannedStep
    canary_version: str
    stable_version: str
    policy: str
    analysis: Analysis | None = Field(
        default=None,
        description="The policy's analysis after the request's tightenings; "
        "None: use the policy's as it is.",
    )
    continues: str = Field(
        default="",
        description="The id of the request this one asks again (the planner heard no final "
        "verdict in time): the analysis goes on from that request's progress and schedule, "
        "and takes it over from whoever still holds it, instead of starting over beside it. "
        "Empty: a new analysis.",
    )
    reissue: int = Field(
        default=0,
        ge=0,
        description="How many times the planner has asked again for this analysis; a later "
        "ask takes the analysis over from an earlier one.",
    )


class RequestPromotion(EventData):
    """Owner: planner (command to the executor). Make the canary's version the stable one."""

    event_domain = "promotion"
    event_name = "requested"

    target: TargetRef
    version: VersionSpec


class _ReleaseOutcome(EventData):
    target: TargetRef
    summary: str
    evidence: list[MetricCheck] = Field(default_factory=list)


class ReleaseSucceeded(_ReleaseOutcome):
    """Owner: planner. Terminal: stable runs the new version; no canary is left."""

    event_domain = "release"
    event_name = "succeeded"


class ReleaseRolledBack(_ReleaseOutcome):
    """Owner: planner. Terminal: the release was rolled back; ``evidence`` says why."""

    event_domain = "release"
    event_name = "rolled_back"


class ReleaseFailed(_ReleaseOutcome):
    """Owner: planner. Terminal: the release could not finish and could not be rolled back.

    A person takes over from here: ``leftovers`` is what the release left on the cluster
    (as the rollback service last saw it), which a person must clean up or finish.
    """

    event_domain = "release"
    event_name = "failed"

    leftovers: list[str] = Field(
        default_factory=list,
        description="What is left to clean up, e.g. 'Deployment shop/web-canary (2 replicas)'.",
    )


class StatusChange(StrEnum):
    """What a ``ReleaseStatusChanged`` announces."""

    APPLYING = "applying"  # the next step is being put in place
    PAUSED = "paused"  # held for a person (or by one), until resumed
    RESUMED = "resumed"
    WAITING = "waiting"  # on a gate or a hook
    EXTENDED = "extended"  # the step's hold goes on, on the same data
    PROMOTING = "promoting"
    ROLLING_BACK = "rolling_back"


class ReleaseStatusChanged(EventData):
    """Owner: planner. A non-terminal change a person should see: paused, resumed, waiting."""

    event_domain = "release"
    event_name = "status"

    target: TargetRef
    status: StatusChange
    detail: str


# --------------------------------------------------------------------------- executor


class PhaseReached(EventData):
    """Owner: executor. The step is really in place: pods Ready and replica counts right."""

    event_domain = "phase"
    event_name = "reached"

    target: TargetRef
    step: PlannedStep
    canary_weight: float = Field(ge=0, le=100, description="Achieved share, from Ready pods.")
    canary_ready: int
    stable_ready: int
    baseline_ready: int = Field(default=0, description="Ready pods of the live baseline.")


class PhaseFailed(EventData):
    """Owner: executor. The step could not be put in place by its deadline."""

    event_domain = "phase"
    event_name = "failed"

    target: TargetRef
    step: PlannedStep
    reason: str


class PromotionCompleted(EventData):
    """Owner: executor. Stable runs the new version at full size; the canary is gone."""

    event_domain = "promotion"
    event_name = "completed"

    target: TargetRef
    image: str


# --------------------------------------------------------------------------- metrics-watcher


class VerdictResult(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INSUFFICIENT_DATA = "insufficient_data"
    INCONCLUSIVE = "inconclusive"


class VerdictAction(StrEnum):
    """What the policy says a verdict leads to."""

    CONTINUE = "continue"
    EXTEND = "extend"  # not final: the step's hold was extended, the analysis goes on
    PAUSE = "pause"
    ROLLBACK = "rollback"


BINOMIAL_GUARD = "binomial-guard"
"""``MetricCheck.method`` of an error-rate guard above its max, judged against chance (a
one-sided binomial test): failed beyond chance, or not settled yet."""


class MetricCheck(_Part):
    """One measured fact behind a verdict, with everything needed to re-check it by hand.

    A threshold check compares ``value`` with ``threshold``. A sequential comparison (canary
    against the live baseline, ``method`` set) compares its ``statistic`` (the evidence
    against "the canary is no worse", an e-value) with ``threshold`` (1/alpha), and carries
    both tracks' numbers, the estimated relative change and its confidence interval.
    """

    metric: str
    track: str = Field(description="Which version was measured: canary, stable or baseline.")
    query: str
    value: float | None = Field(description="None when the query returned no data.")
    threshold: float | None
    comparison: Literal["<=", ">=", "<", "n/a"]
    sample_size: float
    passed: bool | None = Field(description="None when there was not enough data to judge.")
    method: str = Field(default="", description="How it was judged, e.g. msprt-rate.")
    baseline_query: str = ""
    baseline_value: float | None = None
    baseline_sample_size: float | None = None
    statistic: float | None = Field(
        default=None, description="Evidence against 'canary no worse' (e-value; >= threshold)."
    )
    p_value: float | None = Field(default=None, description="Always-valid p-value.")
    estimate: float | None = Field(
        default=None, description="Relative change canary vs baseline (0.1 = 10 % higher)."
    )
    lower: float | None = Field(default=None, description="Confidence interval of estimate.")
    upper: float | None = None
    decision: str = Field(default="", description="The decision in words.")


class AnalysisVerdict(EventData):
    """Owner: metrics-watcher. The judgement of one analysis tick, or of the whole step."""

    event_domain = "analysis"
    event_name = "verdict"

    target: TargetRef
    step: PlannedStep
    result: VerdictResult
    action: VerdictAction
    final: bool = Field(description="True when the step's analysis is over (hold time elapsed).")
    reason: str
    checks: list[MetricCheck]

    @property
    def routine(self) -> bool:
        """An interim verdict that asks for nothing: not final, not failed, the analysis goes on."""
        return (
            not self.final
            and self.action is VerdictAction.CONTINUE
            and self.result is not VerdictResult.FAIL
        )


# --------------------------------------------------------------------------- rollback


class RollbackRequested(EventData):
    """Any service or person: stop this release and restore stable."""

    event_domain = "rollback"
    event_name = "requested"

    target: TargetRef
    reason: str
    requested_by: str


class RollbackCompleted(EventData):
    """Owner: rollback. Stable serves 100 % at full size again; the canary is gone."""

    event_domain = "rollback"
    event_name = "completed"

    target: TargetRef
    reason: str
    stable_replicas: int
    seconds_to_restore: float = Field(description="From the rollback's trigger to stable Ready.")


class RollbackFailed(EventData):
    """Owner: rollback. A rollback trigger was given up on: stable could not be restored.

    Published once per trigger, after its last delivery or at once when no retry can help
    (``final``: the API forbids the writes, a restore point that cannot be read). The planner
    asks again up to a bound, then ends the release as failed.
    """

    event_domain = "rollback"
    event_name = "failed"

    target: TargetRef
    reason: str
    attempts: int = Field(ge=1, description="Deliveries of the trigger that were tried.")
    final: bool = Field(description="True when trying again cannot help without a person.")
    leftovers: list[str] = Field(
        default_factory=list, description="What the release still has on the cluster."
    )


# --------------------------------------------------------------------------- operators


class OperatorCommand(EventData):
    """Published by a person (through the CLI) to steer a release in flight."""

    event_domain = "operator"
    actor: str = Field(min_length=1, max_length=256, description="Who asks, e.g. alice@example.")
    reason: str = Field(default="", max_length=2048)


class PauseRelease(OperatorCommand):
    """Hold the release at its current step (analysis results are kept, no step advances)."""

    event_name = "pause"


class ResumeRelease(OperatorCommand):
    """Continue a paused release."""

    event_name = "resume"


class AbortRelease(OperatorCommand):
    """Roll back now. Consumed by the rollback service directly, so it works without a planner."""

    event_name = "abort"

    def described(self) -> str:
        """Why the release rolls back, the same in the planner's summary and the rollback's."""
        return f"aborted by {self.actor}" + (f": {self.reason}" if self.reason else "")


class PromoteNow(OperatorCommand):
    """Skip the remaining steps and promote the canary."""

    event_name = "promote"


class SetWeight(OperatorCommand):
    """Put the canary at this weight now; the release is judged there, then goes on."""

    event_name = "set_weight"
    weight: int = Field(ge=1, le=100, description="Share of traffic for the canary, in percent.")


class OpenGate(OperatorCommand):
    """Open a gate the release waits at (confirm-rollout, confirm-promotion)."""

    event_name = "open_gate"
    gate: str = Field(min_length=1, max_length=63, description="The gate's name in the policy.")


class OperatorCommandRefused(EventData):
    """Owner: planner, and rollback for aborts. A command was refused; nothing changed."""

    event_domain = "operator"
    event_name = "refused"

    target: TargetRef
    action: OperatorAction = Field(description="What was asked.")
    actor: str
    reason: str = Field(default="", description="Why the person asked.")
    refusal: str = Field(description="Why it was refused.")


# --------------------------------------------------------------------------- hooks


class RunHook(EventData):
    """Owner: planner (command). Run this hook now.

    The executor calls a hook that has a URL and answers with HookCompleted. A hook without
    one is this event itself: the system that subscribes to it answers with HookCompleted.
    """

    event_domain = "hook"
    event_name = "run"

    target: TargetRef
    version: VersionSpec
    hook: Hook
    step_index: int = Field(ge=0, description="The step it runs at (0 before the first).")


class HookCompleted(EventData):
    """Owner: executor (webhooks), or the system that answered a hook on the bus."""

    event_domain = "hook"
    event_name = "completed"

    target: TargetRef
    hook: str
    step_index: int = Field(ge=0)
    ok: bool
    detail: str = Field(default="", max_length=2048)


# --------------------------------------------------------------------------- release groups


class GroupMember(_Part):
    """One Deployment of a release group and the exact version it gets."""

    target: TargetRef
    version: VersionSpec


class GroupRequested(EventData):
    """Public API. Published by any system to release several Deployments as one unit.

    The envelope's ``subject`` is the group id the requester chose. Members are listed in
    dependency order (the cart API before the checkout page): each is canaried in that order,
    judged on its own, and waits at the group's gate before promotion; when every member
    passed they are promoted in that order, and when any fails the others are rolled back in
    the reverse order. Member ``i`` (from 1) is the release ``<group id>-m<i>``.
    """

    event_domain = "group"
    event_name = "requested"
    subject_key = "groupId"

    members: list[GroupMember] = Field(min_length=1, max_length=10)
    requested_by: str = Field(min_length=1, max_length=256)
    reason: str = Field(default="", max_length=2048)


class GroupMemberRef(_Part):
    release_id: str
    target: TargetRef


class GroupPlanned(EventData):
    """Owner: planner. The group's request is valid; these releases will be its members."""

    event_domain = "group"
    event_name = "planned"
    subject_key = "groupId"

    members: list[GroupMemberRef]
    request_id: str = Field(description="The envelope id of the GroupRequested.")


class GroupRejected(EventData):
    """Owner: planner. Terminal: the group's request was judged and rejected; nothing started."""

    event_domain = "group"
    event_name = "rejected"
    subject_key = "groupId"

    reasons: list[str] = Field(min_length=1)
    request_id: str


class GroupTransition(StrEnum):
    """What a ``GroupStatusChanged`` announces."""

    MEMBER_STARTED = "member_started"  # the member's release was requested
    MEMBER_WAITING = "member_waiting"  # the member passed its canary, waits for the others
    PROMOTING = "promoting"  # every member passed: promotion, in dependency order
    MEMBER_PROMOTED = "member_promoted"
    ROLLING_BACK = "rolling_back"  # a member failed: the others go back, in reverse order
    MEMBER_ROLLED_BACK = "member_rolled_back"


class GroupStatusChanged(EventData):
    """Owner: planner. A non-terminal transition of a group, naming the member it concerns."""

    event_domain = "group"
    event_name = "status"
    subject_key = "groupId"

    status: GroupTransition
    member: str = Field(description="The member's release id.")
    target: TargetRef
    detail: str


class GroupPromoteMember(EventData):
    """Owner: planner (command to itself, on the member's release id). Every member of the
    group passed: this member may leave the group's gate and be promoted."""

    event_domain = "group"
    event_name = "promote_member"

    group: str
    target: TargetRef


class _GroupOutcome(EventData):
    subject_key = "groupId"

    summary: str
    members: list[GroupMemberRef]


class GroupSucceeded(_GroupOutcome):
    """Owner: planner. Terminal: every member was promoted, in dependency order."""

    event_domain = "group"
    event_name = "succeeded"


class GroupRolledBack(_GroupOutcome):
    """Owner: planner. Terminal: a member failed and every started member was rolled back, in
    reverse order (``rolled_back_order``); ``failed_member`` and ``reason`` say why."""

    event_domain = "group"
    event_name = "rolled_back"

    failed_member: str
    reason: str
    rolled_back_order: list[str] = Field(
        description="Member release ids in the order they were rolled back."
    )


# --------------------------------------------------------------------------- release pipelines


class PipelineEnvironment(_Part):
    """One environment of a pipeline: a namespace whose ReleasePolicy for the target says how
    the version is released there (test: one step, no analysis; production: the full canary)."""

    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$", max_length=32)
    namespace: str = Field(pattern=DNS_LABEL_PATTERN, max_length=63)
    gate: bool = Field(
        default=False,
        description="Wait, before this environment starts, for OpenPipelineGate naming it.",
    )


class PipelineRequested(EventData):
    """Public API. Published by any system to move one version through environments in order.

    The envelope's ``subject`` is the pipeline id the requester chose. Environment ``i`` (from
    1) is the release ``<pipeline id>-e<i>`` of Deployment ``target`` in its namespace, with
    exactly ``version``; it starts only when the one before it succeeded (and its gate, if any,
    was opened). A failure stops the pipeline there: that environment is rolled back, the
    ones before it keep the version, the ones after it are never touched.
    """

    event_domain = "pipeline"
    event_name = "requested"
    subject_key = "pipelineId"

    target: str = Field(
        pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="The Deployment's name."
    )
    version: VersionSpec
    environments: list[PipelineEnvironment] = Field(min_length=1, max_length=9)
    requested_by: str = Field(min_length=1, max_length=256)
    reason: str = Field(default="", max_length=2048)


class PipelinePlanned(EventData):
    """Owner: planner. The pipeline's request is valid: its environments, as releases."""

    event_domain = "pipeline"
    event_name = "planned"
    subject_key = "pipelineId"

    version: VersionSpec
    releases: list[str] = Field(description="Each environment's release id, in order.")
    request_id: str


class PipelineTransition(StrEnum):
    ENVIRONMENT_STARTED = "environment_started"
    ENVIRONMENT_SUCCEEDED = "environment_succeeded"
    GATE_WAITING = "gate_waiting"
    GATE_OPENED = "gate_opened"


class PipelineStatusChanged(EventData):
    """Owner: planner. A non-terminal transition of a pipeline, naming its environment."""

    event_domain = "pipeline"
    event_name = "status"
    subject_key = "pipelineId"

    status: PipelineTransition
    environment: str
    release_id: str
    detail: str


class OpenPipelineGate(OperatorCommand):
    """Open the gate before a pipeline's environment (on the pipeline's id). Allowed to whom
    the ReleasePolicy of that environment grants ``open-gate``."""

    event_name = "open_pipeline_gate"
    subject_key = "pipelineId"
    environment: str = Field(min_length=1, max_length=32)


class PipelineSucceeded(EventData):
    """Owner: planner. Terminal: the version succeeded in every environment, in order."""

    event_domain = "pipeline"
    event_name = "succeeded"
    subject_key = "pipelineId"

    summary: str
    version: VersionSpec


class PipelineStopped(EventData):
    """Owner: planner. Terminal: an environment failed (or the request was rejected); that
    environment was rolled back, the later ones never started."""

    event_domain = "pipeline"
    event_name = "stopped"
    subject_key = "pipelineId"

    environment: str = Field(description="Where it stopped ('' when rejected).")
    release_id: str = ""
    reasons: list[str] = Field(min_length=1)
    evidence: list[MetricCheck] = Field(default_factory=list)
    request_id: str = ""


# --------------------------------------------------------------------------- trust


class CommandRefused(EventData):
    """Owner: executor, rollback. A command was not obeyed; nothing in the cluster changed.

    A service that changes workloads obeys a command only when it belongs to a live release
    whose state asks for exactly that now, for a target its ReleasePolicy governs, with an
    image the policy allows. Anything else (forged, replayed, stale or mistaken) is refused
    with every reason, and this event says so on the release id the command named.
    """

    event_domain = "command"
    event_name = "refused"

    command: str = Field(
        description="The refused command's type, e.g. io.canaryflow.phase.apply.v1."
    )
    command_id: str = Field(description="The refused command's envelope id.")
    source: str = Field(description="Who the refused command said it came from.")
    target: TargetRef | None = Field(
        default=None, description="The target the command named (None: it named none)."
    )
    reasons: list[str] = Field(min_length=1)
    checks: list[str] = Field(
        min_length=1,
        description="Which checks failed, one word each: unknown-release, status, target, "
        "version, step, hook, policy, image.",
    )


class DeadLetter(EventData):
    """Owner: the service that gave up on a message after its bounded redeliveries."""

    event_domain = "deadletter"
    event_name = "message"

    consumer: str
    original_subject: str
    deliveries: int
    error: str
    payload: str = Field(
        description="The original message body, as received (its beginning, if truncated)."
    )
    payload_bytes: int | None = Field(
        default=None, description="The original body's size in bytes."
    )
    payload_truncated: bool = Field(
        default=False, description="True when ``payload`` holds only the body's beginning."
    )


for _model in (ReleaseSucceeded, ReleaseRolledBack, ReleaseFailed, PipelineStopped):
    _model.model_rebuild()


@dataclass(frozen=True)
class CatalogueEntry:
    """Who publishes an event and who consumes it: the ownership the brief assigns, and the
    one place it is written (each service's consumers are checked against it; the executor
    consumes what people are notified of)."""

    event: type[EventData]
    publisher: str
    consumers: tuple[str, ...]


# Every event type, in catalogue order; schemas and the AsyncAPI document are generated from it.
CATALOGUE: tuple[CatalogueEntry, ...] = (
    CatalogueEntry(
        ReleaseRequested, "any requester, and the planner for a group's members", ("planner",)
    ),
    CatalogueEntry(RequestRefused, "planner", ("the requester",)),
    CatalogueEntry(ReleasePlanned, "planner", ("executor",)),
    CatalogueEntry(ReleaseRejected, "planner", ("executor", "planner")),
    # The planner follows its own outcomes and status changes for release groups.
    CatalogueEntry(ReleaseStatusChanged, "planner", ("executor", "planner")),
    CatalogueEntry(ReleaseSucceeded, "planner", ("executor", "planner")),
    CatalogueEntry(ReleaseRolledBack, "planner", ("executor", "planner")),
    CatalogueEntry(ReleaseFailed, "planner", ("executor", "planner")),
    CatalogueEntry(ApplyPhase, "planner", ("executor",)),
    CatalogueEntry(PhaseReached, "executor", ("planner",)),
    CatalogueEntry(PhaseFailed, "executor", ("planner", "rollback")),
    CatalogueEntry(RequestAnalysis, "planner", ("metrics-watcher",)),
    CatalogueEntry(AnalysisVerdict, "metrics-watcher", ("planner", "rollback")),
    CatalogueEntry(RequestPromotion, "planner", ("executor",)),
    CatalogueEntry(PromotionCompleted, "executor", ("planner",)),
    CatalogueEntry(RollbackRequested, "any service or person", ("rollback", "planner")),
    CatalogueEntry(RollbackCompleted, "rollback", ("planner",)),
    CatalogueEntry(RollbackFailed, "rollback", ("planner",)),
    CatalogueEntry(PauseRelease, "operator (CLI)", ("planner",)),
    CatalogueEntry(ResumeRelease, "operator (CLI)", ("planner",)),
    CatalogueEntry(AbortRelease, "operator (CLI)", ("rollback", "planner")),
    CatalogueEntry(PromoteNow, "operator (CLI)", ("planner",)),
    CatalogueEntry(SetWeight, "operator (CLI)", ("planner",)),
    CatalogueEntry(OperatorCommandRefused, "planner, rollback", ("executor",)),
    CatalogueEntry(OpenGate, "operator (CLI) or any system", ("planner",)),
    CatalogueEntry(RunHook, "planner", ("executor", "systems answering bus hooks")),
    CatalogueEntry(HookCompleted, "executor or a system answering a bus hook", ("planner",)),
    CatalogueEntry(CommandRefused, "executor, rollback", ("executor",)),
    CatalogueEntry(DeadLetter, "any service", ("operator",)),
    CatalogueEntry(GroupRequested, "any requester", ("planner",)),
    CatalogueEntry(GroupPlanned, "planner", ("the requester",)),
    CatalogueEntry(GroupRejected, "planner", ("the requester",)),
    CatalogueEntry(GroupStatusChanged, "planner", ("the requester",)),
    CatalogueEntry(GroupPromoteMember, "planner", ("planner",)),
    CatalogueEntry(GroupSucceeded, "planner", ("the requester",)),
    CatalogueEntry(GroupRolledBack, "planner", ("the requester",)),
    CatalogueEntry(PipelineRequested, "any requester", ("planner",)),
    CatalogueEntry(PipelinePlanned, "planner", ("the requester",)),
    CatalogueEntry(PipelineStatusChanged, "planner", ("the requester",)),
    CatalogueEntry(OpenPipelineGate, "operator (CLI) or any system", ("planner",)),
    CatalogueEntry(PipelineSucceeded, "planner", ("the requester",)),
    CatalogueEntry(PipelineStopped, "planner", ("the requester",)),
)

EVENT_TYPES: dict[str, type[EventData]] = {
    entry.event.event_type(): entry.event for entry in CATALOGUE
}
TERMINAL_EVENTS: tuple[type[EventData], ...] = (
    ReleaseSucceeded,
    ReleaseRolledBack,
    ReleaseFailed,
    ReleaseRejected,
)


def parse_event(raw: bytes | str) -> Envelope[Any]:
    """Parse any catalogue event, choosing the payload model by the envelope's ``type``."""
    header = _EnvelopeHeader.model_validate_json(raw)
    event = EVENT_TYPES.get(header.type)
    if event is None:
        raise ValueError(f"unknown event type {header.type!r}")
    return envelope_of(event).model_validate_json(raw)


class _EnvelopeHeader(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
