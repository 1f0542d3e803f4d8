"""Objects for tests of the real data plane: shop Deployments, per-track Services, Traefik.

Why here: the pods, gateway and users tests (and later the router's) build the same
objects: a Deployment whose pods declare a port and ask to be scraped, a Service per track,
and Traefik's weighted sticky TraefikService behind an IngressRoute.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client

from canaryflow.runtime.kube import TRACK_LABEL

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
                    containers=[
                        client.V1Container(
                            name="app",
                            image=f"{IMAGE}:{version}",
                            ports=[client.V1ContainerPort(container_port=APP_PORT, name="http")],
                        )
                    ]
                ),
            ),
        ),
    )


def track_service(name: str, app: str, track: str) -> Any:
    return client.V1Service(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1ServiceSpec(
            selector={"app": app, TRACK_LABEL: track},
            ports=[client.V1ServicePort(port=SERVICE_PORT, target_port=APP_PORT, name="http")],
        ),
    )


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


def ingress_route(name: str, host: str, traefik_service: str) -> dict[str, Any]:
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
                    "services": [{"name": traefik_service, "kind": "TraefikService"}],
                }
            ],
        },
    }


def create_traefik(kube: client.ApiClient, namespace: str, body: dict[str, Any]) -> None:
    plural = {"TraefikService": "traefikservices", "IngressRoute": "ingressroutes"}[body["kind"]]
    client.CustomObjectsApi(kube).create_namespaced_custom_object(
        TRAEFIK_GROUP, TRAEFIK_VERSION, namespace, plural, body
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
