"""The release state machine: ``(state, event, now) -> (new state, commands)``, with no I/O.

Why it is shaped this way:
- Events arrive at least once, possibly late and out of order, at several replicas. Every
  transition is guarded by the status and the step the event belongs to, and handled event ids
  are remembered, so a stale, duplicate or reordered event changes nothing.
- The commands a transition publishes are a function of the state it produced and the event
  that produced it (``commands_after``), with deterministic event ids. So when the handler
  crashed after writing the state but before publishing, the redelivered event (still the
  last one the state remembers) publishes exactly the same commands again, and JetStream's
  ``Nats-Msg-Id`` deduplication keeps those it already had.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, assert_never

import canaryflow.planner.waiting as waits
from canaryflow.planner.planning import Admission, EffectiveAnalysis
from canaryflow.runtime import operators
from canaryflow.runtime.operators import action_of
from canaryflow_contracts import Envelope, EventData
from canaryflow_contracts.events import (
    AbortRelease,
    AnalysisVerdict,
    ApplyPhase,
    GroupPromoteMember,
    HookCompleted,
    OpenGate,
    OperatorCommand,
    PauseRelease,
    PhaseFailed,
    PhaseReached,
    PlannedStep,
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
    StatusChange,
    TargetRef,
    VerdictAction,
    VerdictResult,
)
from canaryflow_contracts.identifiers import request_token, version_of
from canaryflow_contracts.policy import Hook, HookType
from canaryflow_contracts.state import (
    HISTORY_LIMIT,
    SEEN_EVENTS_LIMIT,
    HistoryEntry,
    ReleaseState,
    ReleaseStatus,
    VerdictSummary,
)

SOURCE = "canaryflow/planner"
# Rollback attempts (a trigger the rollback service gave up on, or a request nobody answered)
# before the release ends as failed and a person takes over: a release never hangs.
ROLLBACK_ATTEMPTS = 3
REJECTED_EVENT = "rejected"
# A rejected release never had a plan; one empty step keeps ``current_step`` safe for readers.
_NO_STEP = PlannedStep(index=0, weight=0, hold_seconds=0)


@dataclass(frozen=True)
class Command:
    """An event to publish, with the id that makes a re-publication a duplicate."""

    data: EventData
    event_id: str
    # The subject's last token when it is not the release's id (a refusal's request token).
    subject_key: str | None = None


@dataclass(frozen=True)
class Decision:
    state: ReleaseState | None  # None: nothing to write
    commands: list[Command] = field(default_factory=list)


NO_CHANGE = Decision(None, [])


def short_digest(text: str) -> str:
    """A short, stable token for deriving event ids from another event's id."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- requests


def accept(
    release_id: str, event: Envelope[ReleaseRequested], admission: Admission, now: datetime
) -> Decision:
    """The new release's first state (APPLYING step 0) and its first commands."""
    request = event.data
    planned = admission.plan
    state = ReleaseState(
        release_id=release_id,
        target=request.target,
        version=request.version,
        stable_image=admission.stable_image,
        policy=admission.policy_name,
        requested_by=request.requested_by,
        steps=list(planned.steps),
        analysis=planned.tightened,
        status=ReleaseStatus.APPLYING,
        phase_started_at=now,
        ready_deadline=planned.ready_deadline,
        pause_limit_seconds=planned.pause_seconds,
        canary_resources=admission.canary_resources,
        operators=admission.operators,
        max_weight=admission.max_weight,
        # A group's member waits at the group's gate after the policy's own gates.
        hooks=[*admission.hooks, waits.group_gate()] if request.group else admission.hooks,
        group=request.group,
        pipeline=request.pipeline,
        notify=admission.notify,
        last_command_at=now,
        created_at=now,
        updated_at=now,
        history=[
            HistoryEntry(
                time=now,
                event="requested",
                detail=request.reason or f"image {request.version.image}",
                actor=request.requested_by,
            ),
            HistoryEntry(
                time=now,
                event="planned",
                detail=_plan_detail(admission.policy_name, planned.steps, planned.analysis),
            ),
        ],
        seen_event_ids=[event.id],
    )
    # Pre-rollout hooks and confirm-rollout gates come before any traffic moves.
    state = waits.enter(state, waits.PRE_ROLLOUT, ReleaseStatus.APPLYING, now)
    return Decision(state, commands_after(state, event))


def reject(
    release_id: str,
    event: Envelope[Any],
    request: ReleaseRequested,
    reasons: list[str],
    now: datetime,
) -> Decision:
    """Reject a well-formed request on its merits (no policy, a busy target...).

    The release is stored as REJECTED, so ``status`` can show why and its id stays used: the
    rejection is that release's one terminal event.
    """
    state = ReleaseState(
        release_id=release_id,
        target=request.target,
        version=request.version,
        policy="",
        requested_by=request.requested_by,
        steps=[_NO_STEP],
        status=ReleaseStatus.REJECTED,
        phase_started_at=now,
        ready_deadline=now,
        outcome_reason="; ".join(reasons),
        created_at=now,
        updated_at=now,
        history=[HistoryEntry(time=now, event=REJECTED_EVENT, detail=r) for r in reasons],
        seen_event_ids=[event.id],
    )
    return Decision(state, commands_after(state, event))


# A parser's complaint about a large body can be long; the requester needs its beginning.
MAX_PROBLEM_CHARS = 500


@dataclass(frozen=True)
class Request:
    """Where a request message came from: what a refusal of it is addressed by."""

    request_id: str  # the envelope id (else the Nats-Msg-Id, else the stream position)
    release_id: str  # the subject's release id, as sent
    subject: str  # the NATS subject it was published on


def refuse(request: Request, reasons: list[str]) -> Decision:
    """Answer a message that cannot become the release it names; nothing is stored.

    The refusal is keyed by the request, not the release: published on the request's own
    subject with an id derived from the request's, so the release (if there is one) still
    ends exactly once, and a redelivery of the same message is stored once.
    """
    token = request_token(request.request_id)
    one_line = [" ".join(reason.split())[:MAX_PROBLEM_CHARS] for reason in reasons]
    refusal = RequestRefused(
        request_id=request.request_id,
        release_id=request.release_id,
        request_subject=request.subject,
        reasons=one_line,
    )
    return Decision(None, [Command(refusal, f"{token}.refused", token)])


def request_again(
    state: ReleaseState, event: Envelope[ReleaseRequested], request: Request, redelivered: bool
) -> Decision:
    """A request naming a release id that already has a state.

    The same message again (redelivered: its handling may have crashed between the write and
    the publish) re-issues what its state calls for, under the same ids. Anything else cannot
    become this release and is refused on the request's subject: the same request id sent
    again later (a duplicate), or another request reusing the release id.
    """
    if event.id in state.seen_event_ids:
        if redelivered:
            last = state.seen_event_ids[-1] == event.id
            return Decision(None, commands_after(state, event)) if last else NO_CHANGE
        why = (
            f"duplicate: request {event.id!r} was already handled as release "
            f"{state.release_id} ({state.status.value})"
        )
        return refuse(request, [why])
    why = (
        f"release id {state.release_id} is already used by another request "
        f"(release {state.status.value}); choose a new release id"
    )
    return refuse(request, [why])


def _rejection(release_id: str, event_id: str, target: TargetRef, reasons: list[str]) -> Command:
    # Keyed by the request, so a replay after a crash publishes it under the same id.
    return Command(
        ReleaseRejected(target=target, reasons=reasons, request_id=event_id),
        f"{release_id}.rejected.{short_digest(event_id)}",
    )


# --------------------------------------------------------------------------- transitions


def decide(state: ReleaseState, event: Envelope[Any], now: datetime) -> Decision:
    """What ``event`` does to the release in ``state``: the state to write and what to publish."""
    data = event.data
    if event.id in state.seen_event_ids:
        if state.seen_event_ids[-1] == event.id:
            # The last thing we handled: its commands may not have gone out before a crash.
            return Decision(None, commands_after(state, event, operator_refusal(state, event, now)))
        return NO_CHANGE
    if state.status.terminal:
        return NO_CHANGE
    named = getattr(data, "target", None)
    if named is not None and named != state.target:
        # A fact or command about another target in this release's name is forged or
        # mistaken: it moves nothing (the executor and the rollback service refuse it too).
        return NO_CHANGE
    refused = operator_refusal(state, event, now)
    new: ReleaseState | None
    if refused is not None:
        # Refused: the release goes on untouched; the refusal is recorded and announced.
        new = _log(state, now, "refused", f"{action_of(data).value}: {refused}", data.actor)
    else:
        new = _transition(state, event, now)
    if new is None:
        return NO_CHANGE
    inert = isinstance(data, PauseRelease | ResumeRelease) and new.paused == state.paused
    if refused is None and inert:
        # Recorded only (sent before the latest, or nothing to change): nothing to publish,
        # and not marked seen, so that a redelivery is judged the same way again.
        return Decision(new.model_copy(update={"updated_at": now}), [])
    new = new.model_copy(
        update={
            "updated_at": now,
            "seen_event_ids": [*state.seen_event_ids, event.id][-SEEN_EVENTS_LIMIT:],
        }
    )
    return Decision(new, commands_after(new, event, refused))


def operator_refusal(state: ReleaseState, event: Envelope[Any], now: datetime) -> str | None:
    """Why an operator command may not act on this release (its actor, action, signature and
    weight); None when it may, or when the event is no operator command."""
    data = event.data
    if not isinstance(data, OperatorCommand):
        return None
    why = operators.command_refusal(state.operators, event, now)
    if why is None and isinstance(data, SetWeight) and data.weight > state.max_weight:
        why = f"weight {data.weight}% is above this release's maximum of {state.max_weight}%"
    return why


def _set_weight(state: ReleaseState, now: datetime, command: SetWeight) -> ReleaseState:
    """A new step at the operator's weight, right after the current one, and go there.

    A new step (not the current one changed) gives every step-scoped event a new index, so
    the executor's and the metrics-watcher's facts about the old step can never be taken for
    facts about this one; the remaining steps follow it as planned.
    """
    current = state.current_step
    following = current.index + 1
    inserted = PlannedStep(
        index=following, weight=command.weight, hold_seconds=current.hold_seconds
    )
    later = [step.model_copy(update={"index": step.index + 1}) for step in state.steps[following:]]
    detail = f"canary to {command.weight}%" + (f": {command.reason}" if command.reason else "")
    return _log(state, now, "weight-set", detail, command.actor).model_copy(
        update={
            "steps": [*state.steps[:following], inserted, *later],
            "status": ReleaseStatus.APPLYING,
            "step_index": following,
            "phase_started_at": now,
            "ready_deadline": now + state.ready_window,
            "last_command_at": now,
        }
    )


FollowedEvent = (
    PhaseReached
    | PhaseFailed
    | AnalysisVerdict
    | PromotionCompleted
    | RollbackRequested
    | RollbackCompleted
    | RollbackFailed
    | PauseRelease
    | ResumeRelease
    | AbortRelease
    | PromoteNow
    | SetWeight
    | HookCompleted
    | OpenGate
    | GroupPromoteMember
)
"""What moves a planned release on: the events the planner follows (``app.FOLLOWED``, checked
against the catalogue). ``_transition`` handles each one, and mypy proves it (``assert_never``)."""

DecidedEvent = ReleaseRequested | FollowedEvent
"""What the planner publishes commands after: an admitted request and every event it follows.
``commands_after`` handles each one, and mypy proves it (``assert_never``)."""


def _transition(state: ReleaseState, event: Envelope[Any], now: datetime) -> ReleaseState | None:
    data = event.data
    if not isinstance(data, FollowedEvent):
        return None  # nothing the planner follows (a request is admitted, not decided)
    status = state.status
    in_flight = status in (ReleaseStatus.APPLYING, ReleaseStatus.ANALYSING)
    match data:
        case PhaseReached():
            if status is not ReleaseStatus.APPLYING or data.step.index != state.step_index:
                return None
            detail = f"step {data.step.index}: canary at {data.canary_weight:g}%"
            in_place = _log(state, now, "phase-reached", detail, event.source).model_copy(
                update={
                    "status": ReleaseStatus.ANALYSING,
                    "canary_weight": data.canary_weight,
                    "last_command_at": now,
                    "analysis_request": "",  # the step's first request (request_analysis)
                }
            )
            return waits.enter(in_place, waits.ROLLOUT, ReleaseStatus.ANALYSING, now)
        case HookCompleted() | OpenGate():
            return _on_hook_or_gate(state, data, now, event.source)
        case GroupPromoteMember():
            if data.group != state.group or not waits.at_group_gate(state):
                return None
            detail = f"group {data.group}: every member passed"
            return waits.passed(_log(state, now, "group-promote", detail, event.source), now)
        case AnalysisVerdict():
            if status is not ReleaseStatus.ANALYSING or data.step.index != state.step_index:
                return None
            return _on_verdict(state, data, now, event.source)
        case PhaseFailed():
            if status is not ReleaseStatus.APPLYING or data.step.index != state.step_index:
                return None
            return _rolling_back(state, now, "phase-failed", data.reason, event.source)
        case RollbackRequested():
            if status is ReleaseStatus.ROLLING_BACK:
                return None
            reason = data.reason or "rollback-requested"
            return _rolling_back(state, now, "rollback-requested", reason, data.requested_by)
        case AbortRelease():
            if status is ReleaseStatus.ROLLING_BACK:
                return None
            return _rolling_back(state, now, "aborted", data.described(), data.actor)
        case PauseRelease() | ResumeRelease():
            return _pause_or_resume(state, event, now) if in_flight else None
        case SetWeight():
            return _set_weight(state, now, data) if in_flight else None
        case PromoteNow():
            if not in_flight:
                return None
            promoting = _log(state, now, "promote-now", data.reason, data.actor).model_copy(
                update={
                    "status": ReleaseStatus.PROMOTING,
                    "paused": False,
                    "paused_at": None,
                    "last_command_at": now,
                }
            )
            return waits.enter(promoting, waits.PROMOTION, ReleaseStatus.PROMOTING, now)
        case PromotionCompleted():
            if status is not ReleaseStatus.PROMOTING:
                return None
            return _log(state, now, "promoted", data.image, event.source).model_copy(
                update={"status": ReleaseStatus.SUCCEEDED, "canary_weight": 100.0}
            )
        case RollbackFailed():
            # Like a completion, it may come before we heard of the trigger it answers.
            failures = state.rollback_failures + 1
            detail = f"attempt {failures} of {ROLLBACK_ATTEMPTS}: {data.reason}"
            failed = _rolling_back(state, now, "rollback-failed", detail, event.source).model_copy(
                update={"rollback_failures": failures}
            )
            if data.final or failures >= ROLLBACK_ATTEMPTS:
                return failed.model_copy(update={"status": ReleaseStatus.FAILED})
            return failed
        case RollbackCompleted():
            # The rollback service acts on its own triggers, possibly before we heard of them.
            detail = f"{data.reason}; stable at {data.stable_replicas} replicas"
            return _log(state, now, "rolled-back", detail, event.source).model_copy(
                update={
                    "status": ReleaseStatus.ROLLED_BACK,
                    "canary_weight": 0.0,
                    "paused": False,
                    "outcome_reason": state.outcome_reason or data.reason,
                }
            )
        case _:
            assert_never(data)


def _on_verdict(
    state: ReleaseState, verdict: AnalysisVerdict, now: datetime, source: str
) -> ReleaseState:
    """The policy's word, carried by the verdict's action: roll back, extend, pause or go on."""
    summary = VerdictSummary(
        step_index=verdict.step.index,
        result=verdict.result,
        final=verdict.final,
        reason=verdict.reason,
        checks=verdict.checks,
        action=verdict.action,
    )
    state = state.model_copy(update={"last_verdict": summary})
    detail = f"step {verdict.step.index}: {verdict.result.value}: {verdict.reason}"
    if _rolls_back(verdict):
        return _rolling_back(state, now, "verdict", detail, source)
    if verdict.action is VerdictAction.EXTEND:
        # The hold goes on: the reconcile's patience starts again from now.
        return _log(state, now, "extended", detail, source).model_copy(
            update={"last_command_at": now}
        )
    if not verdict.final:
        return state
    state = _log(state, now, "verdict", detail, source)
    if _passed(summary) and not state.paused:
        return _advance(state, now)
    # A held pass waits for resume; anything short of a pass never counts as one.
    return state.model_copy(update={"paused": True, "paused_at": state.paused_at or now})


def _rolls_back(verdict: AnalysisVerdict) -> bool:
    """Rollback when asked, and on any failure the policy does not hold for a person."""
    if verdict.action is VerdictAction.ROLLBACK:
        return True
    return verdict.result is VerdictResult.FAIL and verdict.action is not VerdictAction.PAUSE


def _on_hook_or_gate(
    state: ReleaseState, data: HookCompleted | OpenGate, now: datetime, source: str
) -> ReleaseState | None:
    """The hook or gate the release waits for is done: go on, or roll back on a failure."""
    hook = waits.current(state)
    if hook is None or state.waiting is None:
        return None
    if isinstance(data, OpenGate):
        if not hook.type.gate or data.gate != hook.name or hook.name == waits.GROUP_GATE:
            return None  # the group's gate is the group's to open
        detail = f"gate {hook.name}" + (f": {data.reason}" if data.reason else "")
        return waits.passed(_log(state, now, "gate-opened", detail, data.actor), now)
    if hook.type.gate or data.hook != hook.name or data.step_index != state.waiting.step_index:
        return None
    detail = f"{hook.type.value} hook {hook.name}" + (f": {data.detail}" if data.detail else "")
    if not data.ok:
        return _rolling_back(state, now, "hook-failed", f"{detail} (failed)", source)
    return waits.passed(_log(state, now, "hook-passed", detail, source), now)


def _passed(verdict: VerdictSummary) -> bool:
    """A final pass, or an inconclusive end the policy says to continue on; never no data."""
    if not verdict.final:
        return False
    if verdict.result is VerdictResult.PASS:
        return True
    return verdict.result is VerdictResult.INCONCLUSIVE and verdict.action is VerdictAction.CONTINUE


def _pause_or_resume(
    state: ReleaseState, event: Envelope[Any], now: datetime
) -> ReleaseState | None:
    """Pause and resume in the order they were sent, not the order they arrive.

    Why: the planner handles several messages at once and a redelivery comes late, so a pause
    sent before a resume can be handled after it and hold the release until its pause deadline
    rolls it back. Each one's send time is kept (a resume of a release not paused included), and
    one sent before the latest is ignored, with a line in the history.
    """
    data = event.data
    sent = event.time
    latest = state.held_or_resumed_at
    if latest is not None and sent < latest:
        what = "pause" if isinstance(data, PauseRelease) else "resume"
        detail = f"{what} sent {sent.isoformat()} ignored: one sent {latest.isoformat()} came first"
        return _log(state, now, "stale-command", detail, data.actor)
    stamped = state.model_copy(update={"held_or_resumed_at": sent})
    if isinstance(data, PauseRelease):
        if state.paused:
            return stamped
        return _log(stamped, now, "paused", data.reason, data.actor).model_copy(
            update={"paused": True, "paused_at": now}
        )
    if not state.paused:
        return stamped
    return _on_resume(stamped, now, data, event.id)


def _on_resume(
    state: ReleaseState, now: datetime, resume: ResumeRelease, resume_id: str
) -> ReleaseState:
    state = _log(state, now, "resumed", resume.reason, resume.actor).model_copy(
        update={"paused": False, "paused_at": None}
    )
    verdict = state.last_verdict
    final_here = (
        state.status is ReleaseStatus.ANALYSING
        and verdict is not None
        and verdict.final
        and verdict.step_index == state.step_index
    )
    if final_here and verdict is not None and _passed(verdict):
        return _advance(state, now)
    if final_here:  # analyse again, under a request of its own
        again = f"{state.release_id}.analyse.{state.step_index}.{short_digest(resume_id)}"
        return state.model_copy(update={"last_command_at": now, "analysis_request": again})
    if state.status is ReleaseStatus.APPLYING:
        return state.model_copy(update={"last_command_at": now})  # apply again
    return state  # an analysis is still running: its final verdict will come


def _advance(state: ReleaseState, now: datetime) -> ReleaseState:
    """After a passed step: the next step, or promotion after the last."""
    following = state.step_index + 1
    if following >= len(state.steps):
        return waits.enter(state, waits.PROMOTION, ReleaseStatus.PROMOTING, now)
    # Every step gets the same time to become ready as the first one had.
    return state.model_copy(
        update={
            "status": ReleaseStatus.APPLYING,
            "step_index": following,
            "phase_started_at": now,
            "ready_deadline": now + state.ready_window,
            "last_command_at": now,
        }
    )


def _rolling_back(
    state: ReleaseState, now: datetime, event: str, reason: str, actor: str
) -> ReleaseState:
    return _log(state, now, event, reason, actor).model_copy(
        update={
            "status": ReleaseStatus.ROLLING_BACK,
            "outcome_reason": state.outcome_reason or reason,
            "paused": False,
            "paused_at": None,
            "last_command_at": now,
        }
    )


def _log(state: ReleaseState, now: datetime, event: str, detail: str, actor: str) -> ReleaseState:
    entry = HistoryEntry(time=now, event=event, detail=detail, actor=actor)
    return state.model_copy(update={"history": [*state.history, entry][-HISTORY_LIMIT:]})


def with_history(
    state: ReleaseState, now: datetime, event: str, detail: str, actor: str = SOURCE
) -> ReleaseState:
    """``state`` with one more history entry (the oldest fall off past the limit)."""
    return _log(state, now, event, detail, actor)


# --------------------------------------------------------------------------- commands


def commands_after(
    state: ReleaseState, event: Envelope[Any], refused: str | None = None
) -> list[Command]:
    """What to publish once ``event`` has brought the release to ``state``; ``refused``: why
    the operator command ``event`` was refused, if it was."""
    data = event.data
    status = state.status
    rid = state.release_id
    if refused is not None and isinstance(data, OperatorCommand):
        notice = operators.refusal_notice(state.target, data, refused)
        return [Command(notice, operators.refused_id(rid, event.id))]
    if not isinstance(data, DecidedEvent):
        return []
    match data:
        case ReleaseRequested():
            if status is ReleaseStatus.REJECTED:
                reasons = [h.detail for h in state.history if h.event == REJECTED_EVENT]
                return [_rejection(rid, event.id, state.target, reasons)]
            planned = ReleasePlanned(
                target=state.target,
                version=state.version,
                policy=state.policy,
                steps=state.steps,
                request_id=event.id,
            )
            if status is ReleaseStatus.APPLYING and state.step_index == 0:
                return [Command(planned, f"{rid}.planned"), apply_phase(state)]
            if status is ReleaseStatus.WAITING and state.step_index == 0:
                return [Command(planned, f"{rid}.planned"), *_waiting_commands(state, event.id)]
            return []
        case PhaseReached():
            if status is ReleaseStatus.WAITING:
                return _waiting_commands(state, event.id)
            return [request_analysis(state)] if status is ReleaseStatus.ANALYSING else []
        case HookCompleted() | OpenGate() | GroupPromoteMember():
            if status is ReleaseStatus.ROLLING_BACK:
                rollback = RollbackRequested(
                    target=state.target, reason=state.outcome_reason, requested_by=SOURCE
                )
                return [
                    _status(state, event.id, StatusChange.ROLLING_BACK, state.outcome_reason),
                    Command(rollback, f"{rid}.rollback.{short_digest(event.id)}"),
                ]
            return after_wait(state, event.id)
        case AnalysisVerdict():
            if data.action is VerdictAction.EXTEND and status is ReleaseStatus.ANALYSING:
                detail = f"step {state.step_index + 1} hold extended: {data.reason}"
                return [_status(state, event.id, StatusChange.EXTENDED, detail)]
            if not (data.final or _rolls_back(data)):
                return []
            return _entry_commands(state, event.id)
        case ResumeRelease() if status is ReleaseStatus.ANALYSING and not state.paused:
            verdict = state.last_verdict
            status_change = _status(state, event.id, StatusChange.RESUMED, "analysis continues")
            if verdict is not None and verdict.final and verdict.step_index == state.step_index:
                return [status_change, request_analysis(state)]
            return [status_change]
        case (
            PhaseFailed()
            | RollbackRequested()
            | AbortRelease()
            | PauseRelease()
            | ResumeRelease()
            | PromoteNow()
            | SetWeight()
        ):
            return _entry_commands(state, event.id)
        case PromotionCompleted():
            if status is not ReleaseStatus.SUCCEEDED:
                return []
            evidence = state.last_verdict.checks if state.last_verdict else []
            summary = f"{state.version.image} is stable after {len(state.steps)} step(s)"
            succeeded = ReleaseSucceeded(target=state.target, summary=summary, evidence=evidence)
            return [
                Command(succeeded, f"{rid}.succeeded"),
                *_final_hooks(state, HookType.POST_ROLLOUT),
            ]
        case RollbackFailed():
            if status is ReleaseStatus.FAILED:
                return [Command(release_failed(state, data.leftovers), f"{rid}.failed")]
            retry = (
                f"rollback attempt {state.rollback_failures} failed: {data.reason}; trying again"
            )
            request = RollbackRequested(
                target=state.target, reason=state.outcome_reason, requested_by=SOURCE
            )
            return [
                _status(state, event.id, StatusChange.ROLLING_BACK, retry),
                Command(request, f"{rid}.rollback.f{state.rollback_failures}"),
            ]
        case RollbackCompleted():
            if status is not ReleaseStatus.ROLLED_BACK:
                return []
            verdict = state.last_verdict
            failing = verdict is not None and verdict.result is VerdictResult.FAIL
            summary = (
                f"rolled back: {state.outcome_reason}; stable restored to "
                f"{data.stable_replicas} replica(s) in {data.seconds_to_restore:.1f}s"
            )
            outcome = ReleaseRolledBack(
                target=state.target,
                summary=summary,
                evidence=verdict.checks if failing and verdict is not None else [],
            )
            return [
                Command(outcome, f"{rid}.rolled-back"),
                *_final_hooks(state, HookType.ROLLBACK),
            ]
        case _:
            assert_never(data)


def _entry_commands(state: ReleaseState, trigger_id: str) -> list[Command]:
    """The commands for the status a (non-terminal) transition just entered."""
    if state.status is ReleaseStatus.ROLLING_BACK:
        # The rollback service consumes the trigger itself; we only tell people.
        return [_status(state, trigger_id, StatusChange.ROLLING_BACK, state.outcome_reason)]
    if state.paused:
        verdict = state.last_verdict
        waiting = (
            f"step {state.step_index} {verdict.result.value}: {verdict.reason}"
            if verdict is not None and verdict.final and verdict.step_index == state.step_index
            else "held by an operator"
        )
        return [_status(state, trigger_id, StatusChange.PAUSED, f"{waiting}; waiting for resume")]
    if state.status is ReleaseStatus.WAITING:
        return _waiting_commands(state, trigger_id)
    if state.status is ReleaseStatus.APPLYING:
        return [
            _status(
                state,
                trigger_id,
                StatusChange.APPLYING,
                f"step {state.step_index + 1} of {len(state.steps)}",
            ),
            apply_phase(state),
        ]
    if state.status is ReleaseStatus.PROMOTING:
        return [
            _status(state, trigger_id, StatusChange.PROMOTING, state.version.image),
            request_promotion(state),
        ]
    return []


def after_wait(state: ReleaseState, trigger_id: str) -> list[Command]:
    """What to publish once a hook or gate is passed (or a gate expired and goes on)."""
    if state.status is ReleaseStatus.ANALYSING and not state.paused:
        return [request_analysis(state)]
    return _entry_commands(state, trigger_id)


def _waiting_commands(state: ReleaseState, trigger_id: str) -> list[Command]:
    """Run the hook the release now waits for, or say which gate waits to be opened."""
    hook = waits.current(state)
    if hook is None or state.waiting is None:
        return []
    until = state.waiting.deadline.strftime("%H:%M:%S")
    if hook.name == waits.GROUP_GATE and state.group:
        detail = f"passed: waits until {until} UTC for the other members of group {state.group}"
        return [_status(state, trigger_id, StatusChange.WAITING, detail)]
    if hook.type.gate:
        detail = (
            f"gate {hook.name} ({hook.type.value}) waits to be opened until {until} UTC: "
            f"canaryflow open-gate {state.release_id} {hook.name}"
        )
        return [_status(state, trigger_id, StatusChange.WAITING, detail)]
    where = hook.url or "the bus"
    detail = f"{hook.type.value} hook {hook.name} runs ({where}), until {until} UTC"
    return [_status(state, trigger_id, StatusChange.WAITING, detail), run_hook(state, hook)]


def run_hook(state: ReleaseState, hook: Hook) -> Command:
    step_index = state.waiting.step_index if state.waiting is not None else state.step_index
    command = RunHook(target=state.target, version=state.version, hook=hook, step_index=step_index)
    return Command(command, f"{state.release_id}.hook.{hook.name}.{step_index}")


def _final_hooks(state: ReleaseState, kind: HookType) -> list[Command]:
    """Post-rollout or rollback hooks: run once the release is over, nothing waits on them."""
    return [run_hook(state, hook) for hook in state.hooks if hook.type is kind]


def release_failed(state: ReleaseState, leftovers: list[str]) -> ReleaseFailed:
    """The end of a release whose rollback could not be completed: a person takes over."""
    summary = (
        f"rollback could not be completed after {state.rollback_failures} attempt(s): "
        f"{state.history[-1].detail if state.history else state.outcome_reason}; "
        "stable may not be whole: see leftovers"
    )
    return ReleaseFailed(target=state.target, summary=summary, leftovers=leftovers)


def _status(state: ReleaseState, trigger_id: str, status: StatusChange, detail: str) -> Command:
    changed = ReleaseStatusChanged(target=state.target, status=status, detail=detail)
    return Command(changed, f"{state.release_id}.status.{short_digest(trigger_id)}")


def apply_phase(state: ReleaseState, event_id: str = "") -> Command:
    step = state.current_step
    command = ApplyPhase(
        target=state.target,
        version=state.version,
        step=step,
        ready_deadline=state.ready_deadline,
        canary_resources=state.canary_resources,
    )
    return Command(command, event_id or f"{state.release_id}.apply.{step.index}")


def request_analysis(state: ReleaseState, reissue: int = 0) -> Command:
    """The request judging the current step, or (``reissue`` > 0) the ask again that continues it.

    A re-issue gets an id of its own (the first may still sit in JetStream's duplicate window)
    but names the request it continues, so the metrics-watcher goes on with that analysis
    instead of starting a second one beside it.
    """
    step = state.current_step
    current = state.analysis_request or f"{state.release_id}.analyse.{step.index}"
    command = RequestAnalysis(
        target=state.target,
        step=step,
        canary_version=version_of(state.version.image),
        stable_version=version_of(state.stable_image) if state.stable_image else "",
        policy=state.policy,
        analysis=state.analysis,
        continues=current if reissue else "",
        reissue=reissue,
    )
    return Command(command, f"{current}.r{reissue}" if reissue else current)


def request_promotion(state: ReleaseState, event_id: str = "") -> Command:
    command = RequestPromotion(target=state.target, version=state.version)
    return Command(command, event_id or f"{state.release_id}.promote")


def _plan_detail(policy: str, steps: tuple[PlannedStep, ...], analysis: EffectiveAnalysis) -> str:
    weights = ", ".join(f"{s.weight}% for {s.hold_seconds:g}s" for s in steps)
    limits = [f"min {analysis.min_requests} requests"]
    if analysis.max_error_rate is not None:
        limits.append(f"error rate <= {analysis.max_error_rate:g}")
    if analysis.max_p99_latency_seconds is not None:
        limits.append(f"p99 <= {analysis.max_p99_latency_seconds:g}s")
    return f"policy {policy}: {weights}; {', '.join(limits)}"
