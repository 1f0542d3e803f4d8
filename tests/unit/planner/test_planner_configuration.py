"""Configuration in a release request: checked against what the target really reads."""

from __future__ import annotations

from canaryflow.planner import machine
from canaryflow.planner.planning import Admission
from canaryflow.planner.validation import DeploymentFacts, check_request
from canaryflow_contracts.events import (
    ApplyPhase,
    ConfigMapChange,
    ContainerResources,
    VersionSpec,
)
from tests.unit.planner.factory import OLD_IMAGE, RID, T0, envelope, policy, request

READS_CONFIG = DeploymentFacts(
    replicas=4, containers=(("web", OLD_IMAGE),), config_maps=("web-config",)
)


def with_config(*changes: ConfigMapChange, image: str = OLD_IMAGE) -> VersionSpec:
    return VersionSpec(image=image, config_maps=list(changes))


def test_a_configuration_only_release_of_a_config_map_the_target_reads_is_admitted() -> None:
    version = with_config(ConfigMapChange(name="web-config", data={"LAYOUT": "compact"}))
    req = request().model_copy(update={"version": version})
    admitted = check_request(req, READS_CONFIG, [policy()], T0)
    assert isinstance(admitted, Admission), admitted
    assert admitted.stable_image == OLD_IMAGE == req.version.image


def test_a_config_map_the_target_does_not_read_and_bad_keys_are_refused() -> None:
    version = with_config(
        ConfigMapChange(name="other", data={"A": "1"}),
        ConfigMapChange(name="web-config", data={"bad key": "1"}, remove=["ok.key"]),
    )
    req = request().model_copy(update={"version": version})
    refused = check_request(req, READS_CONFIG, [policy()], T0)
    assert not isinstance(refused, Admission)
    assert any("reads no ConfigMap 'other' (it reads: web-config)" in r for r in refused.reasons)
    assert any("['bad key']" in r for r in refused.reasons)


def test_the_policys_canary_resources_travel_with_every_apply_phase() -> None:
    spec = policy(canaryResources={"limits": {"cpu": "500m"}})
    admitted = check_request(request(), READS_CONFIG, [spec], T0)
    assert isinstance(admitted, Admission), admitted
    decision = machine.accept(RID, envelope(request(), "req-1"), admitted, T0)
    assert decision.state is not None
    applies = [c.data for c in decision.commands if isinstance(c.data, ApplyPhase)]
    assert applies and applies[0].canary_resources == ContainerResources(limits={"cpu": "500m"})
