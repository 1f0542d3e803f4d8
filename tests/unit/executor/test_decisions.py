"""When a Deployment counts as in place, and what the executor says when it is not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from canaryflow.executor import decisions
from canaryflow.runtime import conventions

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def ready(
    desired: int, ready: int, updated: int | None = None, settled: bool = True
) -> conventions.DeploymentReadiness:
    upd = desired if updated is None else updated
    return conventions.DeploymentReadiness(True, desired, ready, upd, ready, settled)


def test_in_place_needs_size_readiness_rollout_and_image() -> None:
    image = "registry.local/web:v2"
    assert decisions.in_place(ready(2, 2), 2, image, image)
    assert not decisions.in_place(ready(2, 1), 2, image, image)
    assert not decisions.in_place(ready(2, 2), 3, image, image)
    assert not decisions.in_place(ready(2, 2, updated=1), 2, image, image)
    assert not decisions.in_place(ready(2, 2, settled=False), 2, image, image)
    assert not decisions.in_place(ready(2, 2), 2, "registry.local/web:v1", image)


def test_deadline_reason_says_what_was_seen() -> None:
    reason = decisions.deadline_reason(
        "canary pods", T0, ready(4, 4), conventions.DeploymentReadiness(True, 1, 0, 1, 0, True)
    )
    assert reason == (
        "canary pods not in place by the deadline 2026-11-27T12:00:00+00:00: "
        "canary 0/1 ready, 1/1 updated; stable 4/4 ready, 4/4 updated"
    )


def test_a_reason_says_when_a_deployment_is_absent_or_its_spec_not_yet_observed() -> None:
    absent = conventions.readiness_of(None)
    behind = conventions.DeploymentReadiness(True, 2, 2, 2, 2, settled=False)
    reason = decisions.deadline_reason("baseline", T0, behind, absent)
    assert reason.endswith("canary absent; stable 2/2 ready, 2/2 updated, spec not yet observed"), (
        reason
    )


def test_readiness_of_api_json() -> None:
    body = {
        "metadata": {"generation": 4},
        "spec": {"replicas": 3},
        "status": {"observedGeneration": 3, "readyReplicas": 3, "updatedReplicas": 3},
    }
    seen = conventions.readiness_of(body)
    assert (seen.desired, seen.ready, seen.updated, seen.settled) == (3, 3, 3, False)
    assert not seen.complete
    assert not conventions.readiness_of(None).exists


def test_restore_owner() -> None:
    point = conventions.RestorePoint("rel-1", 4, {"spec": {"containers": []}})
    assert decisions.restore_owner({"metadata": {"annotations": point.annotations()}}) == "rel-1"
    assert decisions.restore_owner({"metadata": {}}) is None
    assert decisions.restore_owner(None) is None
    corrupt = {"metadata": {"annotations": {conventions.STABLE_REPLICAS_ANNOTATION: "x"}}}
    assert decisions.restore_owner(corrupt) is None
    # Taken over by the rollback service: the step in progress is superseded.
    marked = {**point.annotations(), conventions.ROLLING_BACK_ANNOTATION: "rel-1"}
    assert decisions.restore_owner({"metadata": {"annotations": marked}}) is None


def test_a_step_taken_up_late_gets_its_whole_window_from_then() -> None:
    started = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)
    window = timedelta(seconds=120)
    deadline = started + window
    # On time: the planner's deadline.
    assert decisions.step_deadline(deadline, window, started + timedelta(seconds=1)) == (
        started + timedelta(seconds=121)
    )
    assert decisions.step_deadline(deadline, window, started) == deadline
    # Taken up 5 minutes late (every executor was down): 120 s from now, not already over.
    late = started + timedelta(seconds=300)
    assert decisions.step_deadline(deadline, window, late) == late + timedelta(seconds=120)
