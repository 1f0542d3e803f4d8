"""Replica ratio: the canary's share of traffic is its share of the Ready pods.

The target's own Service selects stable's, the baseline's and the canary's pods alike, so
nothing routes but the pod counts: with 1 canary pod out of 10, a tenth of the requests
reach it. No mesh or gateway is needed, which is why this strategy comes first; its limit is
granularity (a 5 % step needs 20 pods) and a target of one pod cannot be split at all.

What a weight means with a baseline: the canary's share of all the Service's traffic,
exactly as without one. The baseline's pods come out of stable's, not on top, so the
Service keeps its original number of pods: a 10 % step of 10 pods is 1 canary + 1 baseline
+ 8 stable, and the canary gets 10 % while the version users already had serves the other
90 % (stable's 80 % and the baseline's 10 %). Stable keeps at least one pod, so the
baseline is smaller than the canary when the target is too small (50 % of 10 pods: 5
canary, 4 baseline, 1 stable) and absent below 3 pods; the comparison conditions on the
requests each side actually served, so unequal sizes cost power, not validity.
"""

from __future__ import annotations

from canaryflow.runtime.conventions import DeploymentReadiness, split_replicas
from canaryflow.runtime.traffic.base import CannotSplit, ReplicaPlan
from canaryflow_contracts.events import TargetRef


def ready_share(canary_ready: int, others_ready: int) -> float:
    """Percent of Ready pods that are canary pods (0 when none is Ready)."""
    total = canary_ready + others_ready
    return 0.0 if total == 0 else round(100.0 * canary_ready / total, 2)


class ReplicaRatioRouter:
    name = "replica-ratio"

    def replicas(self, full_size: int, weight_percent: int) -> ReplicaPlan:
        try:
            stable, canary = split_replicas(full_size, weight_percent)
        except ValueError as error:
            raise CannotSplit(str(error)) from error
        baseline = min(canary, stable - 1)
        return ReplicaPlan(stable=stable - baseline, canary=canary, baseline=baseline)

    async def reconcile(self, target: TargetRef) -> None:
        """Nothing to make: the target's own Service selects every track's pods."""

    async def set_routes(self, target: TargetRef, canary_weight_percent: int) -> None:
        """Nothing to write: the pod counts are the routes."""

    def verify_weight(
        self,
        stable: DeploymentReadiness,
        canary: DeploymentReadiness,
        baseline: DeploymentReadiness | None = None,
    ) -> float | None:
        others = stable.ready + (baseline.ready if baseline is not None else 0)
        return ready_share(canary.ready, others)

    async def finalize(self, target: TargetRef) -> None:
        """Nothing to write: removing the canary's pods is what returns their share."""

    async def remove(self, target: TargetRef) -> None:
        """Nothing was made."""
