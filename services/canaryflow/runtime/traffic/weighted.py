"""What the weighted routers (Traefik, Gateway API) share: sizes, reads, no verification.

With a weight on a route, the canary's share no longer comes from pod counts: stable keeps
its full size and the canary runs the pods its share needs at stable's load per pod (at
least one), so a 1-pod target can be canaried at 5 %.
"""

from __future__ import annotations

import math
from typing import Any

from kubernetes import client

from canaryflow.runtime.kube import DeploymentReadiness
from canaryflow.runtime.traffic.base import CannotSplit, ReplicaPlan
from canaryflow_contracts.events import TargetRef
from canaryflow_contracts.policy import Traffic


class WeightedRouter:
    name = "weighted"
    group = version = plural = ""
    """The routing object the router reads and writes, named like the target."""

    def __init__(
        self, api: client.ApiClient | None, traffic: Traffic, service: str | None = None
    ) -> None:
        self._api = api
        self._traffic = traffic
        self._service = service

    @property
    def api(self) -> client.ApiClient:
        if self._api is None:
            raise ValueError(f"the {self.name} router writes routing objects: give it a client")
        return self._api

    def _custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def replicas(self, full_size: int, weight_percent: int) -> ReplicaPlan:
        if full_size < 1:
            raise CannotSplit(f"the target has {full_size} replicas: nothing serves stable")
        canary = max(1, math.ceil(full_size * weight_percent / 100))
        return ReplicaPlan(stable=full_size, canary=canary, baseline=0)

    def _read(self, target: TargetRef) -> dict[str, Any] | None:
        """The routing object named like the target, or None."""
        try:
            found: dict[str, Any] = self._custom().get_namespaced_custom_object(
                self.group, self.version, target.namespace, self.plural, target.name
            )
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise
        return found

    def _replace(self, target: TargetRef, body: dict[str, Any]) -> None:
        self._custom().replace_namespaced_custom_object(
            self.group, self.version, target.namespace, self.plural, target.name, body
        )

    def verify_weight(
        self,
        stable: DeploymentReadiness,
        canary: DeploymentReadiness,
        baseline: DeploymentReadiness | None = None,
    ) -> float | None:
        """Unknown: the share is the gateway's to tell, not the pods'."""
        return None
