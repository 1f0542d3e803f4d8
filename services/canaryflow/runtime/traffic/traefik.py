"""Traefik: the canary's share is a weight on a TraefikService, sticky by cookie.

Why a weighted router: with the replica ratio a 5 % step needs 20 pods and a 1-pod target
cannot be split at all. Here the target's TraefikService (named like the target, the one
its IngressRoutes route to) lists the per-track Services ``<target>-stable``,
``<target>-baseline`` and ``<target>-canary`` with weights while a release runs (weighted.py
says why the baseline gets the canary's weight); with ``sticky`` a cookie keeps each
user on the version they were first sent to, so the weight is the share of **new sessions**.
Stable keeps its full size; the canary runs the pods its share needs at stable's load per
pod (at least one), whatever the weight.

The TraefikService is taken over for the release and given back after it: ``reconcile``
keeps its original spec in an annotation (or creates it when there is none), ``remove``
puts that spec back (or, for one it created, leaves it routing to the target's own
Service). Header matches are an IngressRoute of their own, ``<target>-canary-match``: each
route that reaches the TraefikService is copied with the headers ANDed to its rule, at a
priority above any default, to the canary Service.

Why ``finalize`` writes weight 0 and drops the match route, and nothing else: Traefik drops a
service whose weight is not positive from the weighted handler, so users pinned to the
canary no longer match their cookie and go to stable at once (0.19 s measured, no error).
Removing the canary's pods while the TraefikService still lists it would answer 503 to those
users until the configuration changes, so the rollback calls ``finalize`` first and removes
pods after.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from kubernetes import client

from canaryflow.runtime.traffic.services import MANAGED_BY, track_service_name
from canaryflow.runtime.traffic.weighted import WeightedRouter, track_weights
from canaryflow_contracts.events import TargetRef
from canaryflow_contracts.policy import HeaderMatch, RouteMatch, Sticky

GROUP, VERSION = "traefik.io", "v1alpha1"
PLURAL, ROUTES = "traefikservices", "ingressroutes"
ORIGINAL = "canaryflow.io/original-spec"
"""Annotation with the TraefikService's spec from before the release ("" when we made it)."""
MATCH_PRIORITY = 1_000_000
"""Above Traefik's default priority (the rule's length) for any rule a person writes."""


def track_service(target: TargetRef, track: str) -> str:
    return track_service_name(target, track)


def match_route_name(target: TargetRef) -> str:
    return f"{target.name}-canary-match"


def weights(target: TargetRef, canary_weight_percent: int) -> dict[str, int]:
    """The weight of each per-track Service for a canary share."""
    return {
        track_service(target, track): share
        for track, share in track_weights(canary_weight_percent).items()
    }


def split_spec(target: TargetRef, port: int, sticky: Sticky | None) -> dict[str, Any]:
    """The TraefikService's spec during a release, all traffic on stable. Pure."""
    weighted: dict[str, Any] = {
        "services": [
            {"name": name, "port": port, "weight": weight}
            for name, weight in weights(target, 0).items()
        ]
    }
    if sticky is not None:
        cookie: dict[str, Any] = {"name": sticky.cookie_name, "httpOnly": True}
        if sticky.max_age_seconds is not None:
            cookie["maxAge"] = sticky.max_age_seconds
        weighted["sticky"] = {"cookie": cookie}
    return {"weighted": weighted}


def neutral_spec(service: str, port: int) -> dict[str, Any]:
    """What a TraefikService the router made routes to after the release: the target's own
    Service, as with no release. Pure."""
    return {"weighted": {"services": [{"name": service, "port": port, "weight": 1}]}}


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


def header_rule(header: HeaderMatch) -> str:
    """One header condition in Traefik's rule syntax (values never hold a backquote)."""
    if header.exact is not None:
        return f"Header(`{header.name}`, `{header.exact}`)"
    return f"HeaderRegexp(`{header.name}`, `{header.regex}`)"


def match_routes(
    target: TargetRef, port: int, ingress_routes: list[dict[str, Any]], matches: list[RouteMatch]
) -> dict[str, Any] | None:
    """The IngressRoute sending matched requests to the canary, or None without matches.

    Every route that reaches the target's TraefikService is copied once per match, its rule
    ANDed with the match's headers. Pure; LookupError when no route reaches the target.
    """
    if not matches:
        return None
    sources = [
        (body, route)
        for body in ingress_routes
        for route in (body.get("spec") or {}).get("routes") or []
        if any(
            s.get("kind") == "TraefikService" and s.get("name") == target.name
            for s in route.get("services") or []
        )
    ]
    if not sources:
        raise LookupError(
            f"no IngressRoute in {target.namespace} routes to TraefikService {target.name}: "
            "there is no route to add the header match to"
        )
    routes = [
        {
            "kind": "Rule",
            "match": f"({route['match']}) && " + " && ".join(map(header_rule, m.headers)),
            "priority": MATCH_PRIORITY,
            "services": [{"name": track_service(target, "canary"), "port": port}],
        }
        for _, route in sources
        for m in matches
    ]
    spec: dict[str, Any] = {"routes": routes}
    entry_points = [(body.get("spec") or {}).get("entryPoints") for body, _ in sources]
    if all(entry_points):  # a route without entry points listens on all of them
        spec["entryPoints"] = sorted({e for points in entry_points for e in points or []})
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "IngressRoute",
        "metadata": {"name": match_route_name(target), "labels": {MANAGED_BY: target.name}},
        "spec": spec,
    }


class TraefikRouter(WeightedRouter):
    name = "traefik"
    group, version, plural = GROUP, VERSION, PLURAL
    original = ORIGINAL

    def _take_over(self, target: TargetRef, port: int) -> None:
        spec = split_spec(target, port, self._traffic.sticky)
        if self._read(target) is None:
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "TraefikService",
                "metadata": {
                    "name": target.name,
                    "annotations": {ORIGINAL: ""},
                    "labels": {MANAGED_BY: target.name},
                },
                "spec": spec,
            }
            try:
                self._custom().create_namespaced_custom_object(
                    GROUP, VERSION, target.namespace, PLURAL, body
                )
                return
            except client.ApiException as error:
                if error.status != 409:  # made in between: taken over below, or already ours
                    raise

        def taken_over(current: dict[str, Any] | None) -> dict[str, Any] | None:
            if current is None:
                raise LookupError(f"TraefikService {target.key()} was deleted while taken over")
            if self.is_taken_over(current):
                return None
            # Taken over: the release's weights replace the spec, kept to be given back.
            current["metadata"].setdefault("annotations", {})[ORIGINAL] = json.dumps(
                current.get("spec") or {}
            )
            current["spec"] = spec
            return current

        self._update(target, taken_over)

    def _write(self, target: TargetRef, canary_weight_percent: int) -> None:
        self._weigh(target, canary_weight_percent)
        if canary_weight_percent > 0:
            self._ensure_match_route(target)
        else:
            self._delete_match_route(target)

    def _weigh(self, target: TargetRef, canary_weight_percent: int) -> None:
        wanted = weights(target, canary_weight_percent)

        def reweigh(current: dict[str, Any] | None) -> dict[str, Any] | None:
            if current is None:
                raise LookupError(
                    f"TraefikService {target.key()} not found: the traefik router routes "
                    "through a TraefikService named like the target"
                )
            weighted = current.get("spec", {}).get("weighted")
            if canary_weight_percent == 0 and not self.names_tracks(target, current):
                return None  # given back (or never split): no user is on a track through it
            if not isinstance(weighted, dict):
                raise LookupError(f"TraefikService {target.key()} is not of type weighted")
            # The rest of each entry is kept as read.
            weighted["services"] = reweighted(list(weighted.get("services") or []), wanted)
            return current

        self._update(target, reweigh)

    def _ensure_match_route(self, target: TargetRef) -> None:
        if not self._traffic.match:
            return
        custom = self._custom()
        listed = custom.list_namespaced_custom_object(GROUP, VERSION, target.namespace, ROUTES)
        port = next(
            s["port"]
            for s in self._read(target)["spec"]["weighted"]["services"]  # type: ignore[index]
            if s["name"] == track_service(target, "canary")
        )
        body = match_routes(target, port, listed.get("items", []), self._traffic.match)
        assert body is not None
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, target.namespace, ROUTES, body)
        except client.ApiException as error:
            if error.status != 409:
                raise
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, target.namespace, ROUTES, match_route_name(target), body
            )

    def _delete_match_route(self, target: TargetRef) -> None:
        try:
            self._custom().delete_namespaced_custom_object(
                GROUP, VERSION, target.namespace, ROUTES, match_route_name(target)
            )
        except client.ApiException as error:
            if error.status != 404:
                raise

    async def finalize(self, target: TargetRef) -> None:
        """Every user on stable, pinned and matched ones included: the canary's weight to 0."""
        if await asyncio.to_thread(self._read, target) is not None:
            await self.set_routes(target, 0)
        else:
            await asyncio.to_thread(self._delete_match_route, target)

    def _neutral(self, target: TargetRef) -> dict[str, Any]:
        service = self._service or target.name
        own = client.CoreV1Api(self.api).read_namespaced_service(service, target.namespace)
        return neutral_spec(service, int(own.spec.ports[0].port))

    def _give_back(self, target: TargetRef) -> bool:
        self._delete_match_route(target)

        def given_back(current: dict[str, Any] | None) -> dict[str, Any] | None:
            if current is None or not self.is_taken_over(current):
                return None
            original = current["metadata"]["annotations"].pop(ORIGINAL)
            # Kept even when we made it: IngressRoutes may route to it by now, and a route to
            # a missing TraefikService answers 404.
            current["spec"] = json.loads(original) if original else self._neutral(target)
            return current

        return self._update(target, given_back)
