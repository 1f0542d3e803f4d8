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

Why every write is checked against the version it was read at: a redelivered command runs
beside the first delivery on a busy machine (the heartbeat came late, JetStream handed the
promotion out again). One promotion gave the route back; the other, which had read it just
before, wrote the weights back over it, and the first then deleted the per-track Services
those weights named: the gateway answered 404 to every user of the target (82 requests in
test_traffic before the run ended); two take-overs of one step failed the step on a 409. A
write is therefore a replace carrying the resourceVersion it was read at, read and decided
again on a conflict: a take-over finds the object already taken over, a weight 0 on a route
already given back writes nothing, any other weight is refused.

Why the per-track Services go only ``GIVE_BACK_SETTLE_SECONDS`` after the route is given
back: the gateway watches its routing objects and Services with separate watches, in no
order between them. If it saw the Services deleted before the route given back, it would
rebuild the old route with Services missing and drop it (Traefik answers 404) until the
new route reached it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any

from kubernetes import client

from canaryflow.runtime.conventions import DeploymentReadiness
from canaryflow.runtime.traffic.base import CannotSplit, ReplicaPlan
from canaryflow.runtime.traffic.services import (
    delete_track_services,
    ensure_track_services,
    reachable,
    settled,
    track_service_name,
)
from canaryflow_contracts.events import TargetRef
from canaryflow_contracts.policy import Traffic

log = logging.getLogger(__name__)

WRITE_ATTEMPTS = 5
"""Reads and writes of a routing object that others keep changing in between, before the
write fails (the command is then redelivered)."""
GIVE_BACK_SETTLE_SECONDS = 1.0
"""How long the per-track Services outlive the route given back: the time for the gateway's
watch of its routing objects to deliver the change (Traefik saw one in 0.03-0.18 s on the
local stack, STACK.md). Not a check of the gateway's state, which the routers cannot read."""


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
        lists only pods that stay (``settled``); then, once the gateway has had the time to
        see that, delete the per-track Services, unless the routing object still names one."""
        taken_over = await asyncio.to_thread(self._taken_over, target)
        if taken_over:
            await settled(self.api, target, self._service or target.name)
        # Also when another delivery gave it back in between: that was just now too.
        if await asyncio.to_thread(self._give_back, target) or taken_over:
            await asyncio.sleep(GIVE_BACK_SETTLE_SECONDS)
        await asyncio.to_thread(self._delete_track_services, target)

    def _taken_over(self, target: TargetRef) -> bool:
        found = self._read(target)
        return found is not None and self.is_taken_over(found)

    def is_taken_over(self, body: dict[str, Any]) -> bool:
        """Whether a routing object as read carries the routes it had before a release."""
        return self.original in ((body.get("metadata") or {}).get("annotations") or {})

    def _give_back(self, target: TargetRef) -> bool:
        """Put back the routes kept in the annotation; True when it wrote them now."""
        raise NotImplementedError

    def _delete_track_services(self, target: TargetRef) -> None:
        """Delete the per-track Services, unless the routing object still names one: deleting
        them under a route that sends users there answers 404 to all of its users."""
        found = self._read(target)
        named = self.names_tracks(target, found) if found is not None else []
        if named:
            log.warning(
                "%s %s still routes to %s although its routes were given back: the per-track "
                "Services are kept",
                self.plural,
                target.key(),
                ", ".join(named),
            )
            return
        delete_track_services(self.api, target, self.tracks)

    def names_tracks(self, target: TargetRef, body: dict[str, Any]) -> list[str]:
        """The per-track Services a routing object as read sends users to. Pure."""
        wanted = {track_service_name(target, track) for track in self.tracks}
        return sorted(wanted & set(_strings(body.get("spec"))))

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

    def _update(
        self, target: TargetRef, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]
    ) -> bool:
        """Read the routing object, let ``change`` make the new one from it (None: nothing
        to write) and replace it only if it is still the version read: the body carries the
        resourceVersion read, so the API server answers 409 to a write in between, and the
        object is read and decided again. True when it wrote."""
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            body = change(self._read(target))
            if body is None:
                return False
            try:
                self._replace(target, body)
                return True
            except client.ApiException as error:
                if error.status != 409 or attempt == WRITE_ATTEMPTS:
                    raise
                log.info(
                    "%s %s changed since it was read (attempt %d): reading it again",
                    self.plural,
                    target.key(),
                    attempt,
                )
        raise AssertionError("unreachable")

    def verify_weight(
        self,
        stable: DeploymentReadiness,
        canary: DeploymentReadiness,
        baseline: DeploymentReadiness | None = None,
    ) -> float | None:
        """Unknown: the share is the gateway's to tell, not the pods'."""
        return None


def _strings(value: Any) -> list[str]:
    """Every string in a JSON value, for the names a routing object's spec holds. Pure."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []
