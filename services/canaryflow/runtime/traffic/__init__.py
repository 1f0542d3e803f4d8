"""Traffic routers, chosen by the policy's ``traffic.router``: replica ratio (default),
Traefik and the Gateway API.

Why in the common runtime: the planner checks a policy's router when it admits a release,
the executor sets a release's routes forward, and the rollback service must put all traffic
back on stable through the same router before any canary pod goes (the order Flagger's
rollback keeps), so all three use this one interface. Adding a router is one module here
and one line in ``ROUTERS``; an unknown name, or an option the router cannot honour, is
refused with the reason, never defaulted.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from kubernetes.client import ApiClient

from canaryflow.runtime.traffic.base import CannotSplit, ReplicaPlan, TrafficRouter
from canaryflow.runtime.traffic.gateway_api import GatewayApiRouter
from canaryflow.runtime.traffic.replica_ratio import ReplicaRatioRouter
from canaryflow.runtime.traffic.traefik import TraefikRouter
from canaryflow_contracts.policy import Traffic

Factory = Callable[[ApiClient | None, Traffic, str | None], TrafficRouter]


def _replica_ratio(api: ApiClient | None, traffic: Traffic, service: str | None) -> TrafficRouter:
    if traffic.sticky is not None or traffic.match:
        raise ValueError(
            "the replica-ratio router spreads requests over Ready pods and cannot keep users "
            "sticky or route by header: use the traefik router (or gateway-api for matches)"
        )
    return ReplicaRatioRouter()


ROUTERS: dict[str, Factory] = {
    ReplicaRatioRouter.name: _replica_ratio,
    TraefikRouter.name: TraefikRouter,
    GatewayApiRouter.name: GatewayApiRouter,
}


def router_for(
    traffic: Traffic | None = None,
    api: ApiClient | None = None,
    service: str | None = None,
    enabled: Collection[str] = ROUTERS.keys(),
) -> TrafficRouter:
    """The policy's router, writing through ``api`` (None: only ``replicas``, for checks).

    Raises ValueError, with the reason, for an unknown router, one this installation has not
    enabled (``CANARYFLOW_TRAFFIC_ROUTERS``: it may lack the rights), or an option it cannot
    honour.
    """
    traffic = traffic or Traffic()
    try:
        make = ROUTERS[traffic.router]
    except KeyError:
        known = ", ".join(sorted(ROUTERS))
        raise ValueError(f"unknown traffic router {traffic.router!r} (known: {known})") from None
    if traffic.router not in enabled:
        raise ValueError(
            f"traffic router {traffic.router!r} is not enabled in this installation (enabled: "
            f"{', '.join(sorted(enabled)) or 'none'}; the Helm chart's traffic.routers)"
        )
    return make(api, traffic, service)


def every_router(api: ApiClient, enabled: Collection[str] = ROUTERS.keys()) -> list[TrafficRouter]:
    """One of each enabled router: what a rollback finalizes when the policy that named the
    router is gone or unusable (each router's ``finalize`` and ``remove`` do nothing where it
    made nothing)."""
    return [
        make(api, Traffic(router=name), None) for name, make in ROUTERS.items() if name in enabled
    ]


__all__ = [
    "ROUTERS",
    "CannotSplit",
    "ReplicaPlan",
    "TrafficRouter",
    "every_router",
    "router_for",
]
