"""The per-track Services a weighted router routes to, made and removed by the executor.

Why per-track Services: a gateway weights Services, not pods, so stable, the baseline and the
canary each need one of their own (Flagger's ``-primary`` and ``-canary``). Each copies the
ports of the target's own Service and selects the target's pods plus the track label; stable's
pods must therefore carry ``canaryflow.io/track: stable`` (the canary's and baseline's get
theirs from the executor), and a target whose pods do not is refused with that reason rather
than routed to a Service with no endpoints.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from kubernetes import client

from canaryflow.runtime.conventions import TRACK_LABEL
from canaryflow.runtime.kube import poll_until, read_target, utc_now
from canaryflow_contracts.events import TargetRef

MANAGED_BY = "canaryflow.io/routing-for"
"""Label on every object a router made for a target, so that removal finds only those."""
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
"""The label an EndpointSlice names its Service by."""
REACHABLE_SECONDS = 30.0
"""How long a track's Ready pods may take to show up as ready endpoints of its Service."""
LEAVING_TRACKS = frozenset({"canary", "baseline"})
"""The tracks whose pods go with the release: a route given back must not reach them."""


def track_service_name(target: TargetRef, track: str) -> str:
    return f"{target.name}-{track}"


def track_service_body(
    target: TargetRef, track: str, selector: dict[str, str], ports: list[Any]
) -> client.V1Service:
    """The Service of one track: the target's pod selector narrowed to the track. Pure."""
    return client.V1Service(
        metadata=client.V1ObjectMeta(
            name=track_service_name(target, track),
            namespace=target.namespace,
            labels={MANAGED_BY: target.name},
        ),
        spec=client.V1ServiceSpec(
            selector={**selector, TRACK_LABEL: track},
            ports=[
                client.V1ServicePort(
                    name=p.name, port=p.port, target_port=p.target_port, protocol=p.protocol
                )
                for p in ports
            ],
        ),
    )


def stable_selector(deployment: dict[str, Any], target: TargetRef) -> dict[str, str]:
    """The target's pod selector, once stable's pods are known to carry the stable track."""
    spec = deployment["spec"]
    selector = dict((spec.get("selector") or {}).get("matchLabels") or {})
    labels = (spec["template"].get("metadata") or {}).get("labels") or {}
    if labels.get(TRACK_LABEL) != "stable":
        raise LookupError(
            f"Deployment {target.key()}'s pods do not carry the label {TRACK_LABEL}: stable, "
            "which a weighted router's stable Service selects them by; add it to the pod "
            "template (and the selector), or use the replica-ratio router"
        )
    selector.pop(TRACK_LABEL, None)
    return selector


def ensure_track_services(
    api: client.ApiClient, target: TargetRef, service: str, tracks: tuple[str, ...]
) -> int:
    """Create the tracks' Services (ports copied from ``service``); returns the first port."""
    core = client.CoreV1Api(api)
    try:
        own = core.read_namespaced_service(service, target.namespace)
    except client.ApiException as error:
        if error.status == 404:
            raise LookupError(
                f"Service {target.namespace}/{service} not found: the per-track Services copy "
                "its ports"
            ) from error
        raise
    selector = stable_selector(read_target(api, target), target)
    for track in tracks:
        body = track_service_body(target, track, selector, own.spec.ports or [])
        try:
            core.create_namespaced_service(target.namespace, body)
        except client.ApiException as error:
            if error.status != 409:
                raise
            existing = core.read_namespaced_service(body.metadata.name, target.namespace)
            if (existing.metadata.labels or {}).get(MANAGED_BY) != target.name:
                raise LookupError(
                    f"Service {target.namespace}/{body.metadata.name} exists and is not "
                    "canaryflow's: the router will not take it over"
                ) from error
            core.patch_namespaced_service(body.metadata.name, target.namespace, body)
    return int(own.spec.ports[0].port)


def endpoint_ready(endpoint: Any) -> bool:
    """Ready as kube-proxy and gateways read an EndpointSlice's endpoint: ``conditions.ready``
    true, or unset (the API says unset means ready); a terminating endpoint is not ready."""
    conditions = endpoint.conditions
    return conditions is None or conditions.ready is not False


def endpoint_slices(api: client.ApiClient, namespace: str, service: str) -> list[Any]:
    """The Service's EndpointSlices, as the API has them now."""
    listed = client.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
        namespace, label_selector=f"{SERVICE_NAME_LABEL}={service}"
    )
    return list(listed.items)


def ready_endpoints(api: client.ApiClient, namespace: str, service: str) -> int:
    """How many ready endpoints the Service's EndpointSlices list."""
    slices = endpoint_slices(api, namespace, service)
    return sum(endpoint_ready(e) for s in slices for e in s.endpoints or [])


async def reachable(api: client.ApiClient, target: TargetRef, track: str) -> None:
    """Wait until the track's Service lists a ready endpoint, the moment a gateway can send it
    users: the EndpointSlice controller adds a pod some time after it is Ready (seconds on a
    loaded machine), and a weight written before answers 503 to every user sent there.
    LookupError after ``REACHABLE_SECONDS``."""
    name = track_service_name(target, track)

    async def count() -> int:
        return await asyncio.to_thread(ready_endpoints, api, target.namespace, name)

    deadline = utc_now() + timedelta(seconds=REACHABLE_SECONDS)
    _, ok = await poll_until(count, lambda n: n > 0, deadline=deadline)
    if not ok:
        raise LookupError(
            f"Service {target.namespace}/{name} has no ready endpoint after "
            f"{REACHABLE_SECONDS:g} s: the gateway could not send its users anywhere"
        )


def leaving_endpoints(slices: list[Any], pods: list[Any]) -> tuple[int, list[str]]:
    """The Service's ready endpoints, and those of them a gateway must not be sent to: a pod
    that is gone, terminating, or of a track that goes with the release. Pure."""
    by_name = {pod.metadata.name: pod for pod in pods}
    ready, leaving = 0, []
    for endpoint in (e for s in slices for e in s.endpoints or [] if endpoint_ready(e)):
        ready += 1
        name = endpoint.target_ref.name if endpoint.target_ref else None
        pod = by_name.get(name)
        if (
            pod is None
            or pod.metadata.deletion_timestamp is not None
            or (pod.metadata.labels or {}).get(TRACK_LABEL) in LEAVING_TRACKS
        ):
            leaving.append(name or ",".join(endpoint.addresses or []))
    return ready, leaving


def _endpoints_of(
    api: client.ApiClient, namespace: str, service: str
) -> tuple[int, list[str]] | None:
    """``leaving_endpoints`` of a Service as the API has it now; None when it has no
    selector or is gone (nothing to wait for)."""
    core = client.CoreV1Api(api)
    try:
        selector = core.read_namespaced_service(service, namespace).spec.selector or {}
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    if not selector:
        return None
    pods = core.list_namespaced_pod(
        namespace, label_selector=",".join(f"{k}={v}" for k, v in selector.items())
    ).items
    return leaving_endpoints(endpoint_slices(api, namespace, service), pods)


async def settled(api: client.ApiClient, target: TargetRef, service: str) -> None:
    """Wait until ``service`` (the target's own, which a route given back sends users to)
    lists only pods that stay. It selects the canary's and baseline's pods too, and the
    EndpointSlice controller drops them some time after they are deleted (over 2 s on a
    loaded machine); a route given back before answered 502 to a user sent to a pod already
    gone (test_traffic), or would send users to the canary's version after a rollback.
    LookupError after ``REACHABLE_SECONDS``, the route left on stable's own Service."""
    name = target.namespace + "/" + service

    async def read() -> tuple[int, list[str]] | None:
        return await asyncio.to_thread(_endpoints_of, api, target.namespace, service)

    deadline = utc_now() + timedelta(seconds=REACHABLE_SECONDS)
    found, ok = await poll_until(
        read, lambda found: found is None or (found[0] > 0 and not found[1]), deadline=deadline
    )
    if not ok and found is not None:
        ready, leaving = found
        raise LookupError(
            f"Service {name} still lists {', '.join(leaving[:5]) or 'no ready endpoint'} "
            f"({ready} ready) after {REACHABLE_SECONDS:g} s: its route is not given back "
            "while it would send users to pods that are gone or going"
        )


def delete_track_services(
    api: client.ApiClient, target: TargetRef, tracks: tuple[str, ...]
) -> None:
    """Delete the tracks' Services this target's router made, and nothing else."""
    core = client.CoreV1Api(api)
    ours = core.list_namespaced_service(
        target.namespace, label_selector=f"{MANAGED_BY}={target.name}"
    ).items
    names = {track_service_name(target, track) for track in tracks}
    for service in ours:
        if service.metadata.name not in names:
            continue
        try:
            core.delete_namespaced_service(service.metadata.name, target.namespace)
        except client.ApiException as error:
            if error.status != 404:
                raise
