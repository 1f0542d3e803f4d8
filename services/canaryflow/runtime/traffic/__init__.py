"""Traffic routers, chosen by name: the replica ratio (default) and Traefik.

Why in the common runtime: the executor sets a release's routes forward, and the rollback
service must put all traffic back on stable through the same router before any canary pod
goes (the order Flagger's rollback keeps), so both use this one interface. Adding a router
is one module here and one line in ``ROUTERS``; an unknown name is refused, never defaulted.
"""

from __future__ import annotations

from collections.abc import Callable

from kubernetes.client import ApiClient

from canaryflow.runtime.traffic.base import CannotSplit, ReplicaPlan, TrafficRouter
from canaryflow.runtime.traffic.replica_ratio import ReplicaRatioRouter
from canaryflow.runtime.traffic.traefik import TraefikRouter

DEFAULT_STRATEGY = ReplicaRatioRouter.name


def _needs_api(name: str, api: ApiClient | None) -> ApiClient:
    if api is None:
        raise ValueError(f"the {name} router writes routing objects: give it a Kubernetes client")
    return api


ROUTERS: dict[str, Callable[[ApiClient | None], TrafficRouter]] = {
    ReplicaRatioRouter.name: lambda api: ReplicaRatioRouter(),
    TraefikRouter.name: lambda api: TraefikRouter(_needs_api(TraefikRouter.name, api)),
}


def router_for(strategy: str = DEFAULT_STRATEGY, api: ApiClient | None = None) -> TrafficRouter:
    try:
        make = ROUTERS[strategy]
    except KeyError:
        known = ", ".join(sorted(ROUTERS))
        raise ValueError(f"unknown traffic strategy {strategy!r} (known: {known})") from None
    return make(api)


__all__ = ["ROUTERS", "CannotSplit", "ReplicaPlan", "TrafficRouter", "router_for"]
