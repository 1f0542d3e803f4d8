"""The one interface the executor and the rollback see of a traffic router (Flagger's, made small).

A strategy answers three questions: how many pods each version needs at a weight, how to
send that share of traffic to the canary, and how much the canary really gets. Replica
ratio answers the second with "nothing to do" (the Service spreads over Ready pods), a
weighted router (Traefik, Gateway API) writes a route. Its life follows the release's:
``reconcile`` makes what it routes through (per-track Services, its routing objects) before
the first step, ``set_routes`` moves the weight at each step, ``finalize`` puts every user on
stable before any canary pod goes, and ``remove`` deletes what ``reconcile`` made once the
canary is gone. The executor's phase logic stays the same for every strategy; adding one
adds a module and a line in the factory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from canaryflow.runtime.conventions import DeploymentReadiness
from canaryflow_contracts.events import TargetRef


@dataclass(frozen=True)
class ReplicaPlan:
    """Replica counts for one step: canary and baseline are scaled (and Ready) first.

    The baseline runs the stable version on as many fresh pods as the canary (fewer only
    when the target is too small to keep a stable pod besides), so that the two are judged
    side by side under the same conditions.
    """

    stable: int
    canary: int
    baseline: int = 0


class CannotSplit(ValueError):
    """This target cannot be given this weight with this strategy (e.g. a single replica)."""


class TrafficRouter(Protocol):
    name: str

    def replicas(self, full_size: int, weight_percent: int) -> ReplicaPlan:
        """Pods each version runs at this weight; raises ``CannotSplit``. No I/O."""
        ...

    async def reconcile(self, target: TargetRef) -> None:
        """Make what the routes need (idempotent), with the canary at weight 0."""
        ...

    async def set_routes(self, target: TargetRef, canary_weight_percent: int) -> None:
        """Send this share of the target's traffic to the canary (its pods are Ready)."""
        ...

    def verify_weight(
        self,
        stable: DeploymentReadiness,
        canary: DeploymentReadiness,
        baseline: DeploymentReadiness | None = None,
    ) -> float | None:
        """The share the canary really receives now, or None when the router cannot tell."""
        ...

    async def finalize(self, target: TargetRef) -> None:
        """Send all traffic to stable's pods again (before the canary is removed)."""
        ...

    async def remove(self, target: TargetRef) -> None:
        """Delete what ``reconcile`` made (after the canary is removed); idempotent."""
        ...
