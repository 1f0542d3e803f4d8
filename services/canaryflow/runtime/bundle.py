"""The release bundle: everything a release may change on its target, as one unit.

A rollback that puts back the image but forgets a ConfigMap value, an environment variable or
an autoscaler's bounds leaves the failure in place (argo-rollouts #958, #1244). So before a
release changes anything, the executor records every object the target's pods depend on that
the release could change: the pod template and size (the restore point on stable), the
ConfigMaps and Secrets the template references, the HorizontalPodAutoscaler that scales it
and the PodDisruptionBudget that covers its pods. The rollback service puts all of it back.

The bundle is kept in a Secret next to the target (it may hold Secret data, which must never
sit in an annotation), owned by the target Deployment so it goes when the target goes.
Everything here is pure: the I/O is in ``canaryflow.runtime.objects``.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from canaryflow.runtime.conventions import MANAGED_BY, RELEASE_LABEL, CorruptRestorePoint

Body = dict[str, Any]

# On a versioned ConfigMap copy: the name of the ConfigMap it is a version of.
CONFIG_BASE_LABEL = "canaryflow.io/config-base"
BUNDLE_KEY = "bundle.json"
DISABLED = "Disabled"


def bundle_name(target_name: str) -> str:
    """The Secret holding the bundle of a target Deployment's release in flight."""
    return f"{target_name}-canaryflow-bundle"[:253]


def copy_name(base: str, release_id: str) -> str:
    """The canary's own version of ConfigMap ``base`` (the contract keeps it <= 253)."""
    return f"{base}-{release_id}"


# --------------------------------------------------------------------------- references


@dataclass(frozen=True)
class References:
    config_maps: frozenset[str]
    secrets: frozenset[str]


def _containers(pod_spec: Body) -> list[Body]:
    return [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]


def _visit(
    template: Body,
    on_config_map: Callable[[Body, str], None],
    on_secret: Callable[[Body, str], None],
) -> None:
    """Call back with (holder, key) for every ConfigMap and Secret name a pod template names."""
    spec = template.get("spec") or {}
    for container in _containers(spec):
        for var in container.get("env") or []:
            source = var.get("valueFrom") or {}
            if source.get("configMapKeyRef"):
                on_config_map(source["configMapKeyRef"], "name")
            if source.get("secretKeyRef"):
                on_secret(source["secretKeyRef"], "name")
        for source in container.get("envFrom") or []:
            if source.get("configMapRef"):
                on_config_map(source["configMapRef"], "name")
            if source.get("secretRef"):
                on_secret(source["secretRef"], "name")
    for volume in spec.get("volumes") or []:
        if volume.get("configMap"):
            on_config_map(volume["configMap"], "name")
        if volume.get("secret"):
            on_secret(volume["secret"], "secretName")
        for source in (volume.get("projected") or {}).get("sources") or []:
            if source.get("configMap"):
                on_config_map(source["configMap"], "name")
            if source.get("secret"):
                on_secret(source["secret"], "name")


def references(template: Body) -> References:
    """The ConfigMaps and Secrets a pod template reads (env, envFrom, volumes, projected)."""
    config_maps: set[str] = set()
    secrets: set[str] = set()

    def add_to(names: set[str]) -> Callable[[Body, str], None]:
        def add(holder: Body, key: str) -> None:
            if holder.get(key):
                names.add(str(holder[key]))

        return add

    _visit(template, add_to(config_maps), add_to(secrets))
    return References(frozenset(config_maps), frozenset(secrets))


def with_config_maps_renamed(template: Body, renames: Mapping[str, str]) -> Body:
    """A copy of ``template`` whose references to ConfigMap ``old`` name ``renames[old]``."""
    result = copy.deepcopy(template)

    def rename(holder: Body, key: str) -> None:
        if holder.get(key) in renames:
            holder[key] = renames[holder[key]]

    _visit(result, rename, lambda holder, key: None)
    return result


def base_of(config_map: Body) -> str:
    """The name a ConfigMap is a version of: its own, unless canaryflow made it as a copy."""
    metadata = config_map.get("metadata") or {}
    return str((metadata.get("labels") or {}).get(CONFIG_BASE_LABEL) or metadata.get("name"))


# --------------------------------------------------------------------------- the bundle


@dataclass(frozen=True)
class Bundle:
    """What the executor recorded for one release, beside the restore point on stable."""

    release_id: str
    autoscaler: Body | None = None  # {"name": ..., "spec": ...} of the HPA scaling the target
    disruption_budget: Body | None = None  # {"name": ..., "spec": ...} of the PDB covering it
    config_maps: dict[str, Body] = field(default_factory=dict)  # name -> {"data", "binaryData"}
    secrets: dict[str, Body] = field(default_factory=dict)  # name -> {"type", "data"}

    def to_json(self) -> Body:
        return {
            "releaseId": self.release_id,
            "autoscaler": self.autoscaler,
            "disruptionBudget": self.disruption_budget,
            "configMaps": self.config_maps,
            "secrets": self.secrets,
        }

    def restamped(self, release_id: str) -> Bundle:
        return Bundle(
            release_id, self.autoscaler, self.disruption_budget, self.config_maps, self.secrets
        )

    def describe(self) -> str:
        parts = [f"{len(self.config_maps)} ConfigMap(s)", f"{len(self.secrets)} Secret(s)"]
        if self.autoscaler is not None:
            parts.append(f"HPA {self.autoscaler['name']}")
        if self.disruption_budget is not None:
            parts.append(f"PDB {self.disruption_budget['name']}")
        return ", ".join(parts)


def bundle_secret(bundle: Bundle, namespace: str, target_name: str, owner: Body) -> Body:
    """The Secret that stores ``bundle``, owned by the target Deployment ``owner``."""
    payload = json.dumps(bundle.to_json(), sort_keys=True).encode()
    metadata = owner.get("metadata") or {}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": bundle_name(target_name),
            "namespace": namespace,
            "labels": {RELEASE_LABEL: bundle.release_id, **MANAGED_BY},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": metadata.get("name", target_name),
                    "uid": metadata.get("uid", ""),
                }
            ],
        },
        "data": {BUNDLE_KEY: base64.b64encode(payload).decode()},
    }


def bundle_of(secret: Body) -> Bundle:
    """Read a bundle Secret back; ``CorruptRestorePoint`` when it cannot be."""
    try:
        raw = json.loads(base64.b64decode((secret.get("data") or {})[BUNDLE_KEY]))
        return Bundle(
            release_id=str(raw["releaseId"]),
            autoscaler=raw.get("autoscaler"),
            disruption_budget=raw.get("disruptionBudget"),
            config_maps=dict(raw.get("configMaps") or {}),
            secrets=dict(raw.get("secrets") or {}),
        )
    except (KeyError, ValueError, TypeError) as error:
        raise CorruptRestorePoint(f"unreadable release bundle: {error!r}") from error


def config_map_data(config_map: Body) -> Body:
    return {
        "data": dict(config_map.get("data") or {}),
        "binaryData": dict(config_map.get("binaryData") or {}),
    }


def secret_data(secret: Body) -> Body:
    return {"type": secret.get("type") or "Opaque", "data": dict(secret.get("data") or {})}


def autoscaler_for(autoscalers: Iterable[Body], deployment: str) -> Body | None:
    """The HPA (autoscaling/v2 JSON) that scales Deployment ``deployment``, if any."""
    for hpa in autoscalers:
        ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        if ref.get("kind") == "Deployment" and ref.get("name") == deployment:
            return hpa
    return None


def _matches(selector: Body, labels: Mapping[str, str]) -> bool:
    if not selector:
        return False  # an empty selector in a PDB selects nothing useful to us
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        present = key in labels
        if operator == "In" and (not present or labels[key] not in (values or [])):
            return False
        if operator == "NotIn" and present and labels[key] in (values or []):
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def budget_for(budgets: Iterable[Body], pod_labels: Mapping[str, str]) -> Body | None:
    """The PodDisruptionBudget whose selector matches the target's pods, if any."""
    for budget in budgets:
        if _matches((budget.get("spec") or {}).get("selector") or {}, pod_labels):
            return budget
    return None


def named_spec(obj: Body | None) -> Body | None:
    if obj is None:
        return None
    return {"name": obj["metadata"]["name"], "spec": copy.deepcopy(obj.get("spec") or {})}


# --------------------------------------------------------------------------- decisions


def held_autoscaler(hpa: Body) -> Body | None:
    """The HPA with scaling held for the release; None when it is held already.

    An HPA enforces its bounds even when it has no metrics: with minReplicas 10 it scales a
    stable that a 10 % step took to 9 back to 10 within seconds, and the canary's share with
    it. While a release is in flight the executor owns the replica counts, so the bounds go
    down to 1 and metric-driven scaling is disabled in both directions; the recorded spec
    is put back when the release ends (rollback or promotion).
    """
    spec = hpa.get("spec") or {}
    behavior = spec.get("behavior") or {}
    held = spec.get("minReplicas") == 1 and all(
        (behavior.get(direction) or {}).get("selectPolicy") == DISABLED
        for direction in ("scaleUp", "scaleDown")
    )
    if held:
        return None
    body = copy.deepcopy(hpa)
    body.pop("status", None)
    body["spec"]["minReplicas"] = 1
    rules = body["spec"].setdefault("behavior", {})
    for direction in ("scaleUp", "scaleDown"):
        rules[direction] = {**(rules.get(direction) or {}), "selectPolicy": DISABLED}
    return body


def spec_restored(current: Body | None, recorded: Body | None) -> Body | None:
    """``current`` with its recorded spec put back; None when it has it (or nothing to do).

    Exact comparison, not "covers": a hold adds fields the recorded spec lacks.
    """
    if current is None or recorded is None or current.get("spec") == recorded["spec"]:
        return None
    body = copy.deepcopy(current)
    body.pop("status", None)
    body["spec"] = copy.deepcopy(recorded["spec"])
    return body


def config_map_restored(
    name: str, namespace: str, current: Body | None, recorded: Body
) -> tuple[str, Body] | None:
    """("create" | "replace", body) putting back ConfigMap ``name``'s recorded data, or None."""
    if current is not None and config_map_data(current) == recorded:
        return None
    data = {key: value for key, value in recorded.items() if value}
    if current is None:
        body: Body = {"apiVersion": "v1", "kind": "ConfigMap"}
        body["metadata"] = {"name": name, "namespace": namespace}
        return "create", {**body, **data}
    body = copy.deepcopy(current)
    body.pop("data", None)
    body.pop("binaryData", None)
    return "replace", {**body, **data}


def secret_restored(
    name: str, namespace: str, current: Body | None, recorded: Body
) -> tuple[str, Body] | None:
    """("create" | "replace", body) putting back Secret ``name``'s recorded data, or None."""
    if current is not None and secret_data(current) == recorded:
        return None
    if current is None:
        body: Body = {"apiVersion": "v1", "kind": "Secret", "type": recorded["type"]}
        body["metadata"] = {"name": name, "namespace": namespace}
        body["data"] = dict(recorded["data"])
        return "create", body
    body = copy.deepcopy(current)
    body["data"] = dict(recorded["data"])
    return "replace", body


def config_copy(
    source: Body,
    change_data: Mapping[str, str],
    remove: Iterable[str],
    release_id: str,
    owner: Body,
) -> Body:
    """The canary's ConfigMap: ``source``'s data with the change, owned by the target.

    Its name carries the release id, so stable (which keeps naming ``source``) never sees
    the new values; a label names the base it is a version of, for the next release and for
    garbage collection of superseded copies.
    """
    metadata = source.get("metadata") or {}
    base = base_of(source)
    removed = set(remove)
    data = {k: v for k, v in (source.get("data") or {}).items() if k not in removed}
    data.update(change_data)
    binary = {k: v for k, v in (source.get("binaryData") or {}).items() if k not in removed}
    owner_meta = owner.get("metadata") or {}
    body: Body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": copy_name(base, release_id),
            "namespace": metadata.get("namespace"),
            "labels": {
                **{k: v for k, v in (metadata.get("labels") or {}).items() if k != RELEASE_LABEL},
                CONFIG_BASE_LABEL: base,
                RELEASE_LABEL: release_id,
                **MANAGED_BY,
            },
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": owner_meta.get("name"),
                    "uid": owner_meta.get("uid"),
                }
            ],
        },
        "data": data,
    }
    if binary:
        body["binaryData"] = binary
    return body


def superseded_copies(copies: Iterable[Body], still_referenced: Iterable[str]) -> list[str]:
    """Names of canaryflow's ConfigMap copies that no live template references any more."""
    keep = set(still_referenced)
    names = []
    for config_map in copies:
        metadata = config_map.get("metadata") or {}
        labels = metadata.get("labels") or {}
        if CONFIG_BASE_LABEL in labels and metadata.get("name") not in keep:
            names.append(str(metadata["name"]))
    return sorted(names)
