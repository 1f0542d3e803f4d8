"""Traffic strategies, chosen by name; replica ratio is the only one so far."""

from __future__ import annotations

from canaryflow.executor.traffic.base import CannotSplit, ReplicaPlan, TrafficRouter
from canaryflow.executor.traffic.replica_ratio import ReplicaRatioRouter

DEFAULT_STRATEGY = ReplicaRatioRouter.name


def router_for(strategy: str = DEFAULT_STRATEGY) -> TrafficRouter:
    routers: dict[str, type[TrafficRouter]] = {ReplicaRatioRouter.name: ReplicaRatioRouter}
    try:
        return routers[strategy]()
    except KeyError:
        known = ", ".join(sorted(routers))
        raise ValueError(f"unknown traffic strategy {strategy!r} (known: {known})") from None


__all__ = ["CannotSplit", "ReplicaPlan", "TrafficRouter", "router_for"]
