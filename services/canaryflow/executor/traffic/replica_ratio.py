"""Replica ratio: the canary's share of traffic is its share of the Ready pods.

The target's own Service selects stable's and the canary's pods alike, so nothing routes
but the pod counts: with 1 canary pod out of 4, a quarter of the requests reach it. No mesh
or gateway is needed, which is why this strategy comes first; its limit is granularity
(a 5 % step needs 20 pods) and a target of one pod cannot be split at all.
"""

from __future__ import annotations

from canaryflow.executor.traffic.base import CannotSplit, ReplicaPlan
from canaryflow.runtime.kube import DeploymentReadiness, split_replicas
from canaryflow_contracts.events import TargetRef


def ready_share(canary_ready: int, stable_ready: int) -> float:
    """Percent of Ready pods that are canary pods (0 when none is Ready)."""
    total = canary_ready + stable_ready
    return 0.0 if total == 0 else round(100.0 * canary_ready / total, 2)


class ReplicaRatioRouter:
    name = "replica-ratio"

    def replicas(self, full_size: int, weight_percent: int) -> ReplicaPlan:
        try:
            stable, canary = split_replicas(full_size, weight_percent)
        except ValueError as error:
            raise CannotSplit(str(error)) from error
        return ReplicaPlan(stable=stable, canary=canary)

    async def set_routes(self, target: TargetRef, canary_weight_percent: int) -> None:
        """Nothing to write: the pod counts are the routes."""

    def verify_weight(
        self, stable: DeploymentReadiness, canary: DeploymentReadiness
    ) -> float | None:
        return ready_share(canary.ready, stable.ready)

    async def finalize(self, target: TargetRef) -> None:
        """Nothing to write: removing the canary's pods is what returns their share."""
