"""Reading a ReleasePolicy, the platform team's word on how a target is judged.

A policy that is missing or does not parse can never be judged, however often the request is
retried, so it is a ``PolicyProblem`` (turned into an insufficient-data verdict that pauses
the release where a person sees it). An API server that does not answer is transient: the
exception propagates and the message is redelivered.
"""

from __future__ import annotations

from typing import Any, Protocol

from kubernetes import client
from pydantic import ValidationError

from canaryflow.runtime import kube
from canaryflow_contracts.policy import GROUP, PLURAL, VERSION, ReleasePolicySpec


class PolicyProblem(Exception):
    """The policy cannot be used: not found, or its spec is invalid."""


class PolicySource(Protocol):
    async def get(self, namespace: str, name: str) -> ReleasePolicySpec: ...


def parse_policy(namespace: str, name: str, body: Any) -> ReleasePolicySpec:
    spec = body.get("spec") if isinstance(body, dict) else None
    if spec is None:
        raise PolicyProblem(f"ReleasePolicy {namespace}/{name} has no spec")
    try:
        return ReleasePolicySpec.model_validate(spec)
    except ValidationError as error:
        raise PolicyProblem(f"ReleasePolicy {namespace}/{name} is invalid: {error}") from error


class KubePolicySource:
    def __init__(self, kubeconfig: str | None) -> None:
        self._kubeconfig = kubeconfig
        self._api: Any = None

    def _custom_objects(self) -> Any:
        # Built on first use, so the service starts (and unit tests run) without a cluster.
        if self._api is None:
            self._api = client.CustomObjectsApi(kube.api_client(self._kubeconfig))
        return self._api

    async def get(self, namespace: str, name: str) -> ReleasePolicySpec:
        try:
            body = await kube.call(
                self._custom_objects().get_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
            )
        except Exception as error:
            if kube.is_not_found(error):
                raise PolicyProblem(f"ReleasePolicy {namespace}/{name} not found") from error
            raise
        return parse_policy(namespace, name, body)
