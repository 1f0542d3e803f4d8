"""The release bundle's decisions: what a target depends on, how a hold and a restore look."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from canaryflow.runtime import bundle as bundles
from canaryflow.runtime.conventions import RELEASE_LABEL, CorruptRestorePoint

TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"app": "web"}},
    "spec": {
        "initContainers": [{"name": "init", "envFrom": [{"configMapRef": {"name": "boot"}}]}],
        "containers": [
            {
                "name": "web",
                "image": "registry.local/web:v1",
                "env": [
                    {
                        "name": "A",
                        "valueFrom": {"configMapKeyRef": {"name": "web-config", "key": "a"}},
                    },
                    {"name": "T", "valueFrom": {"secretKeyRef": {"name": "web-token", "key": "t"}}},
                    {"name": "PLAIN", "value": "x"},
                ],
                "envFrom": [{"secretRef": {"name": "web-env"}}],
            }
        ],
        "volumes": [
            {"name": "conf", "configMap": {"name": "web-config"}},
            {"name": "certs", "secret": {"secretName": "web-certs"}},
            {
                "name": "all",
                "projected": {
                    "sources": [{"configMap": {"name": "shared"}}, {"secret": {"name": "keys"}}]
                },
            },
        ],
    },
}


def test_every_way_a_pod_template_names_configuration_is_found() -> None:
    refs = bundles.references(TEMPLATE)
    assert refs.config_maps == {"boot", "web-config", "shared"}
    assert refs.secrets == {"web-token", "web-env", "web-certs", "keys"}


def test_renaming_moves_every_reference_to_a_config_map_and_nothing_else() -> None:
    renamed = bundles.with_config_maps_renamed(TEMPLATE, {"web-config": "web-config-rel-1"})
    refs = bundles.references(renamed)
    assert refs.config_maps == {"boot", "web-config-rel-1", "shared"}
    assert refs.secrets == bundles.references(TEMPLATE).secrets
    assert bundles.references(TEMPLATE).config_maps == {"boot", "web-config", "shared"}  # a copy


def test_the_canary_copy_has_the_change_and_names_its_base_and_release() -> None:
    source = {
        "metadata": {"name": "web-config", "namespace": "shop", "labels": {"team": "a"}},
        "data": {"a": "1", "b": "2", "gone": "3"},
    }
    owner = {"metadata": {"name": "web", "uid": "u-1"}}
    copied = bundles.config_copy(source, {"a": "10", "c": "new"}, ["gone"], "rel-1", owner)
    assert copied["metadata"]["name"] == "web-config-rel-1"
    assert copied["data"] == {"a": "10", "b": "2", "c": "new"}
    labels = copied["metadata"]["labels"]
    assert labels[bundles.CONFIG_BASE_LABEL] == "web-config"
    assert labels[RELEASE_LABEL] == "rel-1" and labels["team"] == "a"
    assert copied["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_a_copy_of_a_copy_keeps_the_original_base_name() -> None:
    earlier = {
        "metadata": {
            "name": "web-config-rel-1",
            "namespace": "shop",
            "labels": {bundles.CONFIG_BASE_LABEL: "web-config", RELEASE_LABEL: "rel-1"},
        },
        "data": {"a": "10"},
    }
    copied = bundles.config_copy(earlier, {"a": "11"}, [], "rel-2", {"metadata": {}})
    assert copied["metadata"]["name"] == "web-config-rel-2"
    assert copied["metadata"]["labels"][RELEASE_LABEL] == "rel-2"


def test_superseded_copies_are_those_no_template_names_any_more() -> None:
    def config_map(name: str, base: str | None) -> dict[str, Any]:
        labels = {bundles.CONFIG_BASE_LABEL: base} if base else {}
        return {"metadata": {"name": name, "labels": labels}}

    copies = [
        config_map("web-config", None),  # the user's own: never collected
        config_map("web-config-rel-1", "web-config"),
        config_map("web-config-rel-2", "web-config"),
    ]
    assert bundles.superseded_copies(copies, ["web-config-rel-2"]) == ["web-config-rel-1"]


def test_the_bundle_round_trips_through_its_secret() -> None:
    recorded = bundles.Bundle(
        "rel-1",
        autoscaler={"name": "web", "spec": {"minReplicas": 4, "maxReplicas": 8}},
        config_maps={"web-config": {"data": {"a": "1"}, "binaryData": {}}},
        secrets={"web-token": {"type": "Opaque", "data": {"t": "c2VjcmV0"}}},
    )
    secret = bundles.bundle_secret(
        recorded, "shop", "web", {"metadata": {"name": "web", "uid": "u"}}
    )
    assert secret["metadata"]["name"] == "web-canaryflow-bundle"
    assert secret["metadata"]["labels"][RELEASE_LABEL] == "rel-1"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "u"
    assert bundles.bundle_of(secret) == recorded
    assert bundles.bundle_of(secret).restamped("rel-2").config_maps == recorded.config_maps


def test_an_unreadable_bundle_is_reported_not_guessed() -> None:
    with pytest.raises(CorruptRestorePoint):
        bundles.bundle_of({"data": {bundles.BUNDLE_KEY: "not base64 json"}})


HPA: dict[str, Any] = {
    "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "5"},
    "spec": {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
        "minReplicas": 4,
        "maxReplicas": 8,
    },
    "status": {"currentReplicas": 4},
}


def test_the_autoscaler_of_the_target_is_found_by_its_scale_target() -> None:
    other = copy.deepcopy(HPA)
    other["spec"]["scaleTargetRef"]["name"] = "api"
    assert bundles.autoscaler_for([other, HPA], "web") is HPA
    assert bundles.autoscaler_for([other], "web") is None


def test_a_held_autoscaler_lets_the_executor_own_the_replica_counts() -> None:
    held = bundles.held_autoscaler(HPA)
    assert held is not None
    assert held["spec"]["minReplicas"] == 1 and held["spec"]["maxReplicas"] == 8
    behavior = held["spec"]["behavior"]
    assert (
        behavior["scaleUp"]["selectPolicy"] == behavior["scaleDown"]["selectPolicy"] == "Disabled"
    )
    assert "status" not in held and held["metadata"]["resourceVersion"] == "5"
    assert bundles.held_autoscaler(held) is None  # holding twice writes nothing


def test_the_recorded_spec_is_put_back_exactly_also_when_the_hold_only_added_fields() -> None:
    recorded = bundles.named_spec(HPA)
    held = bundles.held_autoscaler(HPA)
    restored = bundles.spec_restored(held, recorded)
    assert restored is not None and restored["spec"] == HPA["spec"]
    assert bundles.spec_restored(HPA, recorded) is None


def test_a_budget_is_found_by_its_selector_over_the_pod_labels() -> None:
    budget = {"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}}}}
    expressions = {
        "metadata": {"name": "tier"},
        "spec": {
            "selector": {
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}]
            }
        },
    }
    assert bundles.budget_for([expressions, budget], {"app": "web"}) is budget
    assert bundles.budget_for([expressions], {"app": "web", "tier": "front"}) is expressions
    assert bundles.budget_for([budget], {"app": "api"}) is None


def test_config_map_restore_creates_a_missing_one_and_replaces_changed_data() -> None:
    recorded = {"data": {"a": "1"}, "binaryData": {}}
    created = bundles.config_map_restored("web-config", "shop", None, recorded)
    assert created is not None and created[0] == "create"
    assert created[1]["data"] == {"a": "1"} and "binaryData" not in created[1]
    current = {"metadata": {"name": "web-config", "resourceVersion": "9"}, "data": {"a": "2"}}
    replaced = bundles.config_map_restored("web-config", "shop", current, recorded)
    assert replaced is not None and replaced[0] == "replace"
    assert replaced[1]["data"] == {"a": "1"} and replaced[1]["metadata"]["resourceVersion"] == "9"
    same = {"metadata": {"name": "web-config"}, "data": {"a": "1"}}
    assert bundles.config_map_restored("web-config", "shop", same, recorded) is None


def test_secret_restore_puts_back_the_recorded_data() -> None:
    recorded = {"type": "Opaque", "data": {"t": "b2xk"}}
    current = {"metadata": {"name": "web-token"}, "type": "Opaque", "data": {"t": "bmV3"}}
    replaced = bundles.secret_restored("web-token", "shop", current, recorded)
    assert replaced is not None and replaced[1]["data"] == {"t": "b2xk"}
    assert bundles.secret_restored("web-token", "shop", replaced[1], recorded) is None
