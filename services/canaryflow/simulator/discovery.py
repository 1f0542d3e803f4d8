"""Reading the live split from the Kubernetes API.

Polling with list calls, not watches: the simulator must survive an API server that
restarts under it in every test session, and a list per refresh recovers by itself where a
watch needs resync logic. The calls stay few (one for Services, one per Service for its
pods, one per namespace for the behaviour ConfigMap) and every failure keeps the last known
state for what could not be read, so traffic never stops because of an API hiccup.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Protocol

from kubernetes.client import V1ConfigMap, V1Pod, V1PodList, V1Service, V1ServiceList

from canaryflow.runtime.behaviour import (
    CONFIGMAP_NAME,
    DEFAULT_BEHAVIOUR,
    Behaviour,
    parse_configmap,
)
from canaryflow.runtime.kube import TRACK_LABEL
from canaryflow.simulator.logs import Log
from canaryflow.simulator.model import PodInfo, Route, ServiceKey, Target
from canaryflow.simulator.split import STABLE_TRACK, ServiceSnapshot, SplitSource
from canaryflow_contracts.identifiers import version_of

SIMULATE_LABEL = "canaryflow.io/simulate"
RPS_ANNOTATION = "canaryflow.io/simulate-rps"
NOT_FOUND = 404


class CoreApi(Protocol):
    """The part of kubernetes.client.CoreV1Api the simulator uses."""

    def list_service_for_all_namespaces(
        self, *, label_selector: str | None = None, _request_timeout: float | None = None
    ) -> V1ServiceList: ...

    def list_namespaced_pod(
        self,
        namespace: str,
        *,
        label_selector: str | None = None,
        _request_timeout: float | None = None,
    ) -> V1PodList: ...

    def read_namespaced_config_map(
        self, name: str, namespace: str, *, _request_timeout: float | None = None
    ) -> V1ConfigMap: ...


def is_ready(pod: V1Pod) -> bool:
    """Ready condition True and not being deleted: what puts a pod in a Service's endpoints."""
    if pod.metadata is not None and pod.metadata.deletion_timestamp is not None:
        return False
    conditions = (pod.status.conditions if pod.status is not None else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def pod_info(pod: V1Pod) -> PodInfo:
    containers = pod.spec.containers if pod.spec is not None else []
    image = (containers[0].image or "") if containers else ""
    labels = (pod.metadata.labels if pod.metadata is not None else None) or {}
    return PodInfo(
        name=(pod.metadata.name if pod.metadata is not None else None) or "",
        version=version_of(image),
        track=labels.get(TRACK_LABEL) or STABLE_TRACK,
        ready=is_ready(pod),
    )


def service_key(service: V1Service) -> ServiceKey:
    metadata = service.metadata
    if metadata is None:
        return ServiceKey("", "")
    return ServiceKey(metadata.namespace or "", metadata.name or "")


def parse_rps(annotations: Mapping[str, str] | None, default: float) -> tuple[float, str | None]:
    """The Service's request rate and, if the annotation was unusable, why."""
    raw = (annotations or {}).get(RPS_ANNOTATION)
    if raw is None:
        return default, None
    try:
        rps = float(raw)
    except ValueError:
        return default, f"not a number: {raw!r}"
    if not 0.0 <= rps < float("inf"):
        return default, f"must be a finite number >= 0: {raw!r}"
    return rps, None


def selector_string(selector: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(selector.items()))


def describe(target: Target) -> list[dict[str, Any]]:
    return [
        {
            "version": route.group.version,
            "track": route.group.track,
            "pods": route.share.pods,
            "share": round(route.share.weight, 4),
        }
        for route in target.routes
    ]


class Discoverer:
    def __init__(
        self,
        split_source: SplitSource,
        default_rps: float,
        log: Log,
        *,
        timeout_s: float = 10.0,
        max_rps: float = 5000.0,
    ) -> None:
        self._split_source = split_source
        self._default_rps = default_rps
        self._log = log
        self._timeout_s = timeout_s
        self._max_rps = max_rps
        self._targets: dict[ServiceKey, Target] = {}
        self._behaviours: dict[str, dict[str, Behaviour]] = {}

    def discover(self, api: CoreApi) -> dict[ServiceKey, Target]:
        """One refresh. Raises only when the Service list itself cannot be read.

        The client is passed in, not kept, so the caller can replace it (a kubeconfig
        rewritten by a restarted stack) without losing what was last seen.
        """
        services = api.list_service_for_all_namespaces(
            label_selector=f"{SIMULATE_LABEL}=true", _request_timeout=self._timeout_s
        ).items
        namespaces = sorted({service_key(service).namespace for service in services})
        behaviours = {ns: self._namespace_behaviours(api, ns) for ns in namespaces}
        targets: dict[ServiceKey, Target] = {}
        for service in services:
            key = service_key(service)
            target = self._target(api, service, key, behaviours[key.namespace])
            if target is not None:
                targets[key] = target
        self._report_changes(targets)
        self._targets = targets
        self._behaviours = behaviours
        return targets

    def _target(
        self, api: CoreApi, service: V1Service, key: ServiceKey, behaviours: Mapping[str, Behaviour]
    ) -> Target | None:
        annotations = service.metadata.annotations if service.metadata is not None else None
        rps, problem = parse_rps(annotations, self._default_rps)
        if problem is not None:
            self._log.warning_once(
                (str(key), "rps", problem),
                "bad request-rate annotation, using the default",
                service=str(key),
                annotation=RPS_ANNOTATION,
                problem=problem,
                rps=rps,
            )
        if rps > self._max_rps:
            self._log.warning_once(
                (str(key), "rps-cap", str(rps)),
                "request rate capped",
                service=str(key),
                requested=rps,
                cap=self._max_rps,
            )
            rps = self._max_rps
        selector = (service.spec.selector if service.spec is not None else None) or {}
        if not selector:
            self._log.warning_once(
                (str(key), "selector"),
                "service has no selector; no pods to send traffic to",
                service=str(key),
            )
            return Target(service=key, rps=rps, routes=())
        try:
            pods = api.list_namespaced_pod(
                key.namespace,
                label_selector=selector_string(selector),
                _request_timeout=self._timeout_s,
            ).items
        except Exception as exc:
            previous = self._targets.get(key)
            self._log.error(
                "listing pods failed; keeping the previous split until the next refresh",
                service=str(key),
                error=repr(exc),
                kept=previous is not None,
            )
            return previous
        snapshot = ServiceSnapshot(service=key, pods=tuple(pod_info(pod) for pod in pods))
        routes = tuple(
            Route(share=share, behaviour=behaviours.get(share.group.version, DEFAULT_BEHAVIOUR))
            for share in self._split_source.split(snapshot)
        )
        return Target(service=key, rps=rps, routes=routes)

    def _namespace_behaviours(self, api: CoreApi, namespace: str) -> dict[str, Behaviour]:
        try:
            configmap = api.read_namespaced_config_map(
                CONFIGMAP_NAME, namespace, _request_timeout=self._timeout_s
            )
        except Exception as exc:
            if getattr(exc, "status", None) == NOT_FOUND:
                return {}
            previous = self._behaviours.get(namespace, {})
            self._log.error(
                "reading the behaviour ConfigMap failed; keeping the previous behaviours",
                namespace=namespace,
                configmap=CONFIGMAP_NAME,
                error=repr(exc),
            )
            return previous
        data = configmap.data or {}
        behaviours, problems = parse_configmap(data)
        for key, found in problems.items():
            digest = hashlib.sha256(data[key].encode()).hexdigest()[:16]
            self._log.warning_once(
                (namespace, key, digest),
                "bad behaviour entry; defaults used where it could not be read",
                namespace=namespace,
                configmap=CONFIGMAP_NAME,
                data_key=key,
                problems=list(found),
                behaviour=behaviours[key].as_json(),
            )
        return behaviours

    def _report_changes(self, targets: Mapping[ServiceKey, Target]) -> None:
        for key in sorted(set(self._targets) - set(targets)):
            self._log.info("service gone; traffic stopped", service=str(key))
        for key, target in sorted(targets.items()):
            previous = self._targets.get(key)
            if previous == target:
                continue
            self._log.info(
                "service changed" if previous is not None else "service found",
                service=str(key),
                rps=target.rps,
                groups=describe(target),
                behaviours={r.group.version: r.behaviour.as_json() for r in target.routes},
            )
