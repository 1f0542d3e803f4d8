"""Checking a request against the cluster: does the target exist, and which policy governs it.

The planner only ever reads Kubernetes (the executor owns every write), and it reads through
the small ``ClusterReader`` protocol so that handlers are tested with a fake cluster; what is
decided from those reads is the pure ``check_request``.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from canaryflow.planner.planning import Admission, Refusal, plan
from canaryflow.runtime.bundle import base_of, references
from canaryflow.runtime.kube import api_client, is_not_found, read_policies
from canaryflow.runtime.policies import PolicyObject, error_text, governing
from canaryflow.runtime.traffic import ROUTERS, CannotSplit, router_for
from canaryflow_contracts.events import ContainerResources, ReleaseRequested
from canaryflow_contracts.policy import ReleasePolicySpec

_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")


@dataclass(frozen=True)
class DeploymentFacts:
    """What the planner needs to know about the target Deployment."""

    replicas: int
    containers: tuple[tuple[str, str], ...]  # (name, image), in pod order
    # The ConfigMaps its pods read, by the name a release names them with (their base name).
    config_maps: tuple[str, ...] = ()


class ClusterReader(Protocol):
    async def deployment(self, namespace: str, name: str) -> DeploymentFacts | None:
        """The Deployment, or None when it does not exist."""
        ...

    async def release_policies(
        self, namespace: str, targeting: str | None = None
    ) -> list[PolicyObject]:
        """The namespace's policies: at least those whose targetRef is ``targeting``."""
        ...


def check_request(
    request: ReleaseRequested,
    deployment: DeploymentFacts | None,
    policies: list[PolicyObject],
    now: datetime,
    routers: Collection[str] = ROUTERS.keys(),
) -> Admission | Refusal:
    """Every reason to refuse ``request``, or its admission. Pure: the reads happen before."""
    target = request.target
    reasons: list[str] = []
    stable_image = ""
    if deployment is None:
        reasons.append(f"Deployment {target.key()} not found")
    else:
        images = dict(deployment.containers)
        container = request.version.container or deployment.containers[0][0]
        if container not in images:
            reasons.append(
                f"Deployment {target.key()} has no container {container!r} "
                f"(it has {', '.join(images)})"
            )
        stable_image = images.get(container, "")
        reasons.extend(_configuration_problems(request, deployment))
    policy = governing(target.namespace, target.name, policies)
    policy_name, spec = policy.name, policy.spec
    reasons.extend(policy.problems)
    if spec is not None:
        reasons.extend(_routing_problems(spec, deployment, policy_name, routers))
    if spec is not None and spec.images is not None:
        image_refusal = spec.images.refusal(request.version.image)
        if image_refusal is not None:
            reasons.append(f"version.image: {image_refusal} (ReleasePolicy {policy_name})")
    if spec is not None:
        planned = plan(request, spec, now)
        if isinstance(planned, Refusal):
            reasons.extend(planned.reasons)
        elif not reasons:
            resources = spec.canary_resources
            return Admission(
                plan=planned,
                policy_name=policy_name,
                stable_image=stable_image,
                canary_resources=None
                if resources is None
                else ContainerResources(requests=resources.requests, limits=resources.limits),
                operators=spec.operators,
                hooks=list(spec.hooks),
                notify=list(spec.notify),
                limits=spec.limits,
                max_weight=min(spec.max_weight, request.overrides.max_weight or spec.max_weight),
            )
    return Refusal(tuple(reasons))


def _routing_problems(
    spec: ReleasePolicySpec,
    deployment: DeploymentFacts | None,
    policy_name: str,
    routers: Collection[str],
) -> list[str]:
    """The policy's router must exist, be enabled here, honour its options, and split the
    target at every step."""
    try:
        router = router_for(spec.traffic, enabled=routers)
    except ValueError as error:
        return [f"traffic: {error} (ReleasePolicy {policy_name})"]
    if deployment is None:
        return []
    for step in spec.steps:
        try:
            router.replicas(deployment.replicas, step.weight)
        except CannotSplit as error:
            return [
                f"the Deployment runs {deployment.replicas} replica(s) and the {router.name} "
                f"router cannot split it at {step.weight} %: {error}"
            ]
    return []


def _configuration_problems(request: ReleaseRequested, deployment: DeploymentFacts) -> list[str]:
    """A ConfigMap change must name one the target reads, with keys Kubernetes accepts."""
    problems = []
    known = ", ".join(sorted(deployment.config_maps)) or "none"
    for change in request.version.config_maps:
        if change.name not in deployment.config_maps:
            problems.append(
                f"version.config_maps: Deployment {request.target.key()} reads no ConfigMap "
                f"{change.name!r} (it reads: {known})"
            )
        bad = sorted(k for k in [*change.data, *change.remove] if not _CONFIG_KEY.match(k))
        if bad:
            problems.append(
                f"version.config_maps: {change.name}: keys {bad} are not valid ConfigMap keys"
            )
    return problems


def describe_validation_error(error: ValidationError) -> list[str]:
    """One readable reason per problem pydantic found, each naming its field."""
    return [error_text(e) for e in error.errors()]


async def validate(
    request: ReleaseRequested,
    reader: ClusterReader,
    now: datetime,
    routers: Collection[str] = ROUTERS.keys(),
) -> Admission | Refusal:
    target = request.target
    deployment = await reader.deployment(target.namespace, target.name)
    policies = await reader.release_policies(target.namespace, target.name)
    return check_request(request, deployment, policies, now, routers)


class KubeClusterReader:
    """Reads the target and its policies from the API server; never writes."""

    def __init__(self, kubeconfig: str | None) -> None:
        self._kubeconfig = kubeconfig
        self._api: client.ApiClient | None = None
        self._making = threading.Lock()

    def _client(self) -> client.ApiClient:
        """The client, made on first use (a planner starts, and serves its other events,
        without a cluster). Called in a worker thread only: the first use imports the
        kubernetes client's API modules and models (the package imports them lazily), seconds
        of CPU on a busy machine, and on the event loop that stopped the consumer's heartbeat,
        so JetStream handed the request to the other replica again and again (test_observability:
        one request handled 4-5 times)."""
        with self._making:
            if self._api is None:
                api = api_client(self._kubeconfig)
                for api_class in (client.AppsV1Api, client.CoreV1Api, client.CustomObjectsApi):
                    api_class(api)  # the lazy imports, here rather than on the event loop
                self._api = api
            return self._api

    async def deployment(self, namespace: str, name: str) -> DeploymentFacts | None:
        return await asyncio.to_thread(self._deployment, namespace, name)

    def _deployment(self, namespace: str, name: str) -> DeploymentFacts | None:
        api = self._client()
        try:
            found = client.AppsV1Api(api).read_namespaced_deployment(name, namespace)
        except ApiException as error:
            if is_not_found(error):
                return None
            raise
        replicas = found.spec.replicas
        return DeploymentFacts(
            replicas=1 if replicas is None else int(replicas),
            containers=tuple((c.name, c.image) for c in found.spec.template.spec.containers),
            config_maps=self._config_bases(api, namespace, found.spec.template),
        )

    @staticmethod
    def _config_bases(api: client.ApiClient, namespace: str, template: Any) -> tuple[str, ...]:
        """The base names of the ConfigMaps a pod template reads (absent ones by their name)."""
        names = references(api.sanitize_for_serialization(template)).config_maps
        core = client.CoreV1Api(api)
        bases = []
        for name in sorted(names):
            try:
                found = core.read_namespaced_config_map(name, namespace)
            except ApiException as error:
                if not is_not_found(error):
                    raise
                bases.append(name)
                continue
            bases.append(base_of(api.sanitize_for_serialization(found)))
        return tuple(bases)

    async def release_policies(
        self, namespace: str, targeting: str | None = None
    ) -> list[PolicyObject]:
        return await read_policies(await asyncio.to_thread(self._client), namespace, targeting)
