"""Gateway API: the canary's share is a backendRef weight on the target's HTTPRoute.

Why: it is the routing API every gateway implements, so one router serves many data planes.
The HTTPRoute named like the target (a person's: parents, hostnames, paths) is taken over
for the release: its rules are kept in an annotation, and while the release runs every rule
sends ``w`` to ``<target>-canary``, as much to ``<target>-baseline`` (less above 33 %, see
weighted.py) and the rest to ``<target>-stable``; each header match
adds a copy of every rule with the headers added to its matches, sent to the canary alone
(the Gateway API's precedence puts a match with more headers first). ``remove`` gives the
original rules back.

No sticky sessions: the implementation we run (Traefik 3.6, Gateway API v1.4.0) has no
session persistence and ignores backendRef filters, so a policy asking for sticky users with
this router is refused with that reason rather than silently served without.
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

from kubernetes import client

from canaryflow.runtime.traffic.services import track_service_name
from canaryflow.runtime.traffic.weighted import WeightedRouter, track_weights
from canaryflow_contracts.events import TargetRef
from canaryflow_contracts.policy import RouteMatch, Traffic

GROUP, VERSION, PLURAL = "gateway.networking.k8s.io", "v1", "httproutes"
ORIGINAL = "canaryflow.io/original-rules"
PORT = "canaryflow.io/backend-port"
NO_STICKY = (
    "the gateway-api router cannot keep users sticky: Traefik 3.6's Gateway API provider has "
    "no session persistence and ignores backendRef filters; use the traefik router for "
    "sticky sessions, or drop traffic.sticky"
)


def header_matches(match: RouteMatch) -> list[dict[str, str]]:
    return [
        {"type": "Exact", "name": h.name, "value": h.exact}
        if h.exact is not None
        else {"type": "RegularExpression", "name": h.name, "value": str(h.regex)}
        for h in match.headers
    ]


def split_rules(
    original: list[dict[str, Any]],
    target: TargetRef,
    port: int,
    canary_weight_percent: int,
    matches: list[RouteMatch],
) -> list[dict[str, Any]]:
    """The HTTPRoute's rules at a canary weight, header matches first. Pure."""
    shares = track_weights(canary_weight_percent)
    canary = track_service_name(target, "canary")
    rules: list[dict[str, Any]] = []
    for rule in original:
        if canary_weight_percent > 0:
            for match in matches:
                extra = header_matches(match)
                rules.append(
                    {
                        **copy.deepcopy(rule),
                        "matches": [
                            {**m, "headers": [*(m.get("headers") or []), *extra]}
                            for m in rule.get("matches") or [{}]
                        ],
                        "backendRefs": [{"name": canary, "port": port, "weight": 1}],
                    }
                )
        rules.append(
            {
                **copy.deepcopy(rule),
                "backendRefs": [
                    {"name": track_service_name(target, track), "port": port, "weight": share}
                    for track, share in shares.items()
                ],
            }
        )
    return rules


class GatewayApiRouter(WeightedRouter):
    name = "gateway-api"
    group, version, plural = GROUP, VERSION, PLURAL
    original = ORIGINAL

    def __init__(
        self, api: client.ApiClient | None, traffic: Traffic, service: str | None = None
    ) -> None:
        if traffic.sticky is not None:
            raise ValueError(NO_STICKY)
        super().__init__(api, traffic, service)

    def _check(self, target: TargetRef) -> None:
        if self._read(target) is None:
            raise LookupError(
                f"HTTPRoute {target.key()} not found: the gateway-api router routes through "
                "the HTTPRoute named like the target"
            )

    def _take_over(self, target: TargetRef, port: int) -> None:
        def taken_over(route: dict[str, Any] | None) -> dict[str, Any] | None:
            if route is None:
                self._check(target)  # raises: the HTTPRoute is gone
                return None
            if self.is_taken_over(route):
                return None
            annotations = route["metadata"].setdefault("annotations", {})
            original = route["spec"].get("rules") or []
            annotations[ORIGINAL] = json.dumps(original)
            annotations[PORT] = str(port)
            route["spec"]["rules"] = split_rules(original, target, port, 0, self._traffic.match)
            return route

        self._update(target, taken_over)

    def _write(self, target: TargetRef, canary_weight_percent: int) -> None:
        def split(route: dict[str, Any] | None) -> dict[str, Any] | None:
            if route is None or not self.is_taken_over(route):
                if route is not None and canary_weight_percent == 0:
                    return None  # given back: every request is on the route's own backends
                raise LookupError(f"HTTPRoute {target.key()} is not taken over for a release")
            annotations = route["metadata"]["annotations"]
            route["spec"]["rules"] = split_rules(
                json.loads(annotations[ORIGINAL]),
                target,
                int(annotations[PORT]),
                canary_weight_percent,
                self._traffic.match,
            )
            return route

        self._update(target, split)

    async def finalize(self, target: TargetRef) -> None:
        """Every request on stable, matched ones included."""
        if await asyncio.to_thread(self._taken_over, target):
            await self.set_routes(target, 0)

    def _give_back(self, target: TargetRef) -> bool:
        def given_back(route: dict[str, Any] | None) -> dict[str, Any] | None:
            if route is None or not self.is_taken_over(route):
                return None
            annotations = route["metadata"]["annotations"]
            route["spec"]["rules"] = json.loads(annotations.pop(ORIGINAL))
            annotations.pop(PORT, None)
            return route

        return self._update(target, given_back)
