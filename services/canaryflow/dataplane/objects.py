"""The Kubernetes objects of a shop on the real data plane: Deployments, Services, Traefik.

Why one module: the data plane's tests, the gateway bench and the demo build the same
objects: a Deployment whose pods declare a port and ask to be scraped, a Service per track
(selected by the track label, as Flagger's ``-primary``/``-canary``), and Traefik's weighted
sticky TraefikService behind an IngressRoute.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client

from canaryflow.dataplane.load import PAGES_ANNOTATION, RATE_ANNOTATION, USERS_LABEL
from canaryflow.runtime.behaviour import CONFIGMAP_NAME
from canaryflow.runtime.conventions import TRACK_LABEL

SERVING_GATE = "canaryflow.io/serving"
"""The readiness gate of a pod that is Ready only once its listener answers. KWOK leaves such
a pod not Ready (deploy/kwok/stages.yaml); the pods server (pods.py) binds its listener, then
sets the gate and Ready, as a kubelet would once a readiness probe passes. Without it KWOK
marked the pod Ready on its address alone and the gateway routed to it before anything
listened: 502s at canary scale-ups (test_traffic)."""

APP_PORT = 8080
SERVICE_PORT = 80
TRAEFIK_GROUP, TRAEFIK_VERSION = "traefik.io", "v1alpha1"
IMAGE = "registry.local/shop/web"


def shop_deployment(name: str, app: str, version: str, replicas: int, track: str) -> Any:
    labels = {"app": app, TRACK_LABEL: track}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=dict(labels)),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=dict(labels)),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(
                    labels=dict(labels), annotations={"prometheus.io/scrape": "true"}
                ),
                spec=client.V1PodSpec(
                    readiness_gates=[client.V1PodReadinessGate(condition_type=SERVING_GATE)],
                    containers=[
                        client.V1Container(
                            name="app",
                            image=f"{IMAGE}:{version}",
                            ports=[client.V1ContainerPort(container_port=APP_PORT, name="http")],
                        )
                    ],
                ),
            ),
        ),
    )


def behaviour_configmap(behaviours: dict[str, dict[str, Any]]) -> Any:
    """The ConfigMap that tells pods how each version behaves, by tag."""
    return client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=CONFIGMAP_NAME),
        data={version: json.dumps(behaviour) for version, behaviour in behaviours.items()},
    )


def track_service(name: str, app: str, track: str | None) -> Any:
    """The Service of one track's pods, or (``track`` None) of every track's: the target's own."""
    selector = {"app": app} if track is None else {"app": app, TRACK_LABEL: track}
    return client.V1Service(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1ServiceSpec(
            selector=selector,
            ports=[client.V1ServicePort(port=SERVICE_PORT, target_port=APP_PORT, name="http")],
        ),
    )


def users_service(name: str, app: str, users_per_second: float, pages: int = 0) -> Any:
    """The target's own Service (every track's pods) asking the stack for users
    (``canaryflow.dataplane.load``): they go straight to its Ready pods, as kube-proxy sends."""
    service = track_service(name, app, None)
    service.metadata.labels = {USERS_LABEL: "true"}
    service.metadata.annotations = {
        RATE_ANNOTATION: f"{users_per_second:g}",
        PAGES_ANNOTATION: str(pages),
    }
    return service


def weighted_sticky(name: str, weights: dict[str, int], cookie: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{TRAEFIK_GROUP}/{TRAEFIK_VERSION}",
        "kind": "TraefikService",
        "metadata": {"name": name},
        "spec": {
            "weighted": {
                "services": [
                    {"name": service, "port": SERVICE_PORT, "weight": weight}
                    for service, weight in weights.items()
                ],
                "sticky": {"cookie": {"name": cookie, "httpOnly": True}},
            }
        },
    }


def ingress_route(
    name: str, host: str, target: str, kind: str = "TraefikService", cookie: str | None = None
) -> dict[str, Any]:
    """Traefik's route for ``host`` to a TraefikService, or (``kind="Service"``) straight to a
    Service's Ready endpoints, each user pinned to one pod by ``cookie`` when given."""
    backend: dict[str, Any] = {"name": target, "kind": kind}
    if kind == "Service":
        backend["port"] = SERVICE_PORT
    if cookie is not None:
        backend["sticky"] = {"cookie": {"name": cookie, "httpOnly": True}}
    return {
        "apiVersion": f"{TRAEFIK_GROUP}/{TRAEFIK_VERSION}",
        "kind": "IngressRoute",
        "metadata": {"name": name},
        "spec": {
            "entryPoints": ["web"],
            "routes": [
                {
                    "match": f"Host(`{host}`)",
                    "kind": "Rule",
                    "services": [backend],
                }
            ],
        },
    }


PLURALS = {"TraefikService": "traefikservices", "IngressRoute": "ingressroutes"}


def create_traefik(kube: client.ApiClient, namespace: str, body: dict[str, Any]) -> None:
    client.CustomObjectsApi(kube).create_namespaced_custom_object(
        TRAEFIK_GROUP, TRAEFIK_VERSION, namespace, PLURALS[body["kind"]], body
    )


def set_weights(kube: client.ApiClient, namespace: str, name: str, weights: dict[str, int]) -> None:
    """Patch a weighted TraefikService's weights (its services keep their order)."""
    api = client.CustomObjectsApi(kube)
    current = api.get_namespaced_custom_object(
        TRAEFIK_GROUP, TRAEFIK_VERSION, namespace, PLURALS["TraefikService"], name
    )
    services = current["spec"]["weighted"]["services"]
    for service in services:
        service["weight"] = weights[service["name"]]
    api.patch_namespaced_custom_object(
        TRAEFIK_GROUP,
        TRAEFIK_VERSION,
        namespace,
        PLURALS["TraefikService"],
        name,
        {"spec": {"weighted": {"services": services}}},
    )


def ready_pods(kube: client.ApiClient, namespace: str, selector: str) -> list[Any]:
    pods = client.CoreV1Api(kube).list_namespaced_pod(namespace, label_selector=selector).items
    return [
        p
        for p in pods
        if p.metadata.deletion_timestamp is None
        and p.status.pod_ip
        and any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))
    ]
