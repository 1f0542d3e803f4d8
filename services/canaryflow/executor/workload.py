"""The Deployment bodies the executor writes, computed from what the API returned.

Pure functions over the API's JSON (camelCase dicts), so every rule about what a canary is
made of, and what a promoted stable looks like, is tested without a cluster. The I/O layer
only reads, calls one of these, and writes the result if it differs from what is there.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from canaryflow.runtime.bundle import with_config_maps_renamed
from canaryflow.runtime.conventions import (
    BASELINE_TRACK,
    MANAGED_BY,
    RELEASE_LABEL,
    TRACK_LABEL,
    RestorePoint,
    baseline_name,
    canary_name,
    restore_point_of,
)
from canaryflow_contracts.events import TargetRef, VersionSpec

CANARY_TRACK = "canary"
# Server-owned or identity metadata that must not travel from the stable to its canary.
_DROPPED_METADATA = (
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "managedFields",
    "ownerReferences",
    "generation",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "finalizers",
    "generateName",
    "annotations",  # the stable's own (revision, last-applied, our restore point)
)

Body = dict[str, Any]


class WorkloadError(ValueError):
    """The stable Deployment cannot carry this version (e.g. the named container is absent)."""


def _container_index(template: Body, container: str | None) -> int:
    containers = (template.get("spec") or {}).get("containers") or []
    if not containers:
        raise WorkloadError("the pod template has no containers")
    if container is None:
        return 0
    for index, candidate in enumerate(containers):
        if candidate.get("name") == container:
            return index
    names = ", ".join(str(c.get("name")) for c in containers)
    raise WorkloadError(f"container {container!r} not found in the pod template (has: {names})")


def with_version(
    template: Body, version: VersionSpec, renames: Mapping[str, str] | None = None
) -> Body:
    """A copy of a pod template running ``version``: image set, env vars set or replaced,
    resources replaced, and ConfigMap references moved to their versioned copies."""
    result = with_config_maps_renamed(template, renames) if renames else copy.deepcopy(template)
    container = result["spec"]["containers"][_container_index(result, version.container)]
    container["image"] = version.image
    if version.resources is not None:
        container["resources"] = {
            key: dict(value)
            for key, value in (
                ("requests", version.resources.requests),
                ("limits", version.resources.limits),
            )
            if value
        }
    if version.env:
        env: list[Body] = list(container.get("env") or [])
        for var in version.env:
            # The API drops an empty value; leaving it out keeps replays from rewriting.
            entry = {"name": var.name, "value": var.value} if var.value else {"name": var.name}
            positions = [i for i, existing in enumerate(env) if existing.get("name") == var.name]
            if positions:
                env[positions[0]] = entry
            else:
                env.append(entry)
        container["env"] = env
    return result


def image_of(template: Body, container: str | None) -> str:
    """The image the chosen container of a pod template runs."""
    index = _container_index(template, container)
    return str(template["spec"]["containers"][index].get("image", ""))


def canary_body(
    stable: Body,
    target: TargetRef,
    version: VersionSpec,
    release_id: str,
    replicas: int,
    *,
    renames: Mapping[str, str] | None = None,
) -> Body:
    """The canary Deployment: stable's spec, the new version, and the canary track label.

    Selector and pod labels are stable's plus ``canaryflow.io/track: canary``: the target's
    Service (selecting on stable's labels) sends traffic to both, while the canary's own
    selector never adopts stable's pods. ``renames`` moves ConfigMap references to the
    canary's versioned copies.
    """
    template = with_version(stable["spec"]["template"], version, renames)
    return _track_body(
        stable,
        name=canary_name(target),
        target=target,
        template=template,
        track=CANARY_TRACK,
        release_id=release_id,
        replicas=replicas,
    )


def baseline_body(
    stable: Body, template: Body, target: TargetRef, release_id: str, replicas: int
) -> Body:
    """The baseline Deployment: the stable version on fresh pods, beside the canary.

    ``template`` is stable's pod template as recorded before the release (the restore
    point), so the baseline runs exactly what stable ran; it carries the baseline track so
    the metrics of the two fresh sets of pods can be compared under the same conditions.
    """
    return _track_body(
        stable,
        name=baseline_name(target),
        target=target,
        template=copy.deepcopy(template),
        track=BASELINE_TRACK,
        release_id=release_id,
        replicas=replicas,
    )


def _track_body(
    stable: Body,
    *,
    name: str,
    target: TargetRef,
    template: Body,
    track: str,
    release_id: str,
    replicas: int,
) -> Body:
    metadata = {
        key: value
        for key, value in copy.deepcopy(stable.get("metadata") or {}).items()
        if key not in _DROPPED_METADATA
    }
    metadata["name"] = name
    metadata["namespace"] = target.namespace
    metadata["labels"] = {
        **(metadata.get("labels") or {}),
        TRACK_LABEL: track,
        RELEASE_LABEL: release_id,
        **MANAGED_BY,
    }
    spec = copy.deepcopy(stable["spec"])
    spec["replicas"] = replicas
    selector = spec.setdefault("selector", {})
    selector["matchLabels"] = {**(selector.get("matchLabels") or {}), TRACK_LABEL: track}
    template_meta = template.setdefault("metadata", {})
    template_meta["labels"] = {
        **(template_meta.get("labels") or {}),
        TRACK_LABEL: track,
        RELEASE_LABEL: release_id,
    }
    spec["template"] = template
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": spec}


def covers(desired: Any, actual: Any) -> bool:
    """True when everything ``desired`` says is already in ``actual``.

    The server adds defaults (and nothing else) to what we write, so "our fields are there
    with our values" is the right test of "this write is already done"; comparing whole
    objects would rewrite on every replay.
    """
    if isinstance(desired, dict):
        if actual is None:
            actual = {}
        if not isinstance(actual, dict):
            return False
        return all(covers(value, actual.get(key)) for key, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(actual, list) or len(desired) != len(actual):
            return False
        return all(covers(d, a) for d, a in zip(desired, actual, strict=True))
    return bool(desired == actual)


@dataclass(frozen=True)
class CanaryWrite:
    """How to get from the canary the API has to the one we want."""

    action: str  # "create" | "replace" | "recreate" | "none"
    body: Body | None


def canary_write(desired: Body, existing: Body | None) -> CanaryWrite:
    if existing is None:
        return CanaryWrite("create", desired)
    # A selector is immutable: a canary with another one has to be deleted and made again.
    if not covers(desired["spec"]["selector"], existing["spec"].get("selector")) or not covers(
        existing["spec"].get("selector"), desired["spec"]["selector"]
    ):
        return CanaryWrite("recreate", None)
    labels_match = covers(desired["metadata"]["labels"], existing["metadata"].get("labels"))
    if labels_match and covers(desired["spec"], existing["spec"]):
        return CanaryWrite("none", None)
    body = copy.deepcopy(desired)
    body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
    # Keep whatever else put labels on it (e.g. a cost tool); ours win.
    body["metadata"]["labels"] = {
        **(existing["metadata"].get("labels") or {}),
        **desired["metadata"]["labels"],
    }
    return CanaryWrite("replace", body)


def full_size(stable: Body) -> int:
    replicas = (stable.get("spec") or {}).get("replicas")
    return int(replicas) if replicas is not None else 1


@dataclass(frozen=True)
class Recording:
    """The restore point in force for this release, and the stable body to write, if any."""

    point: RestorePoint
    body: Body | None
    adopted_from: str | None = None  # another release's restore point that was kept


def record_restore_point(stable: Body, release_id: str) -> Recording:
    """Record stable's size and pod template once, before the release changes anything.

    A restore point left by another release (one that never finished cleaning up) is kept,
    not overwritten: it describes the stable as it was before canaryflow touched it, which is
    what a rollback must go back to. It is re-stamped with this release's id.
    """
    existing = restore_point_of(stable)
    if existing is not None and existing.release_id == release_id:
        return Recording(existing, None)
    if existing is not None:
        point = RestorePoint(release_id, existing.replicas, existing.template)
        adopted: str | None = existing.release_id or "unknown"
    else:
        point = RestorePoint(
            release_id, full_size(stable), copy.deepcopy(stable["spec"]["template"])
        )
        adopted = None
    body = copy.deepcopy(stable)
    body.pop("status", None)
    body["metadata"]["annotations"] = {
        **(body["metadata"].get("annotations") or {}),
        **point.annotations(),
    }
    return Recording(point, body, adopted)


def promoted_stable(
    stable: Body, version: VersionSpec, replicas: int, renames: Mapping[str, str] | None = None
) -> Body | None:
    """Stable running ``version`` at ``replicas``; None when it already does.

    ``renames`` switches stable to the canary's ConfigMap copies in the same template change,
    so the new pods start on the new configuration and the old ones never see it.
    """
    template = with_version(stable["spec"]["template"], version, renames)
    if template == stable["spec"]["template"] and full_size(stable) == replicas:
        return None
    body = copy.deepcopy(stable)
    body.pop("status", None)
    body["spec"]["template"] = template
    body["spec"]["replicas"] = replicas
    return body
