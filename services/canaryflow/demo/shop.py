"""A sample service to release: a Deployment behind a Service, with real users.

Every Ready pod of the Deployment answers HTTP on its own address (the stack's
``canaryflow.dataplane.pods``), behaving as the ``canaryflow-simulator`` ConfigMap says for its
image tag (the name predates the real data plane and is kept so existing ConfigMaps work), and
the stack sends users to the Service (labelled ``canaryflow.io/users: "true"``), each straight
to one Ready pod as kube-proxy would; so a demo or a test can release a version that is worse in
a known way and the numbers Prometheus scrapes come from the pods that served the requests. The
policy installed here is deliberately quick (seconds per step) so that a release finishes while
you watch.
"""

from __future__ import annotations

import json
import time
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from canaryflow.dataplane.objects import APP_PORT, SERVING_GATE, users_service
from canaryflow.runtime.behaviour import CONFIGMAP_NAME
from canaryflow_contracts import generate, policy

REGISTRY = "registry.local/shop"


def install_crd(api: client.ApiClient, timeout: float = 30) -> None:
    """Create or update the ReleasePolicy CRD and wait until the API serves it."""
    extensions = client.ApiextensionsV1Api(api)
    body = generate.crd()
    name = body["metadata"]["name"]
    try:
        current = extensions.read_custom_resource_definition(name)
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        extensions.replace_custom_resource_definition(name, body)
    except ApiException as error:
        if error.status != 404:
            raise
        extensions.create_custom_resource_definition(body)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conditions = extensions.read_custom_resource_definition(name).status.conditions or []
        if any(c.type == "Established" and c.status == "True" for c in conditions):
            return
        time.sleep(0.2)
    raise TimeoutError(f"CRD {name} not established within {timeout:.0f}s")


def _create_or_patch(create: Any, patch: Any, *, name: str, namespace: str, body: Any) -> None:
    """Idempotent apply for the sample objects: create, or patch what is already there."""
    try:
        create(namespace, body)
    except ApiException as error:
        if error.status != 409:
            raise
        patch(name, namespace, body)


def image(tag: str, name: str = "web") -> str:
    return f"{REGISTRY}/{name}:{tag}"


def deploy(
    api: client.ApiClient,
    namespace: str,
    *,
    name: str = "web",
    tag: str = "v1",
    replicas: int = 10,
    rps: float = 150,
) -> None:
    """The Deployment and its Service, with ``rps`` users arriving a second.

    Each user is one visit (a landing page; a cart and a purchase when the version convinces
    them), so ``rps`` is about the landing pages served a second. 150 by default: a 10 %
    canary then sees about 15 requests a second, enough for the quick policy's minimum sample
    within one short step even when the machine is busy.
    """
    labels = {"app": name}
    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(
                    labels=labels, annotations={"prometheus.io/scrape": "true"}
                ),
                spec=client.V1PodSpec(
                    # Ready once the data plane answers on the pod's address (pods.py).
                    readiness_gates=[client.V1PodReadinessGate(condition_type=SERVING_GATE)],
                    containers=[
                        client.V1Container(
                            name=name,
                            image=image(tag, name),
                            env=[client.V1EnvVar(name="CHECKOUT_LAYOUT", value="classic")],
                            ports=[client.V1ContainerPort(container_port=APP_PORT, name="http")],
                        )
                    ],
                ),
            ),
        ),
    )
    apps = client.AppsV1Api(api)
    _create_or_patch(
        apps.create_namespaced_deployment,
        apps.patch_namespaced_deployment,
        name=name,
        namespace=namespace,
        body=deployment,
    )
    service = users_service(name, name, rps)
    core = client.CoreV1Api(api)
    _create_or_patch(
        core.create_namespaced_service,
        core.patch_namespaced_service,
        name=name,
        namespace=namespace,
        body=service,
    )


def set_behaviour(api: client.ApiClient, namespace: str, behaviours: dict[str, Any]) -> None:
    """How each image tag behaves in the pods, e.g. {"v2": {"error_rate": 0.2}}."""
    core = client.CoreV1Api(api)
    body = client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=CONFIGMAP_NAME),
        data={tag: json.dumps(behaviour) for tag, behaviour in behaviours.items()},
    )
    _create_or_patch(
        core.create_namespaced_config_map,
        core.patch_namespaced_config_map,
        name=CONFIGMAP_NAME,
        namespace=namespace,
        body=body,
    )


QUICK_VERDICTS: dict[str, Any] = {"insufficientData": "extend", "maxExtensions": 2}
"""A short hold that ends without enough data is held again (twice at most), then pauses:
real pods' first requests reach Prometheus seconds after the canary is Ready (a discovery,
two scrapes), and at a load average of 10 a canary had served 0 requests in the window 6 s
into an 8 s hold. Missing data still never passes."""


def quick_policy(
    target: str = "web",
    *,
    weights: tuple[int, ...] = (10, 30, 50),
    hold_seconds: float = 8,
    pod_ready_seconds: float = 30,
    max_error_rate: float = 0.05,
    max_p99_seconds: float = 1.0,
    min_requests: int = 20,
    compare: bool = True,
    business: list[dict[str, Any]] | None = None,
    verdicts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ReleasePolicy spec (camelCase, as in the cluster) with short steps for demos and tests.

    Besides the absolute guards, the canary is compared with the live baseline (errors and
    the whole latency distribution, by the sequential test) unless ``compare`` is off.

    The p99 guard (1 s) is for a broken version: the shop's versions answer in 0.12 s at p99,
    but one process serves every pod, and on a loaded 2-core machine (load ~24) a good
    version measured 0.585 s. Latency against the baseline, served by the same process, is
    the comparison's to judge.
    """
    comparisons = [
        {"name": "errors", "template": "errors"},
        {"name": "latency", "template": "latency"},
    ]
    analysis_extra: dict[str, Any] = {"compare": comparisons} if compare else {}
    if business:
        analysis_extra["business"] = business
    analysis_extra["verdicts"] = verdicts or QUICK_VERDICTS
    return {
        "targetRef": target,
        "steps": [{"weight": w, "holdSeconds": hold_seconds} for w in weights],
        "maxWeight": max(weights),
        "analysis": {
            "intervalSeconds": 2,
            "windowSeconds": 10,
            "minRequests": min_requests,
            "metrics": [
                {"name": "error-rate", "template": "error-rate", "max": max_error_rate},
                {"name": "p99-latency", "template": "p99-latency", "max": max_p99_seconds},
            ],
            **analysis_extra,
        },
        "deadlines": {"podReadySeconds": pod_ready_seconds, "pauseSeconds": 60},
    }


def apply_policy(
    api: client.ApiClient, namespace: str, spec: dict[str, Any], name: str = "web"
) -> None:
    custom = client.CustomObjectsApi(api)
    body: dict[str, Any] = {
        "apiVersion": f"{policy.GROUP}/{policy.VERSION}",
        "kind": policy.KIND,
        "metadata": {"name": name},
        "spec": spec,
    }
    try:
        custom.create_namespaced_custom_object(
            policy.GROUP, policy.VERSION, namespace, policy.PLURAL, body
        )
    except ApiException as error:
        if error.status != 409:
            raise
        current = custom.get_namespaced_custom_object(
            policy.GROUP, policy.VERSION, namespace, policy.PLURAL, name
        )
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        custom.replace_namespaced_custom_object(
            policy.GROUP, policy.VERSION, namespace, policy.PLURAL, name, body
        )
