"""Which events start a rollback, for which target and with what reason: no I/O here."""

from __future__ import annotations

from dataclasses import dataclass

from canaryflow.runtime import operators
from canaryflow_contracts import EventData
from canaryflow_contracts.events import (
    AbortRelease,
    AnalysisVerdict,
    PhaseFailed,
    RollbackRequested,
    TargetRef,
    VerdictAction,
)
from canaryflow_contracts.policy import OperatorAction
from canaryflow_contracts.state import ReleaseState, ReleaseStatus


@dataclass(frozen=True)
class Trigger:
    target: TargetRef
    reason: str


def trigger_of(event: EventData, state: ReleaseState | None) -> Trigger | None:
    """The rollback an event asks for, or None when it asks for none (or cannot be acted on).

    Only AbortRelease lacks a target: it comes from the release's state, and an abort of a
    release nobody knows is answered with nothing to do.
    """
    if isinstance(event, AnalysisVerdict):
        if event.action is not VerdictAction.ROLLBACK:
            return None
        return Trigger(event.target, f"analysis failed at step {event.step.index}: {event.reason}")
    if isinstance(event, PhaseFailed):
        return Trigger(event.target, f"step {event.step.index} failed: {event.reason}")
    if isinstance(event, RollbackRequested):
        return Trigger(event.target, event.reason or f"requested by {event.requested_by}")
    if isinstance(event, AbortRelease):
        if state is None:
            return None
        detail = f": {event.reason}" if event.reason else ""
        return Trigger(state.target, f"aborted by {event.actor}{detail}")
    return None


def abort_refusal(event: AbortRelease, state: ReleaseState | None) -> str | None:
    """Why this abort may not act (the policy's operators); None when it may.

    The planner refuses the same abort for the same reason; the rollback service checks too
    because it acts on an abort without waiting for the planner.
    """
    if state is None:
        return None
    return operators.refusal(state.operators, event.actor, OperatorAction.ABORT)


def should_restore(state: ReleaseState | None) -> bool:
    """A succeeded release is final: stable runs the new version and must stay on it."""
    return state is None or state.status is not ReleaseStatus.SUCCEEDED
