"""When the executor acts, and what it says when it cannot: plain functions, no I/O."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from canaryflow.runtime.conventions import (
    CorruptRestorePoint,
    DeploymentReadiness,
    restore_point_of,
    rolling_back,
)


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


def step_deadline(command_deadline: datetime, window: timedelta, now: datetime) -> datetime:
    """When a step the executor takes up ``now`` fails for want of Ready pods.

    The deadline measures the cluster from the moment an executor acts on the step: a step
    first taken up late (every executor down, restarting, or behind a backlog) gets its whole
    window (``ReleaseState.ready_window``) from now, so our own downtime never fails a step. A
    restart mid-wait starts the window again, once per restart; the planner rolls back a step
    no executor answers for long (reconcile).
    """
    return max(command_deadline, now + window)


def in_place(readiness: DeploymentReadiness, replicas: int, image: str, want_image: str) -> bool:
    """The API shows this Deployment at ``replicas``, all Ready, on the wanted image."""
    return readiness.complete and readiness.desired == replicas and image == want_image


def baseline_in_place(readiness: DeploymentReadiness, replicas: int) -> bool:
    """The baseline at ``replicas``, all Ready; with none wanted, absent or empty is fine."""
    if replicas == 0:
        return not readiness.exists or (readiness.desired == 0 and readiness.settled)
    return readiness.complete and readiness.desired == replicas


def restore_owner(stable: dict[str, Any] | None) -> str | None:
    """The release whose restore point stable carries (None: none, unreadable, or the
    rollback service has taken stable over)."""
    if stable is None or rolling_back(stable):
        return None
    try:
        point = restore_point_of(stable)
    except CorruptRestorePoint:
        return None
    return point.release_id if point is not None else None
