"""What the weighted routers (Traefik, Gateway API) share: sizes, reads, no verification,
and the order of their writes.

With a weight on a route, the canary's share no longer comes from pod counts: stable keeps
its full size and the canary runs the pods its share needs at stable's load per pod (at
least one), so a 1-pod target can be canaried at 5 %.

Why a baseline here too: the judgement compares the canary with the stable version on fresh
pods receiving the same kind of traffic (new sessions, at the same weight), not with stable,
whose pods are old and whose users are mostly returning ones (Kayenta's reasoning). So the
baseline gets its own Service and the canary's weight, taken from stable's share; it gets
less only when stable would be left with less than it (at 50 % the split is 50/25/25), and
none at 100 %. Its pods follow its weight as the canary's follow the canary's.

Why a track gets traffic only once its Service lists a ready endpoint: a gateway routes by
EndpointSlices, which the EndpointSlice controller fills some time after the pods are Ready
(seconds on a loaded machine). A canary weight written before that answered 503 to the new
users sent to the canary (measured: 35 in one release at a load average of 12), and the
routing object taken over before stable's Service had endpoints would do the same to all.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from kubernetes import client

from canaryflow.runtime.conventions import DeploymentReadiness
from canaryflow.runtime.traffic.base import CannotSplit, ReplicaPlan
from canaryflow.runtime.traffic.services import ensure_track_services, reachable, settled
from canaryflow_contracts.events import TargetRef
from canaryflow_contracts.policy import Traffic


def track_weights(canary_weight_percent: int) -> dict[str, int]:
    """The share of new sessions of each track at a canary weight (summing to 100). Pure."""
    if not 0 <= canary_weight_percent <= 100:
        raise ValueError(f"a weight is a percentage, got {canary_weight_percent}")
    baseline = min(canary_weight_percent, (100 - canary_weight_percent) // 2)
    return {
        "stable": 100 - canary_weight_percent - baseline,
        "baseline": baseline,
        "canary": canary_weight_percent,
    }


def _pods_for(full_size: int, weight_percent: int) -> int:
    """Pods for a share at stable's load per pod: at least one for any positive share."""
    return max(1, math.ceil(full_size * weight_percent / 100)) if weight_percent > 0 else 0


class WeightedRouter:
    name = "weighted"
    group = version = plural = ""
    """The routing object the router reads and writes, named like the target."""
    tracks = ("stable", "baseline", "canary")
    original = ""
    """The annotation a taken-over routing object keeps its own routes in."""

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

    async def reconcile(self, target: TargetRef) -> None:
        """The per-track Services, then (once stable's has an endpoint) the routing object
        taken over with the canary at weight 0."""
        await asyncio.to_thread(self._check, target)
        port = await asyncio.to_thread(
            ensure_track_services, self.api, target, self._service or target.name, self.tracks
        )
        await reachable(self.api, target, "stable")
        await asyncio.to_thread(self._take_over, target, port)

    async def set_routes(self, target: TargetRef, canary_weight_percent: int) -> None:
        """The step's weights, once each track that gets a share has a ready endpoint."""
        for track, share in track_weights(canary_weight_percent).items():
            if track != "stable" and share > 0:
                await reachable(self.api, target, track)
        await asyncio.to_thread(self._write, target, canary_weight_percent)

    async def remove(self, target: TargetRef) -> None:
        """Give the routing object its own routes back, once the Service they send users to
        lists only pods that stay (``settled``); then delete the per-track Services."""
        if await asyncio.to_thread(self._taken_over, target):
            await settled(self.api, target, self._service or target.name)
        await asyncio.to_thread(self._remove, target)

    def _taken_over(self, target: TargetRef) -> bool:
        found = self._read(target)
        return found is not None and self.original in (found["metadata"].get("annotations") or {})

    def _remove(self, target: TargetRef) -> None:
        raise NotImplementedError

    def _check(self, target: TargetRef) -> None:
        """Raise LookupError when the target cannot be routed by this router (before any
        write)."""

    def _take_over(self, target: TargetRef, port: int) -> None:
        raise NotImplementedError

    def _write(self, target: TargetRef, canary_weight_percent: int) -> None:
        raise NotImplementedError

    def replicas(self, full_size: int, weight_percent: int) -> ReplicaPlan:
        if full_size < 1:
            raise CannotSplit(f"the target has {full_size} replicas: nothing serves stable")
        shares = track_weights(weight_percent)
        return ReplicaPlan(
            stable=full_size,
            canary=max(1, _pods_for(full_size, shares["canary"])),
            baseline=_pods_for(full_size, shares["baseline"]),
        )

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
