"""The canary and promotion bodies, built from a stable Deployment as the API returns it."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from canaryflow.executor import workload
from canaryflow.runtime import conventions
from canaryflow_contracts.events import EnvVar, TargetRef, VersionSpec

TARGET = TargetRef(namespace="shop", name="web")
V2 = VersionSpec(image="registry.local/web:v2")


def stable_deployment(replicas: int = 4) -> dict[str, Any]:
    """A Deployment the way GET returns it: server fields, defaults, status."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "uid": "0b7e-uid",
            "resourceVersion": "812",
            "generation": 3,
            "creationTimestamp": "2026-11-27T10:00:00Z",
            "labels": {"app": "web", "team": "checkout"},
            "annotations": {"deployment.kubernetes.io/revision": "3"},
            "managedFields": [{"manager": "kubectl", "operation": "Update"}],
            "ownerReferences": [{"kind": "Something", "name": "x", "uid": "u"}],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate"},
            "revisionHistoryLimit": 10,
            "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": {"note": "kept"}},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "registry.local/web:v1",
                            "imagePullPolicy": "IfNotPresent",
                            "env": [
                                {"name": "MODE", "value": "classic"},
                                {"name": "LOG", "value": "info"},
                            ],
                        },
                        {"name": "sidecar", "image": "registry.local/proxy:1.0"},
                    ],
                    "dnsPolicy": "ClusterFirst",
                },
            },
        },
        "status": {"replicas": replicas, "readyReplicas": replicas, "observedGeneration": 3},
    }


def container(body: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in body["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    assert len(found) == 1
    result: dict[str, Any] = found[0]
    return result


class TestCanaryBody:
    def test_copies_stable_spec_with_new_image_on_the_first_container(self) -> None:
        stable = stable_deployment()
        canary = workload.canary_body(stable, TARGET, V2, "rel-1", replicas=1)
        assert canary["metadata"]["name"] == "web-canary"
        assert canary["metadata"]["namespace"] == "shop"
        assert canary["spec"]["replicas"] == 1
        assert container(canary, "web")["image"] == "registry.local/web:v2"
        assert container(canary, "sidecar")["image"] == "registry.local/proxy:1.0"
        assert canary["spec"]["strategy"] == {"type": "RollingUpdate"}
        assert canary["spec"]["template"]["spec"]["dnsPolicy"] == "ClusterFirst"
        assert canary["spec"]["template"]["metadata"]["annotations"] == {"note": "kept"}

    def test_track_label_on_selector_and_pods_so_the_service_selects_both(self) -> None:
        canary = workload.canary_body(stable_deployment(), TARGET, V2, "rel-1", replicas=1)
        selector = canary["spec"]["selector"]["matchLabels"]
        pod_labels = canary["spec"]["template"]["metadata"]["labels"]
        assert selector == {"app": "web", conventions.TRACK_LABEL: "canary"}
        assert pod_labels["app"] == "web"
        assert pod_labels[conventions.TRACK_LABEL] == "canary"
        assert pod_labels[conventions.RELEASE_LABEL] == "rel-1"
        # Every selector label is on the pods, or the API refuses the Deployment.
        assert selector.items() <= pod_labels.items()

    def test_labels_mark_release_and_manager_and_keep_stables(self) -> None:
        labels = workload.canary_body(stable_deployment(), TARGET, V2, "rel-1", 1)["metadata"][
            "labels"
        ]
        assert labels == {
            "app": "web",
            "team": "checkout",
            conventions.TRACK_LABEL: "canary",
            conventions.RELEASE_LABEL: "rel-1",
            "app.kubernetes.io/managed-by": "canaryflow",
        }

    def test_drops_server_fields_status_and_stables_annotations(self) -> None:
        stable = stable_deployment()
        stable["metadata"]["annotations"][conventions.STABLE_REPLICAS_ANNOTATION] = "4"
        canary = workload.canary_body(stable, TARGET, V2, "rel-1", 1)
        for field in (
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "managedFields",
            "ownerReferences",
            "generation",
            "annotations",
        ):
            assert field not in canary["metadata"], field
        assert "status" not in canary
        assert canary["apiVersion"] == "apps/v1"
        assert canary["kind"] == "Deployment"

    def test_does_not_touch_the_stable_it_was_built_from(self) -> None:
        stable = stable_deployment()
        before = copy.deepcopy(stable)
        workload.canary_body(stable, TARGET, V2, "rel-1", 1)
        assert stable == before

    def test_named_container_gets_image_and_env(self) -> None:
        version = VersionSpec(
            image="registry.local/proxy:2.0",
            container="sidecar",
            env=[EnvVar(name="UPSTREAM", value="web:8080")],
        )
        canary = workload.canary_body(stable_deployment(), TARGET, version, "rel-1", 1)
        assert container(canary, "sidecar")["image"] == "registry.local/proxy:2.0"
        assert container(canary, "sidecar")["env"] == [{"name": "UPSTREAM", "value": "web:8080"}]
        assert container(canary, "web")["image"] == "registry.local/web:v1"

    def test_env_replaces_by_name_and_appends_new_ones(self) -> None:
        version = VersionSpec(
            image="registry.local/web:v2",
            env=[EnvVar(name="MODE", value="new-layout"), EnvVar(name="FLAG", value="")],
        )
        canary = workload.canary_body(stable_deployment(), TARGET, version, "rel-1", 1)
        assert container(canary, "web")["env"] == [
            {"name": "MODE", "value": "new-layout"},
            {"name": "LOG", "value": "info"},
            {"name": "FLAG"},  # the API drops an empty value; so do we
        ]

    def test_unknown_container_is_refused(self) -> None:
        version = VersionSpec(image="registry.local/web:v2", container="nope")
        with pytest.raises(workload.WorkloadError, match="container 'nope' not found"):
            workload.canary_body(stable_deployment(), TARGET, version, "rel-1", 1)


class TestCanaryWrite:
    def created(self, desired: dict[str, Any]) -> dict[str, Any]:
        """What the API returns after creating ``desired``: ours plus server fields."""
        existing = copy.deepcopy(desired)
        existing["metadata"].update(uid="c-uid", resourceVersion="900", generation=1)
        existing["spec"]["progressDeadlineSeconds"] = 600
        existing["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] = "/dev/x"
        existing["status"] = {"replicas": 1}
        return existing

    def test_create_when_absent(self) -> None:
        desired = workload.canary_body(stable_deployment(), TARGET, V2, "rel-1", 1)
        assert workload.canary_write(desired, None) == workload.CanaryWrite("create", desired)

    def test_nothing_when_the_server_copy_only_adds_defaults(self) -> None:
        desired = workload.canary_body(stable_deployment(), TARGET, V2, "rel-1", 1)
        assert workload.canary_write(desired, self.created(desired)).action == "none"

    def test_replace_with_resource_version_when_size_or_image_differ(self) -> None:
        stable = stable_deployment()
        existing = self.created(workload.canary_body(stable, TARGET, V2, "rel-1", 1))
        desired = workload.canary_body(stable, TARGET, V2, "rel-1", 2)
        write = workload.canary_write(desired, existing)
        assert write.action == "replace"
        assert write.body is not None
        assert write.body["metadata"]["resourceVersion"] == "900"
        assert write.body["spec"]["replicas"] == 2

    def test_replace_keeps_foreign_labels(self) -> None:
        stable = stable_deployment()
        existing = self.created(workload.canary_body(stable, TARGET, V2, "rel-0", 1))
        existing["metadata"]["labels"]["cost-center"] = "42"
        write = workload.canary_write(
            workload.canary_body(stable, TARGET, V2, "rel-1", 1), existing
        )
        assert write.body is not None
        assert write.body["metadata"]["labels"]["cost-center"] == "42"
        assert write.body["metadata"]["labels"][conventions.RELEASE_LABEL] == "rel-1"

    def test_recreate_when_selector_differs(self) -> None:
        desired = workload.canary_body(stable_deployment(), TARGET, V2, "rel-1", 1)
        existing = self.created(desired)
        existing["spec"]["selector"]["matchLabels"]["extra"] = "x"
        assert workload.canary_write(desired, existing).action == "recreate"


class TestCovers:
    @pytest.mark.parametrize(
        ("desired", "actual", "expected"),
        [
            ({"a": 1}, {"a": 1, "b": 2}, True),
            ({"a": 1}, {"a": 2}, False),
            ({"a": {}}, {}, True),
            ({"a": [1, 2]}, {"a": [1, 2]}, True),
            ({"a": [1, 2]}, {"a": [1, 2, 3]}, False),
            ({"a": [{"x": 1}]}, {"a": [{"x": 1, "y": 2}]}, True),
            ({"a": "s"}, {"a": {"s": 1}}, False),
        ],
    )
    def test_cases(self, desired: Any, actual: Any, expected: bool) -> None:
        assert workload.covers(desired, actual) is expected


class TestRestorePoint:
    def test_first_apply_records_size_and_template(self) -> None:
        stable = stable_deployment(replicas=5)
        recording = workload.record_restore_point(stable, "rel-1")
        assert recording.point == conventions.RestorePoint("rel-1", 5, stable["spec"]["template"])
        assert recording.body is not None
        annotations = recording.body["metadata"]["annotations"]
        assert annotations[conventions.STABLE_REPLICAS_ANNOTATION] == "5"
        assert annotations[conventions.RELEASE_ANNOTATION] == "rel-1"
        assert (
            json.loads(annotations[conventions.RESTORE_TEMPLATE_ANNOTATION])
            == stable["spec"]["template"]
        )
        # The write is a compare-and-set on what was read, and keeps other annotations.
        assert recording.body["metadata"]["resourceVersion"] == "812"
        assert annotations["deployment.kubernetes.io/revision"] == "3"
        assert "status" not in recording.body
        assert conventions.restore_point_of(recording.body) == recording.point

    def test_recorded_once_later_steps_keep_the_original_size(self) -> None:
        first = workload.record_restore_point(stable_deployment(replicas=4), "rel-1")
        assert first.body is not None
        scaled_down = copy.deepcopy(first.body)
        scaled_down["spec"]["replicas"] = 3
        again = workload.record_restore_point(scaled_down, "rel-1")
        assert again.body is None
        assert again.point.replicas == 4

    def test_another_releases_leftover_point_is_kept_and_restamped(self) -> None:
        left = workload.record_restore_point(stable_deployment(replicas=6), "rel-old")
        assert left.body is not None
        left.body["spec"]["replicas"] = 2
        left.body["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.local/web:bad"
        recording = workload.record_restore_point(left.body, "rel-new")
        assert recording.adopted_from == "rel-old"
        assert recording.point.release_id == "rel-new"
        assert recording.point.replicas == 6
        assert recording.point.template == stable_deployment()["spec"]["template"]

    def test_unset_replicas_count_as_one(self) -> None:
        stable = stable_deployment()
        del stable["spec"]["replicas"]
        assert workload.record_restore_point(stable, "rel-1").point.replicas == 1


class TestPromotedStable:
    def test_new_version_and_full_size_keeping_stable_labels(self) -> None:
        stable = stable_deployment(replicas=3)
        version = VersionSpec(image="registry.local/web:v2", env=[EnvVar(name="MODE", value="n")])
        body = workload.promoted_stable(stable, version, replicas=4)
        assert body is not None
        assert body["spec"]["replicas"] == 4
        assert container(body, "web")["image"] == "registry.local/web:v2"
        assert {"name": "MODE", "value": "n"} in container(body, "web")["env"]
        assert body["spec"]["template"]["metadata"]["labels"] == {"app": "web"}
        assert body["metadata"]["resourceVersion"] == "812"
        assert "status" not in body

    def test_nothing_to_write_once_promoted(self) -> None:
        stable = stable_deployment(replicas=4)
        promoted = workload.promoted_stable(stable, V2, replicas=4)
        assert promoted is not None
        assert workload.promoted_stable(promoted, V2, replicas=4) is None
