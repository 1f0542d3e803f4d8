"""When the executor acts, and what it says when it cannot: plain functions, no I/O."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from canaryflow.runtime.kube import CorruptRestorePoint, DeploymentReadiness, restore_point_of
from canaryflow_contracts.state import ReleaseState, ReleaseStatus

# The planner's statuses in which a step's command is still the current intent.
_APPLY_STATUSES = (ReleaseStatus.APPLYING, ReleaseStatus.ANALYSING)


def apply_wanted(state: ReleaseState | None, step_index: int) -> bool:
    """Whether an ApplyPhase for ``step_index`` should still be carried out.

    Without a state (the planner's bucket has none, e.g. the command came from elsewhere) the
    command itself is the intent. With one, a command for another step, or for a release
    that is rolling back or over, is stale: carrying it out would move the release backwards.
    ANALYSING counts because a replay of the current step's command must find it in place
    and report it again, not give up.
    """
    if state is None:
        return True
    return state.status in _APPLY_STATUSES and state.step_index == step_index


def promotion_wanted(state: ReleaseState | None) -> bool:
    """Promote unless the release is rolling back or already over (a stale replay)."""
    if state is None:
        return True
    return not state.status.terminal and state.status is not ReleaseStatus.ROLLING_BACK


def describe(readiness: DeploymentReadiness) -> str:
    if not readiness.exists:
        return "absent"
    return (
        f"{readiness.ready}/{readiness.desired} ready, {readiness.updated}/{readiness.desired} "
        f"updated{'' if readiness.settled else ', spec not yet observed'}"
    )


def deadline_reason(
    what: str, deadline: datetime, stable: DeploymentReadiness, canary: DeploymentReadiness
) -> str:
    return (
        f"{what} not in place by the deadline {deadline.isoformat()}: "
        f"canary {describe(canary)}; stable {describe(stable)}"
    )


def in_place(readiness: DeploymentReadiness, replicas: int, image: str, want_image: str) -> bool:
    """The API shows this Deployment at ``replicas``, all Ready, on the wanted image."""
    return readiness.complete and readiness.desired == replicas and image == want_image


def baseline_in_place(readiness: DeploymentReadiness, replicas: int) -> bool:
    """The baseline at ``replicas``, all Ready; with none wanted, absent or empty is fine."""
    if replicas == 0:
        return not readiness.exists or (readiness.desired == 0 and readiness.settled)
    return readiness.complete and readiness.desired == replicas


def restore_owner(stable: dict[str, Any] | None) -> str | None:
    """The release whose restore point stable carries (None: none, or unreadable)."""
    if stable is None:
        return None
    try:
        point = restore_point_of(stable)
    except CorruptRestorePoint:
        return None
    return point.release_id if point is not None else None
