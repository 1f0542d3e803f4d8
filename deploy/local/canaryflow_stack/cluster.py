"""Which Kubernetes cluster the stack uses, and the bootstrap of the local one (KWOK nodes).

Why: a person who already has a cluster (kind, k3d, a real one) sets KUBECONFIG and should
not pay for building and running a local control plane; everyone else gets the local one.
The local cluster has no kubelets: KWOK plays them for Node objects annotated
``kwok.x-k8s.io/node: fake``, which this module creates (without the NoSchedule taint KWOK's
docs put on them, so ordinary Deployments schedule there) and waits for until Ready. It also
installs the ReleasePolicy CRD, so that services started by hand find their policies' kind.

The bootstrap talks to the API server with plain HTTP requests (httpx) rather than the
``kubernetes`` client, so the stack manager stays typed and starts fast.
"""

from __future__ import annotations

import json
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from .config import KWOK_NODE_COUNT, Settings

KWOK_ANNOTATION = "kwok.x-k8s.io/node"


@dataclass(frozen=True)
class ClusterChoice:
    """``local`` (the stack's own control plane) or ``external`` (the user's KUBECONFIG)."""

    kind: str
    kubeconfig: str
    detail: str


def choose_cluster(settings: Settings) -> ClusterChoice:
    """Use $KUBECONFIG when it names a reachable cluster other than the stack's own."""
    env = os.environ.get("KUBECONFIG", "").strip()
    local = ClusterChoice("local", str(settings.kubeconfig), "the stack's own control plane")
    if not env:
        return local
    paths = [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    if any(p.resolve() == settings.kubeconfig.resolve() for p in paths):
        return local
    reason = probe_external(env)
    if reason is None:
        return ClusterChoice("external", env, f"KUBECONFIG={env}")
    print(f"KUBECONFIG={env} is not usable ({reason}); using the local cluster instead")
    return local


def probe_external(kubeconfig: str) -> str | None:
    """None if the cluster named by ``kubeconfig`` answers /version, else why not."""
    try:
        from kubernetes import client
        from kubernetes import config as kconfig

        config_file = None if os.pathsep in kubeconfig else kubeconfig
        new_client: Callable[..., Any] = kconfig.new_client_from_config
        api = new_client(config_file=config_file)
        with api:
            client.VersionApi(api).get_code(_request_timeout=5)
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


class KubeApi:
    """Minimal typed access to the local API server with the admin token."""

    def __init__(self, server: str, token: str, ca_file: Path) -> None:
        self._client = httpx.Client(
            base_url=server,
            headers={"Authorization": f"Bearer {token}"},
            verify=ssl.create_default_context(cafile=str(ca_file)),
            timeout=5.0,
            trust_env=False,
        )

    def close(self) -> None:
        self._client.close()

    def get(self, path: str) -> httpx.Response:
        return self._client.get(path)

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self._client.post(path, json=body)

    def put(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self._client.put(path, json=body)

    def delete(self, path: str) -> httpx.Response:
        return self._client.delete(path)

    def apply(self, path: str, body: dict[str, Any], field_manager: str) -> httpx.Response:
        """Server-side apply (JSON is YAML, so the body goes as apply-patch+yaml)."""
        return self._client.patch(
            path,
            params={"fieldManager": field_manager, "force": "true"},
            content=json.dumps(body),
            headers={"Content-Type": "application/apply-patch+yaml"},
        )


def apply_crds(api: KubeApi, manifest: Path, field_manager: str) -> list[str]:
    """Apply every CustomResourceDefinition of a multi-document YAML file server-side.

    Server-side, because Traefik's CRDs are too large for the last-applied annotation of a
    client-side apply. Returns the names applied; raises with the API's answer otherwise.
    """
    names = []
    for doc in yaml.safe_load_all(manifest.read_text()):
        if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
            continue
        name = doc["metadata"]["name"]
        path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
        response = api.apply(path, doc, field_manager)
        if not response.is_success:
            raise RuntimeError(
                f"applying CRD {name} from {manifest}: HTTP {response.status_code}: "
                f"{response.text[:300]}"
            )
        names.append(name)
    if not names:
        raise RuntimeError(f"{manifest} holds no CustomResourceDefinition")
    return names


def node_names() -> list[str]:
    return [f"kwok-node-{i}" for i in range(KWOK_NODE_COUNT)]


def node_manifest(name: str) -> dict[str, Any]:
    resources = {"cpu": "32", "memory": "256Gi", "pods": "1000"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node-role.kubernetes.io/agent": "",
                "type": "kwok",
            },
        },
        "status": {"allocatable": resources, "capacity": resources},
    }


def ensure_nodes(api: KubeApi) -> None:
    """Create the fake nodes that do not exist yet."""
    for name in node_names():
        if api.get(f"/api/v1/nodes/{name}").status_code == 404:
            response = api.post("/api/v1/nodes", node_manifest(name))
            if response.status_code not in (201, 409):
                raise RuntimeError(
                    f"creating node {name}: HTTP {response.status_code}: {response.text[:300]}"
                )


LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
LEASE_SECONDS = 40
"""kwok's --node-lease-duration-seconds: how long a node lease stays valid without renewal."""


def release_node_leases(api: KubeApi) -> None:
    """Delete the fake nodes' leases left by a kwok that is no longer running.

    Each kwok process takes the node leases under a fresh random identity and will not manage
    a node whose lease another identity still holds; without this, a restarted kwok leaves
    pods Pending for up to the lease duration (40 s) after every ``down``/``up``.
    """
    for name in node_names():
        response = api.delete(f"{LEASES}/{name}")
        if response.status_code not in (200, 202, 404):
            raise RuntimeError(
                f"deleting the lease of node {name}: HTTP {response.status_code}: "
                f"{response.text[:300]}"
            )


def leases_fresh(api: KubeApi) -> str | None:
    """None when a running kwok holds and renews every fake node's lease, else why not."""
    now = datetime.now(UTC)
    stale = []
    for name in node_names():
        response = api.get(f"{LEASES}/{name}")
        renew = response.json().get("spec", {}).get("renewTime") if response.is_success else None
        if not renew or (now - datetime.fromisoformat(renew)).total_seconds() > LEASE_SECONDS:
            stale.append(name)
    return f"node leases not held by kwok yet: {', '.join(stale)}" if stale else None


def nodes_ready(api: KubeApi) -> str | None:
    """None when every fake node is Ready, else which are not."""
    try:
        response = api.get("/api/v1/nodes")
    except httpx.HTTPError as exc:
        return f"listing nodes: {exc}"
    if not response.is_success:
        return f"listing nodes: HTTP {response.status_code}"
    ready = set()
    for item in response.json().get("items", []):
        conditions = item.get("status", {}).get("conditions") or []
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            ready.add(item["metadata"]["name"])
    missing = [n for n in node_names() if n not in ready]
    if missing:
        return f"{len(node_names()) - len(missing)} of {len(node_names())} nodes Ready " + (
            f"(waiting for {', '.join(missing)})"
        )
    return None


CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def ensure_crd(api: KubeApi, manifest: dict[str, Any], timeout: float = 30.0) -> str:
    """Create or update a CustomResourceDefinition and wait until the API serves it.

    Returns what was done ("created" or "updated"). The manifest is the one generated from
    the policy models (deploy/helm/canaryflow/crds/), so every ``up`` converges the cluster to
    the code's current ReleasePolicy schema (an unchanged one is a no-op for the API server).
    """
    path = f"{CRDS}/{manifest['metadata']['name']}"
    found = api.get(path)
    if found.status_code == 404:
        response, done = api.post(CRDS, manifest), "created"
    elif found.status_code == 200:
        version = found.json()["metadata"]["resourceVersion"]
        body = {**manifest, "metadata": {**manifest["metadata"], "resourceVersion": version}}
        response, done = api.put(path, body), "updated"
    else:
        response, done = found, "read"
    if response.status_code not in (200, 201):
        raise RuntimeError(
            f"installing CRD {path}: {done}: HTTP {response.status_code}: {response.text[:300]}"
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conditions = (api.get(path).json().get("status") or {}).get("conditions") or []
        if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
            return done
        time.sleep(0.2)  # the API server establishes a new CRD within about a second
    raise RuntimeError(f"CRD {path} was not Established within {timeout:.0f} s")
