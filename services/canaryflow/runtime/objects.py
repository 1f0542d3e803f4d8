"""Reading and writing the objects of a release bundle: ConfigMaps, Secrets, HPA, PDB.

The executor records and the rollback service restores the same objects, so both go through
these functions. Like the Deployment helpers in ``kube``, they speak the API's own JSON, and
every write is decided by a pure function in ``bundle`` from what was just read, carrying
the resourceVersion it read (a concurrent writer makes it a 409, answered by a re-read).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from canaryflow.runtime import bundle as bundles
from canaryflow.runtime import conventions, kube
from canaryflow.runtime.bundle import Body, Bundle
from canaryflow_contracts.events import ConfigMapChange, TargetRef

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Kind:
    collection: str  # the namespaced collection path, with {namespace}

    def path(self, namespace: str, name: str | None = None) -> str:
        base = self.collection.format(namespace=namespace)
        return f"{base}/{name}" if name else base


CONFIG_MAPS = Kind("/api/v1/namespaces/{namespace}/configmaps")
SECRETS = Kind("/api/v1/namespaces/{namespace}/secrets")
AUTOSCALERS = Kind("/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers")
BUDGETS = Kind("/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets")


def read(api: client.ApiClient, kind: Kind, namespace: str, name: str) -> Body | None:
    try:
        return kube._request(api, "GET", kind.path(namespace, name))
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def listed(
    api: client.ApiClient, kind: Kind, namespace: str, selector: str | None = None
) -> list[Body]:
    query = [("labelSelector", selector)] if selector else None
    try:
        found = kube._request(api, "GET", kind.path(namespace), query=query)
    except ApiException as error:
        if error.status == 404:  # e.g. an API group this cluster does not serve
            return []
        raise
    return list(found.get("items") or [])


def create(api: client.ApiClient, kind: Kind, body: Body) -> Body:
    namespace = body["metadata"]["namespace"]
    return kube._request(
        api, "POST", kind.path(namespace), body=body, query=[("fieldManager", kube.FIELD_MANAGER)]
    )


def replace(api: client.ApiClient, kind: Kind, body: Body) -> Body:
    metadata = body["metadata"]
    return kube._request(
        api,
        "PUT",
        kind.path(metadata["namespace"], metadata["name"]),
        body=body,
        query=[("fieldManager", kube.FIELD_MANAGER)],
    )


def delete(api: client.ApiClient, kind: Kind, namespace: str, name: str) -> bool:
    """Delete; False when it was already gone."""
    try:
        kube._request(api, "DELETE", kind.path(namespace, name))
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def _put(api: client.ApiClient, kind: Kind, decision: tuple[str, Body] | None) -> bool:
    if decision is None:
        return False
    action, body = decision
    if action == "create":
        try:
            create(api, kind, body)
        except ApiException as error:
            if error.status != 409:
                raise
            raise ApiException(status=409, reason="created meanwhile; decide again") from error
    else:
        replace(api, kind, body)
    return True


# --------------------------------------------------------------------------- recording


def snapshot(api: client.ApiClient, namespace: str, stable: Body, release_id: str) -> Bundle:
    """What the target depends on now, read from the API (before the release changes it)."""
    template = stable["spec"]["template"]
    refs = bundles.references(template)
    config_maps: dict[str, Body] = {}
    for name in sorted(refs.config_maps):
        found = read(api, CONFIG_MAPS, namespace, name)
        if found is not None:
            config_maps[name] = bundles.config_map_data(found)
    secrets: dict[str, Body] = {}
    for name in sorted(refs.secrets):
        found = read(api, SECRETS, namespace, name)
        if found is not None:
            secrets[name] = bundles.secret_data(found)
    name = stable["metadata"]["name"]
    pod_labels = (template.get("metadata") or {}).get("labels") or {}
    return Bundle(
        release_id=release_id,
        autoscaler=bundles.named_spec(
            bundles.autoscaler_for(listed(api, AUTOSCALERS, namespace), name)
        ),
        disruption_budget=bundles.named_spec(
            bundles.budget_for(listed(api, BUDGETS, namespace), pod_labels)
        ),
        config_maps=config_maps,
        secrets=secrets,
    )


def read_bundle(api: client.ApiClient, target: TargetRef) -> Bundle | None:
    secret = read(api, SECRETS, target.namespace, bundles.bundle_name(target.name))
    return None if secret is None else bundles.bundle_of(secret)


def record_bundle(api: client.ApiClient, target: TargetRef, release_id: str) -> Bundle:
    """Write the bundle once, before the restore point on stable (which marks it complete).

    Replays find it written. A restore point left on stable by another release is adopted
    by the executor; that release's bundle describes the same untouched state and is kept,
    re-stamped with this release's id. Anything else (a bundle without a restore point is
    the leftover of a release that never started) is replaced by a fresh snapshot.
    """
    stable = kube.read_target(api, target)
    point = conventions.restore_point_of(stable)
    secret = read(api, SECRETS, target.namespace, bundles.bundle_name(target.name))
    existing = bundles.bundle_of(secret) if secret is not None else None
    if point is not None and existing is not None:
        if existing.release_id == release_id:
            return existing
        if point.release_id == existing.release_id:
            adopted = existing.restamped(release_id)
            _write_bundle(api, target, stable, adopted, secret)
            return adopted
    fresh = snapshot(api, target.namespace, stable, release_id)
    _write_bundle(api, target, stable, fresh, secret)
    log.info("recorded the release bundle of %s: %s", target.key(), fresh.describe())
    return fresh


def _write_bundle(
    api: client.ApiClient, target: TargetRef, stable: Body, bundle: Bundle, current: Body | None
) -> None:
    body = bundles.bundle_secret(bundle, target.namespace, target.name, stable)
    if current is None:
        create(api, SECRETS, body)
    else:
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        replace(api, SECRETS, body)


def hold_autoscaler(api: client.ApiClient, namespace: str, bundle: Bundle) -> bool:
    """Hold the target's HPA for the release (see ``bundle.held_autoscaler``)."""
    if bundle.autoscaler is None:
        return False
    current = read(api, AUTOSCALERS, namespace, bundle.autoscaler["name"])
    body = None if current is None else bundles.held_autoscaler(current)
    if body is None:
        return False
    replace(api, AUTOSCALERS, body)
    return True


# --------------------------------------------------------------------------- restoring


def restore_configuration(api: client.ApiClient, namespace: str, bundle: Bundle) -> list[str]:
    """Put back every recorded ConfigMap and Secret whose data changed; what was restored.

    Done before stable's pods are restored, so that they start on the recorded values.
    """
    restored = []
    for name, recorded in bundle.config_maps.items():
        current = read(api, CONFIG_MAPS, namespace, name)
        if _put(api, CONFIG_MAPS, bundles.config_map_restored(name, namespace, current, recorded)):
            restored.append(f"ConfigMap {name}")
    for name, recorded in bundle.secrets.items():
        current = read(api, SECRETS, namespace, name)
        if _put(api, SECRETS, bundles.secret_restored(name, namespace, current, recorded)):
            restored.append(f"Secret {name}")
    return restored


def restore_scaling(api: client.ApiClient, namespace: str, bundle: Bundle) -> list[str]:
    """Put back the recorded HPA and PDB specs (the HPA hold ends); what was restored.

    Done once stable is whole again, so the HPA's bounds never fight the restore.
    """
    restored = []
    for kind, recorded, what in (
        (AUTOSCALERS, bundle.autoscaler, "HPA"),
        (BUDGETS, bundle.disruption_budget, "PDB"),
    ):
        if recorded is None:
            continue
        current = read(api, kind, namespace, recorded["name"])
        body = bundles.spec_restored(current, recorded)
        if body is not None:
            replace(api, kind, body)
            restored.append(f"{what} {recorded['name']}")
    return restored


def clear_bundle(api: client.ApiClient, target: TargetRef, release_id: str) -> bool:
    """Delete the bundle if it is this release's (the last step of either end of a release)."""
    secret = read(api, SECRETS, target.namespace, bundles.bundle_name(target.name))
    if secret is None:
        return False
    labels = (secret.get("metadata") or {}).get("labels") or {}
    if labels.get(conventions.RELEASE_LABEL) != release_id:
        return False
    return delete(api, SECRETS, target.namespace, secret["metadata"]["name"])


# --------------------------------------------------------------------------- config copies


def ensure_config_copies(
    api: client.ApiClient,
    target: TargetRef,
    stable: Body,
    changes: Iterable[ConfigMapChange],
    release_id: str,
) -> dict[str, str]:
    """Create (or bring up to date) the canary's copy of each changed ConfigMap.

    Returns the renames for the pod template: {name stable references: copy's name}.
    Raises ``LookupError`` when a change names a ConfigMap stable does not reference.
    """
    changes = list(changes)
    if not changes:
        return {}
    namespace = target.namespace
    referenced = bundles.references(stable["spec"]["template"]).config_maps
    sources: dict[str, Body] = {}
    for name in sorted(referenced):
        found = read(api, CONFIG_MAPS, namespace, name)
        if found is not None:
            sources[bundles.base_of(found)] = found
    renames: dict[str, str] = {}
    for change in changes:
        source = sources.get(change.name)
        if source is None:
            raise LookupError(
                f"Deployment {target.key()} references no ConfigMap {change.name!r} "
                f"(it references: {', '.join(sorted(referenced)) or 'none'})"
            )
        desired = bundles.config_copy(source, change.data, change.remove, release_id, stable)
        name = desired["metadata"]["name"]
        existing = read(api, CONFIG_MAPS, namespace, name)
        if existing is None:
            create(api, CONFIG_MAPS, desired)
        elif bundles.config_map_data(existing) != bundles.config_map_data(desired):
            desired["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
            replace(api, CONFIG_MAPS, desired)
        renames[source["metadata"]["name"]] = name
    return renames


def delete_release_copies(
    api: client.ApiClient, namespace: str, release_id: str, keep: Iterable[str] = ()
) -> list[str]:
    """Delete the ConfigMap copies made for ``release_id`` (its canary's configuration).

    ``keep``: names stable references; a stale rollback of a promoted release must not
    take its live configuration away.
    """
    selector = f"{conventions.RELEASE_LABEL}={release_id},{bundles.CONFIG_BASE_LABEL}"
    kept = set(keep)
    deleted = []
    for found in listed(api, CONFIG_MAPS, namespace, selector):
        if found["metadata"]["name"] in kept:
            continue
        if delete(api, CONFIG_MAPS, namespace, found["metadata"]["name"]):
            deleted.append(str(found["metadata"]["name"]))
    return deleted


def release_copies(api: client.ApiClient, namespace: str, release_id: str) -> list[str]:
    """Names of the ConfigMap copies made for ``release_id`` that still exist."""
    selector = f"{conventions.RELEASE_LABEL}={release_id},{bundles.CONFIG_BASE_LABEL}"
    return [
        str(found["metadata"]["name"]) for found in listed(api, CONFIG_MAPS, namespace, selector)
    ]


def delete_superseded_copies(
    api: client.ApiClient, namespace: str, bases: Iterable[str], template: Body
) -> list[str]:
    """After a promotion: delete the older copies of ``bases`` that stable no longer names."""
    referenced = bundles.references(template).config_maps
    deleted = []
    for base in sorted(set(bases)):
        copies = listed(api, CONFIG_MAPS, namespace, f"{bundles.CONFIG_BASE_LABEL}={base}")
        for name in bundles.superseded_copies(copies, referenced):
            if delete(api, CONFIG_MAPS, namespace, name):
                deleted.append(name)
    return deleted
