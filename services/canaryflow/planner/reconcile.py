"""The level-triggered safety net: a release whose last command went unanswered is nudged again.

Events can be lost (a crash between a state write and a publish, a consumer dead-lettering),
and a release must never be stranded by that. Every few seconds each live release is compared
with the clock: a command unanswered for longer than it can reasonably take is re-issued under
a fresh event id (the old id may still sit in JetStream's duplicate window), and a pause that
outlived its limit turns into a rollback, because waiting longer would leave a canary serving
users with nobody judging it.

A step the executor never answered is asked for again, not rolled back at its deadline: the
deadline measures the cluster from the moment an executor acts on the step (the executor
gives a step it takes up late its whole window then), so an executor restarted or upgraded
for longer than the window changes no outcome. Only an executor silent for
``APPLY_REISSUES`` more windows rolls the release back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import canaryflow.planner.waiting as waits
from canaryflow.planner.machine import (
    NO_CHANGE,
    ROLLBACK_ATTEMPTS,
    SOURCE,
    Command,
    Decision,
    after_wait,
    apply_phase,
    release_failed,
    request_analysis,
    request_promotion,
    with_history,
)
from canaryflow_contracts.events import RollbackRequested
from canaryflow_contracts.state import ReleaseState, ReleaseStatus


@dataclass(frozen=True)
class ReconcileTimings:
    """How long the planner waits for an answer before it acts on the silence."""

    grace_seconds: float = 15.0
    # The policy's analysis interval is not in the state; this bounds it from above for the
    # usual policies (the hold itself is in the state and dominates the wait).
    analysis_interval_seconds: float = 5.0
    # Promotion and rollback wait for pods to become Ready, so they get longer.
    completion_grace_seconds: float = 120.0


DEFAULT_TIMINGS = ReconcileTimings()
# Times a step's ApplyPhase is asked for again, a window apart, before an executor that never
# answers rolls the release back.
APPLY_REISSUES = 2


def reconcile(
    state: ReleaseState, now: datetime, timings: ReconcileTimings = DEFAULT_TIMINGS
) -> Decision:
    """What to re-issue for ``state`` at ``now``: a new state to write (CAS) and commands."""
    if state.status.terminal:
        return NO_CHANGE
    rid = state.release_id
    waited = now - (state.last_command_at or state.updated_at)
    if (
        state.paused
        and state.paused_at is not None
        and now - state.paused_at > timedelta(seconds=state.pause_limit_seconds)
        and state.status is not ReleaseStatus.ROLLING_BACK
    ):
        reason = f"paused for longer than {state.pause_limit_seconds:g}s"
        return _roll_back(state, now, reason)
    if state.status is ReleaseStatus.WAITING:
        return _waited_out(state, now)
    if state.status is ReleaseStatus.APPLYING:
        return _unanswered_step(state, now, waited, timings)
    if state.status is ReleaseStatus.ANALYSING:
        limit = (
            state.current_step.hold_seconds
            + 3 * timings.analysis_interval_seconds
            + timings.grace_seconds
        )
        if state.paused or waited <= timedelta(seconds=limit):
            return NO_CHANGE
        command = request_analysis(state, reissue=state.reissued + 1)
        return _reissue(state, now, command, "no final verdict")
    if waited <= timedelta(seconds=timings.completion_grace_seconds):
        return NO_CHANGE
    if state.status is ReleaseStatus.PROMOTING:
        command = request_promotion(state, f"{rid}.promote.r{state.reissued + 1}")
        return _reissue(state, now, command, "promotion not completed")
    return _unanswered_rollback(state, now, timings)


def _unanswered_step(
    state: ReleaseState, now: datetime, waited: timedelta, timings: ReconcileTimings
) -> Decision:
    """A step unanswered past its deadline: asked again a window apart, then rolled back.

    An executor that is up answers by the deadline itself (in place, or failed with what the
    cluster showed); silence means no executor has acted on the step.
    """
    grace = timedelta(seconds=timings.grace_seconds)
    if now <= state.ready_deadline + grace:
        return NO_CHANGE
    window = state.ready_window
    if now > state.ready_deadline + APPLY_REISSUES * (window + grace) + grace:
        reason = (
            f"step {state.step_index} not in place: no executor answered within "
            f"{APPLY_REISSUES} more windows of {window.total_seconds():g}s after its deadline"
        )
        return _roll_back(state, now, reason)
    if waited <= window + grace:
        return NO_CHANGE
    event_id = f"{state.release_id}.apply.{state.step_index}.r{state.reissued + 1}"
    return _reissue(state, now, apply_phase(state, event_id), "step not answered")


def _unanswered_rollback(state: ReleaseState, now: datetime, timings: ReconcileTimings) -> Decision:
    """Ask again; after ``ROLLBACK_ATTEMPTS`` unanswered or failed attempts, end as failed.

    Nobody has seen the cluster when the rollback service never answered, so what is left
    is named by where to look, not listed.
    """
    failures = state.rollback_failures + 1
    silence = f"no rollback completed within {timings.completion_grace_seconds:g}s"
    if failures >= ROLLBACK_ATTEMPTS:
        detail = f"attempt {failures} of {ROLLBACK_ATTEMPTS}: {silence}"
        failed = with_history(state, now, "rollback-failed", detail).model_copy(
            update={
                "status": ReleaseStatus.FAILED,
                "rollback_failures": failures,
                "last_command_at": now,
                "updated_at": now,
            }
        )
        unknown = [
            f"not inspected (the rollback service did not answer): Deployments "
            f"{state.target.namespace}/{state.target.name}-canary and -baseline, the restore "
            f"point on {state.target.namespace}/{state.target.name}"
        ]
        return Decision(
            failed, [Command(release_failed(failed, unknown), f"{state.release_id}.failed")]
        )
    rollback = RollbackRequested(
        target=state.target,
        reason=state.outcome_reason or "rollback not completed",
        requested_by=SOURCE,
    )
    command = Command(rollback, f"{state.release_id}.rollback.r{state.reissued + 1}")
    return _reissue(state, now, command, silence, rollback_failures=failures)


def _waited_out(state: ReleaseState, now: datetime) -> Decision:
    """A hook or gate out of time: a gate may say go on; anything else rolls back."""
    hook = waits.expired(state, now)
    if hook is None or state.waiting is None:
        return NO_CHANGE
    if waits.expiry_continues(hook):
        detail = f"gate {hook.name} was not opened by its deadline; its policy says continue"
        new = waits.passed(with_history(state, now, "gate-expired", detail), now)
        new = new.model_copy(update={"updated_at": now})
        trigger = f"{state.release_id}.expired.{hook.name}.{state.waiting.step_index}"
        return Decision(new, after_wait(new, trigger))
    if hook.type.gate:
        return _roll_back(state, now, f"gate {hook.name} was not opened by its deadline")
    return _roll_back(state, now, f"{hook.type.value} hook {hook.name} did not answer in time")


def _reissue(
    state: ReleaseState, now: datetime, command: Command, why: str, **updates: object
) -> Decision:
    detail = f"{why}: re-issued {type(command.data).__name__} as {command.event_id}"
    new = with_history(state, now, "reissued", detail).model_copy(
        update={
            "reissued": state.reissued + 1,
            "last_command_at": now,
            "updated_at": now,
            **updates,
        }
    )
    return Decision(new, [command])


def _roll_back(state: ReleaseState, now: datetime, reason: str) -> Decision:
    """Give up on the release; the rollback service restores stable on our request."""
    rollback = RollbackRequested(target=state.target, reason=reason, requested_by=SOURCE)
    command = Command(rollback, f"{state.release_id}.rollback.r{state.reissued + 1}")
    new = with_history(state, now, "rollback-requested", reason).model_copy(
        update={
            "status": ReleaseStatus.ROLLING_BACK,
            "outcome_reason": state.outcome_reason or reason,
            "paused": False,
            "paused_at": None,
            "reissued": state.reissued + 1,
            "last_command_at": now,
            "updated_at": now,
        }
    )
    return Decision(new, [command])
