"""Restore decisions from the two Deployments as the API shows them."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from canaryflow.rollback.restore import RestorePlan, plan_restore
from canaryflow.runtime import conventions

TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"app": "web"}},
    "spec": {"containers": [{"name": "web", "image": "registry.local/web:v1"}]},
}


def stable(
    replicas: int,
    template: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "uid": "s-uid",
            "resourceVersion": "77",
            "annotations": {"deployment.kubernetes.io/revision": "2", **(annotations or {})},
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": copy.deepcopy(template or TEMPLATE),
        },
        "status": {"readyReplicas": replicas},
    }


def recorded(release_id: str = "rel-1", replicas: int = 4) -> dict[str, str]:
    point = conventions.RestorePoint(release_id, replicas, TEMPLATE)
    return point.annotations()


def canary(release_id: str | None = "rel-1") -> dict[str, Any]:
    labels = {conventions.TRACK_LABEL: "canary"}
    if release_id:
        labels[conventions.RELEASE_LABEL] = release_id
    return {"metadata": {"name": "web-canary", "namespace": "shop", "uid": "c", "labels": labels}}


def test_scaled_down_stable_goes_back_to_its_recorded_size_before_the_canary_goes() -> None:
    plan = plan_restore("rel-1", stable(3, annotations=recorded()), canary())
    assert plan.stable_body is not None
    assert plan.stable_body["spec"]["replicas"] == 4
    assert plan.stable_body["spec"]["template"] == TEMPLATE
    assert plan.stable_body["metadata"]["resourceVersion"] == "77"  # compare-and-set
    assert "status" not in plan.stable_body
    assert (plan.full_size, plan.wait_for_stable, plan.remove_canary) == (4, True, True)
    assert plan.clear_restore_point
    assert plan.note == "restored stable's size"
    assert plan.canary_present
    assert plan.changes_something


def test_changed_template_is_put_back_with_its_env() -> None:
    promoted: dict[str, Any] = copy.deepcopy(TEMPLATE)
    promoted["spec"]["containers"][0]["image"] = "registry.local/web:v2"
    promoted["spec"]["containers"][0]["env"] = [{"name": "MODE", "value": "new"}]
    plan = plan_restore("rel-1", stable(4, promoted, recorded()), None)
    assert plan.stable_body is not None
    assert plan.stable_body["spec"]["template"] == TEMPLATE
    assert plan.note == "restored stable's pod template"
    # Annotations stay until the canary is gone: a crash in between must still find them.
    assert conventions.STABLE_REPLICAS_ANNOTATION in plan.stable_body["metadata"]["annotations"]


def test_already_restored_writes_nothing_but_still_finishes_the_cleanup() -> None:
    marked = {**recorded(), conventions.ROLLING_BACK_ANNOTATION: "rel-1"}
    plan = plan_restore("rel-1", stable(4, annotations=marked), None)
    assert plan == RestorePlan(None, 4, True, True, True, "stable already restored", False)
    assert not plan.changes_something


def test_the_first_attempt_marks_stable_as_the_rollbacks_even_when_nothing_else_differs() -> None:
    # Found by make chaos: an executor still putting step 0 in place scaled stable down after
    # the rollback had found it whole; the mark, written under stable's resourceVersion, makes
    # that write either come first (and the rollback's write a 409 and a fresh plan) or refused.
    plan = plan_restore("rel-1", stable(4, annotations=recorded()), canary())
    assert plan.stable_body is not None
    annotations = plan.stable_body["metadata"]["annotations"]
    assert annotations[conventions.ROLLING_BACK_ANNOTATION] == "rel-1"
    assert plan.stable_body["metadata"]["resourceVersion"] == "77"  # compare-and-set
    assert plan.stable_body["spec"]["replicas"] == 4
    assert plan.note == "stable already restored"
    assert not plan.restores_stable
    # The mark is a restore annotation: it goes with the restore point at the end.
    assert conventions.without_restore_point(plan.stable_body) is not None
    cleared = conventions.without_restore_point(plan.stable_body) or {}
    assert not conventions.rolling_back(cleared)


def test_no_restore_point_only_removes_the_canary() -> None:
    plan = plan_restore("rel-1", stable(4), canary())
    note = "nothing recorded on stable; its canary removed"
    assert plan == RestorePlan(None, 4, False, True, False, note, canary_present=True)
    assert plan.changes_something


def test_replay_after_full_restore_has_nothing_to_do() -> None:
    plan = plan_restore("rel-1", stable(4), None)
    assert plan == RestorePlan(
        None, 4, False, False, False, "nothing recorded on stable; no canary"
    )
    assert not plan.changes_something


def test_unlabelled_canary_is_removed_anothers_is_not() -> None:
    assert plan_restore("rel-1", stable(4), canary(None)).remove_canary
    assert not plan_restore("rel-1", stable(4), canary("rel-2")).remove_canary


def test_stale_trigger_leaves_a_later_releases_target_alone() -> None:
    plan = plan_restore("rel-1", stable(3, annotations=recorded("rel-2")), canary("rel-2"))
    note = "the target now carries release rel-2's restore point; left alone"
    assert plan == RestorePlan(None, 3, False, False, False, note)
    assert not plan.changes_something


def test_missing_target_removes_only_our_canary() -> None:
    gone = "the target Deployment does not exist"
    plan = plan_restore("rel-1", None, canary())
    assert plan == RestorePlan(None, 0, False, True, False, gone, canary_present=True)
    assert plan.changes_something
    assert plan_restore("rel-1", None, canary("rel-2")) == RestorePlan(
        None, 0, False, False, False, gone
    )


def test_template_and_size_are_restored_together_without_touching_what_the_api_returned() -> None:
    promoted: dict[str, Any] = copy.deepcopy(TEMPLATE)
    promoted["spec"]["containers"][0]["image"] = "registry.local/web:v2"
    seen = stable(2, promoted, recorded())
    del seen["status"]  # a Deployment the controller has not reported on yet
    before = copy.deepcopy(seen)
    plan = plan_restore("rel-1", seen, None)
    assert plan.note == "restored stable's pod template and size"
    assert plan.stable_body is not None
    assert (plan.stable_body["spec"]["replicas"], plan.stable_body["spec"]["template"]) == (
        4,
        TEMPLATE,
    )
    assert seen == before, "the body read from the API is not modified"


def test_a_restore_point_that_names_no_release_is_restored_by_whoever_rolls_back() -> None:
    unnamed = {k: v for k, v in recorded().items() if k != conventions.RELEASE_ANNOTATION}
    plan = plan_restore("rel-1", stable(3, annotations=unnamed), None)
    assert plan.stable_body is not None
    assert plan.stable_body["spec"]["replicas"] == 4


def test_a_stable_without_replicas_counts_as_one_pod() -> None:
    # The API's default for spec.replicas.
    unsized = stable(4)
    del unsized["spec"]["replicas"]
    assert plan_restore("rel-1", unsized, None).full_size == 1


def test_corrupt_annotations_are_refused() -> None:
    broken = stable(
        3,
        annotations={
            conventions.STABLE_REPLICAS_ANNOTATION: "four",
            conventions.RESTORE_TEMPLATE_ANNOTATION: json.dumps(TEMPLATE),
        },
    )
    with pytest.raises(conventions.CorruptRestorePoint):
        plan_restore("rel-1", broken, None)


def test_restore_point_round_trip_and_removal() -> None:
    body = stable(3, annotations=recorded(replicas=5))
    assert conventions.restore_point_of(body) == conventions.RestorePoint("rel-1", 5, TEMPLATE)
    cleaned = conventions.without_restore_point(body)
    assert cleaned is not None
    assert cleaned["metadata"]["annotations"] == {"deployment.kubernetes.io/revision": "2"}
    assert conventions.restore_point_of(cleaned) is None
    assert conventions.without_restore_point(cleaned) is None
