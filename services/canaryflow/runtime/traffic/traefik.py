"""Traefik: the canary's share is a weight on a TraefikService, sticky by cookie.

Why a weighted router: with the replica ratio a 5 % step needs 20 pods and a 1-pod target
cannot be split at all. Here the target's TraefikService (named like the target) lists the
per-track Services ``<target>-stable`` and ``<target>-canary`` with weights, and a sticky
cookie keeps each user on the version they were first sent to, so the weight is the share of
**new sessions**. Stable keeps its full size; the canary runs the pods its share needs at
stable's load per pod (at least one), whatever the weight.

Why ``finalize`` writes weight 0 and nothing else: Traefik drops a service whose weight is
not positive from the weighted handler, so users pinned to the canary no longer match their
cookie and go to stable at once (0.19 s measured, no error). Removing the canary's pods while
the TraefikService still lists it would answer 503 to those users (or 404 to everyone
without ``allowEmptyServices``) until the configuration changes, so the rollback calls
``finalize`` first and removes pods after.

No baseline: the Services select by track and the baseline's pods are in neither; a weighted
router judges the canary against stable (noted in docs/local-stack.md as not done).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from kubernetes import client

from canaryflow.runtime.kube import DeploymentReadiness
from canaryflow.runtime.traffic.base import CannotSplit, ReplicaPlan
from canaryflow_contracts.events import TargetRef

GROUP, VERSION, PLURAL = "traefik.io", "v1alpha1", "traefikservices"


def track_service(target: TargetRef, track: str) -> str:
    return f"{target.name}-{track}"


def weights(target: TargetRef, canary_weight_percent: int) -> dict[str, int]:
    """The weight of each per-track Service for a canary share."""
    if not 0 <= canary_weight_percent <= 100:
        raise ValueError(f"a weight is a percentage, got {canary_weight_percent}")
    return {
        track_service(target, "stable"): 100 - canary_weight_percent,
        track_service(target, "canary"): canary_weight_percent,
    }


def reweighted(services: list[dict[str, Any]], wanted: dict[str, int]) -> list[dict[str, Any]]:
    """The TraefikService's service list with the wanted weights; every one must be listed."""
    names = {service.get("name") for service in services}
    missing = sorted(set(wanted) - names)
    if missing:
        raise LookupError(
            f"the TraefikService does not list {', '.join(missing)} (it lists "
            f"{', '.join(sorted(str(n) for n in names))})"
        )
    return [
        {**service, "weight": wanted.get(service["name"], service.get("weight", 0))}
        for service in services
    ]


class TraefikRouter:
    name = "traefik"

    def __init__(self, api: client.ApiClient) -> None:
        self._custom = client.CustomObjectsApi(api)

    def replicas(self, full_size: int, weight_percent: int) -> ReplicaPlan:
        if full_size < 1:
            raise CannotSplit(f"the target has {full_size} replicas: nothing serves stable")
        canary = max(1, math.ceil(full_size * weight_percent / 100))
        return ReplicaPlan(stable=full_size, canary=canary, baseline=0)

    async def set_routes(self, target: TargetRef, canary_weight_percent: int) -> None:
        await asyncio.to_thread(self._write, target, weights(target, canary_weight_percent))

    def _write(self, target: TargetRef, wanted: dict[str, int]) -> None:
        try:
            current = self._custom.get_namespaced_custom_object(
                GROUP, VERSION, target.namespace, PLURAL, target.name
            )
        except client.ApiException as error:
            if error.status == 404:
                raise LookupError(
                    f"TraefikService {target.key()} not found: the traefik router routes "
                    "through a TraefikService named like the target"
                ) from error
            raise
        weighted = current.get("spec", {}).get("weighted")
        if not isinstance(weighted, dict):
            raise LookupError(f"TraefikService {target.key()} is not of type weighted")
        services = reweighted(list(weighted.get("services") or []), wanted)
        # A merge patch replaces the list whole: the rest of each entry is kept as read.
        self._custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            target.namespace,
            PLURAL,
            target.name,
            {"spec": {"weighted": {"services": services}}},
        )

    def verify_weight(
        self,
        stable: DeploymentReadiness,
        canary: DeploymentReadiness,
        baseline: DeploymentReadiness | None = None,
    ) -> float | None:
        """Unknown: the share of new sessions is Traefik's to tell, not the pods'."""
        return None

    async def finalize(self, target: TargetRef) -> None:
        """Every user on stable, pinned ones included: the canary's weight goes to 0."""
        await self.set_routes(target, 0)
