"""Traffic routers, chosen by name; replica ratio is the only one so far.

Why in the common runtime: the executor sets a release's routes forward, and the rollback
service must put all traffic back on stable through the same router before any canary pod
goes (the order Flagger's rollback keeps), so both use this one interface. Adding a router
is one module here and one line in ``ROUTERS``; an unknown name is refused, never defaulted.
"""

from __future__ import annotations

from canaryflow.runtime.traffic.base import CannotSplit, ReplicaPlan, TrafficRouter
from canaryflow.runtime.traffic.replica_ratio import ReplicaRatioRouter

DEFAULT_STRATEGY = ReplicaRatioRouter.name


ROUTERS: dict[str, type[TrafficRouter]] = {ReplicaRatioRouter.name: ReplicaRatioRouter}


def router_for(strategy: str = DEFAULT_STRATEGY) -> TrafficRouter:
    try:
        return ROUTERS[strategy]()
    except KeyError:
        known = ", ".join(sorted(ROUTERS))
        raise ValueError(f"unknown traffic strategy {strategy!r} (known: {known})") from None


__all__ = ["ROUTERS", "CannotSplit", "ReplicaPlan", "TrafficRouter", "router_for"]
