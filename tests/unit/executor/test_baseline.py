"""The live baseline: what it is made of, when it is in place, and that a rollback removes it."""

from __future__ import annotations

import copy

from canaryflow.executor import workload
from canaryflow.executor.decisions import baseline_in_place
from canaryflow.rollback.restore import plan_restore
from canaryflow.runtime.conventions import RELEASE_LABEL, TRACK_LABEL, DeploymentReadiness
from tests.unit.executor.test_workload import TARGET, V2, container, stable_deployment


def test_the_baseline_runs_the_recorded_stable_version_on_its_own_track() -> None:
    stable = stable_deployment()
    recorded = copy.deepcopy(stable["spec"]["template"])
    baseline = workload.baseline_body(stable, recorded, TARGET, "rel-1", replicas=1)
    assert baseline["metadata"]["name"] == "web-baseline"
    assert baseline["spec"]["replicas"] == 1
    assert container(baseline, "web")["image"] == "registry.local/web:v1"
    assert baseline["spec"]["selector"]["matchLabels"] == {"app": "web", TRACK_LABEL: "baseline"}
    pod_labels = baseline["spec"]["template"]["metadata"]["labels"]
    assert pod_labels == {"app": "web", TRACK_LABEL: "baseline", RELEASE_LABEL: "rel-1"}
    assert baseline["metadata"]["labels"][RELEASE_LABEL] == "rel-1"
    assert "annotations" not in baseline["metadata"]
    assert recorded == stable["spec"]["template"], "the recorded template is not modified"


def test_canary_and_baseline_differ_only_in_version_track_and_name() -> None:
    stable = stable_deployment()
    canary = workload.canary_body(stable, TARGET, V2, "rel-1", 1)
    baseline = workload.baseline_body(stable, stable["spec"]["template"], TARGET, "rel-1", 1)
    assert container(canary, "web")["image"] != container(baseline, "web")["image"]
    assert canary["spec"]["strategy"] == baseline["spec"]["strategy"]


def ready(desired: int, ready_count: int, exists: bool = True) -> DeploymentReadiness:
    return DeploymentReadiness(exists, desired, ready_count, ready_count, ready_count, True)


def test_the_baseline_is_in_place_when_all_its_pods_are_ready() -> None:
    assert baseline_in_place(ready(2, 2), 2)
    assert not baseline_in_place(ready(2, 1), 2)
    assert not baseline_in_place(ready(1, 1), 2)
    # None wanted (a target too small to keep a stable pod besides): absent or empty is fine.
    assert baseline_in_place(ready(0, 0, exists=False), 0)
    assert baseline_in_place(ready(0, 0), 0)
    # Still running, or scaled to none but the controller has not seen it yet: not in place.
    assert not baseline_in_place(ready(1, 1), 0)
    assert not baseline_in_place(DeploymentReadiness(True, 0, 0, 0, 0, settled=False), 0)


def labelled(name: str, release: str) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "shop", "labels": {RELEASE_LABEL: release}}}


def test_a_rollback_removes_a_baseline_left_alone_by_its_canary() -> None:
    stable = stable_deployment()
    plan = plan_restore("rel-1", stable, None, labelled("web-baseline", "rel-1"))
    assert plan.remove_canary and plan.canary_present
    other = plan_restore("rel-1", stable, None, labelled("web-baseline", "rel-0"))
    assert not other.remove_canary
