"""A release's configuration on the canary and on promotion: copies, references, resources."""

from __future__ import annotations

from typing import Any

from canaryflow.executor import workload
from canaryflow.runtime import bundle as bundles
from canaryflow_contracts.events import (
    ConfigMapChange,
    ContainerResources,
    EnvVar,
    TargetRef,
    VersionSpec,
)
from tests.unit.executor.test_workload import stable_deployment

TARGET = TargetRef(namespace="shop", name="web")


def with_config(stable: dict[str, Any]) -> dict[str, Any]:
    container = stable["spec"]["template"]["spec"]["containers"][0]
    container["envFrom"] = [{"configMapRef": {"name": "web-config"}}]
    return stable


def test_the_canary_names_its_copy_and_stable_keeps_the_original() -> None:
    stable = with_config(stable_deployment())
    version = VersionSpec(
        image="registry.local/web:v1",  # the same image: a configuration-only release
        config_maps=[ConfigMapChange(name="web-config", data={"LAYOUT": "compact"})],
    )
    canary = workload.canary_body(
        stable, TARGET, version, "rel-1", 1, renames={"web-config": "web-config-rel-1"}
    )
    canary_refs = bundles.references(canary["spec"]["template"]).config_maps
    assert canary_refs == {"web-config-rel-1"}
    assert bundles.references(stable["spec"]["template"]).config_maps == {"web-config"}


def test_promotion_switches_stable_to_the_copy_in_the_same_template_change() -> None:
    stable = with_config(stable_deployment())
    version = VersionSpec(image="registry.local/web:v2", env=[EnvVar(name="MODE", value="compact")])
    promoted = workload.promoted_stable(stable, version, 4, {"web-config": "web-config-rel-1"})
    assert promoted is not None
    template = promoted["spec"]["template"]
    assert bundles.references(template).config_maps == {"web-config-rel-1"}
    assert template["spec"]["containers"][0]["image"] == "registry.local/web:v2"
    # Replayed on the promoted stable, nothing is left to write.
    again = workload.promoted_stable(promoted, version, 4, {"web-config-rel-1": "web-config-rel-1"})
    assert again is None


def test_a_version_with_resources_replaces_the_containers_requests_and_limits() -> None:
    stable = stable_deployment()
    stable["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "requests": {"cpu": "1"},
        "limits": {"memory": "1Gi"},
    }
    version = VersionSpec(
        image="registry.local/web:v2",
        resources=ContainerResources(requests={"cpu": "250m", "memory": "128Mi"}),
    )
    template = workload.with_version(stable["spec"]["template"], version)
    assert template["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "250m", "memory": "128Mi"}
    }
    assert template["spec"]["containers"][1].get("resources") is None  # the sidecar untouched
    unchanged = workload.with_version(stable["spec"]["template"], VersionSpec(image="r/web:v2"))
    assert unchanged["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "1"}
