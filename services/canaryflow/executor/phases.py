"""Putting a step in place, and promoting, as sequences of idempotent writes and API waits.

The order is what keeps users safe: the canary is scaled up and Ready before stable gives
up a pod, so capacity never dips; a step is reported only when the API shows both
Deployments complete on the right image. Each wait re-reads the API (and the release's
state, so a rollback that started meanwhile stops us) every ``POLL_SECONDS``, up to the
step's deadline. A replay runs the same sequence and finds every write already done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from kubernetes.client.exceptions import ApiException

from canaryflow.executor import decisions
from canaryflow.executor.cluster import Cluster, image_of
from canaryflow.executor.workload import WorkloadError, full_size, record_restore_point
from canaryflow.runtime import conventions, deployment_watch, kube
from canaryflow.runtime.conventions import DeploymentReadiness, baseline_name
from canaryflow.runtime.traffic import CannotSplit, ReplicaPlan, TrafficRouter
from canaryflow_contracts.events import ApplyPhase, RequestPromotion, TargetRef, VersionSpec

log = logging.getLogger(__name__)

# A deleted canary whose pods are still terminating after this long is retried, not waited on.
CANARY_REMOVAL_SECONDS = 60.0

Wanted = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class Reached:
    canary_ready: int
    stable_ready: int
    weight: float
    baseline_ready: int = 0


@dataclass(frozen=True)
class Promoted:
    image: str
    replicas: int


@dataclass(frozen=True)
class Failed:
    reason: str


@dataclass(frozen=True)
class Superseded:
    """The release moved on (another step, a rollback, the end): nothing to report."""

    reason: str


# A step's wait settles at one read every 2 s (the first come after 0.1, 0.2, 0.4... s): each
# read is three Deployments and the release's state, and at 200 releases at once the steps'
# reads every 0.5 s were the API server's first load (bench/scale.py). A rollback's wait, in
# the rollback service, keeps kube.POLL_SECONDS: its seconds are users on a bad version.
STEP_POLL_SECONDS = 2.0
# Deployments the waits of one replica read per second, all together: beyond
# READS_PER_SECOND / 3 waits, each reads less often. At 1,000 steps at once, a read of each
# every 2 s was 1,500 GETs a second, more than the API server on the bench's 2 cores answers.
READS_PER_SECOND = 150.0
READS_PER_POLL = 3  # stable, canary, baseline


def step_poll_seconds(waiting: int) -> float:
    """How long a step's wait sleeps between reads when ``waiting`` waits share the budget."""
    return max(STEP_POLL_SECONDS, waiting * READS_PER_POLL / READS_PER_SECOND)


PhaseOutcome = Reached | Failed | Superseded
PromotionOutcome = Promoted | Failed | Superseded


@dataclass(frozen=True)
class Snapshot:
    stable: DeploymentReadiness
    canary: DeploymentReadiness
    stable_image: str
    canary_image: str
    wanted: bool
    baseline: DeploymentReadiness = field(default_factory=lambda: conventions.readiness_of(None))


class PhaseRunner:
    def __init__(self, cluster: Cluster, now: kube.Clock) -> None:
        self.cluster = cluster
        self.now = now
        self.waiting = 0  # steps and promotions waiting for the cluster right now

    async def _snapshot(
        self, target: TargetRef, version: VersionSpec, wanted: Wanted, owner: str | None
    ) -> Snapshot:
        namespace = target.namespace
        stable = await self.cluster.seen(namespace, target.name)
        canary = await self.cluster.seen(namespace, conventions.canary_name(target))
        baseline = await self.cluster.seen(namespace, baseline_name(target))
        still_wanted = await wanted()
        if owner is not None:
            # Without a planner to say "rolling back", a restore point that is gone (or now
            # another release's) is how we learn that the rollback service took over.
            still_wanted = still_wanted and decisions.restore_owner(stable) == owner
        return Snapshot(
            stable=conventions.readiness_of(stable),
            canary=conventions.readiness_of(canary),
            stable_image=image_of(stable, version.container),
            canary_image=image_of(canary, version.container),
            wanted=still_wanted,
            baseline=conventions.readiness_of(baseline),
        )

    async def _wait(
        self,
        command: ApplyPhase | RequestPromotion,
        what: str,
        done: Callable[[Snapshot], bool],
        *,
        deadline: datetime,
        wanted: Wanted,
        owner: str | None = None,
    ) -> Snapshot | Failed | Superseded:
        """The snapshot in which ``done`` holds, or why it never came to hold.

        With ``owner``, the wait also ends (superseded) once stable no longer carries that
        release's restore point.
        """

        async def read() -> Snapshot:
            return await self._snapshot(command.target, command.version, wanted, owner)

        self.waiting += 1
        try:
            snapshot, ok = await deployment_watch.poll_until(
                self.cluster.watch,
                command.target.namespace,
                read,
                lambda s: not s.wanted or done(s),
                deadline=deadline,
                now=self.now,
                interval=lambda: step_poll_seconds(self.waiting),
                watched_interval=STEP_POLL_SECONDS,
            )
        finally:
            self.waiting -= 1
        if not snapshot.wanted:
            return Superseded(f"the release moved on while waiting for {what}")
        if not ok:
            return Failed(
                decisions.deadline_reason(what, deadline, snapshot.stable, snapshot.canary)
            )
        return snapshot

    async def apply(
        self,
        release_id: str,
        command: ApplyPhase,
        deadline: datetime,
        wanted: Wanted,
        router: TrafficRouter,
    ) -> PhaseOutcome:
        """Put the step in place through ``router``, the one the target's policy names, by
        ``deadline`` (``decisions.step_deadline``)."""
        target, version = command.target, command.version
        if not await wanted():
            return Superseded(f"step {command.step.index} is no longer the release's current step")
        try:
            stable = await self.cluster.stable(target)
            if stable is None:
                return Failed(f"Deployment {target.key()} not found")
            if conventions.rolling_back(stable):
                return Superseded("the rollback service has taken stable over")
            # Decide the split before writing anything: a target that cannot be split is
            # refused without a restore point or a canary to clean up.
            planned = record_restore_point(stable, release_id).point
            router.replicas(planned.replicas, command.step.weight)
            # The bundle first: the restore point on stable marks the recording complete.
            bundle = await self.cluster.record_bundle(target, release_id)
            recording = await self.cluster.record_restore_point(target, release_id)
            # What the routes go through (per-track Services, the router's objects), with
            # the canary at weight 0 until its pods are Ready.
            await router.reconcile(target)
            await self.cluster.hold_autoscaler(target, bundle)
            renames = await self.cluster.config_copies(target, version, release_id)
            plan = router.replicas(recording.point.replicas, command.step.weight)
            if plan.stable > full_size(stable):
                # The canary shrinks (an operator lowered its weight): stable takes the share
                # first, so no pod leaves the canary before its replacement serves.
                moved = await self._stable_first(command, release_id, plan.stable, deadline, wanted)
                if moved is not None:
                    return moved
            await self.cluster.apply_canary(
                target, _as_canary(version, command), release_id, plan.canary, renames
            )
            await self.cluster.apply_baseline(target, release_id, plan.baseline)
        except (LookupError, CannotSplit, WorkloadError, conventions.CorruptRestorePoint) as error:
            return Failed(str(error))
        except ApiException as error:
            return Failed(
                f"{router.name} router: the API server answered {error.status} "
                f"{error.reason}: {error.body}"
            )

        def canary_ready(s: Snapshot) -> bool:
            return decisions.in_place(
                s.canary, plan.canary, s.canary_image, version.image
            ) and decisions.baseline_in_place(s.baseline, plan.baseline)

        # Canary and live baseline first: stable gives up no pod before theirs are Ready.
        waited = await self._wait(
            command,
            "canary pods",
            canary_ready,
            deadline=deadline,
            wanted=wanted,
            owner=release_id,
        )
        if not isinstance(waited, Snapshot):
            return waited
        if not await self.cluster.scale_stable(target, release_id, plan.stable):
            return Superseded("stable no longer carries this release's restore point")
        try:
            await router.set_routes(target, command.step.weight)
        except LookupError as error:  # e.g. the canary's Service never got an endpoint
            return Failed(str(error))
        waited = await self._wait(
            command,
            f"step {command.step.index} ({plan.canary} canary / {plan.baseline} baseline / "
            f"{plan.stable} stable pods)",
            lambda s: canary_ready(s) and _stable_at(s, plan),
            deadline=deadline,
            wanted=wanted,
            owner=release_id,
        )
        if not isinstance(waited, Snapshot):
            return waited
        snapshot = waited
        weight = router.verify_weight(snapshot.stable, snapshot.canary, snapshot.baseline)
        return Reached(
            canary_ready=snapshot.canary.ready,
            stable_ready=snapshot.stable.ready,
            weight=weight if weight is not None else float(command.step.weight),
            baseline_ready=snapshot.baseline.ready,
        )

    async def _stable_first(
        self,
        command: ApplyPhase,
        release_id: str,
        replicas: int,
        deadline: datetime,
        wanted: Wanted,
    ) -> Failed | Superseded | None:
        """Scale stable up to ``replicas`` and wait until all of them are Ready."""
        if not await self.cluster.scale_stable(command.target, release_id, replicas):
            return Superseded("stable no longer carries this release's restore point")
        waited = await self._wait(
            command,
            f"stable at {replicas} pods",
            lambda s: s.stable.complete and s.stable.desired == replicas,
            deadline=deadline,
            wanted=wanted,
            owner=release_id,
        )
        return None if isinstance(waited, Snapshot) else waited

    async def promote(
        self,
        release_id: str,
        command: RequestPromotion,
        deadline: datetime,
        wanted: Wanted,
        router: TrafficRouter,
    ) -> PromotionOutcome:
        target, version = command.target, command.version
        if not await wanted():
            return Superseded("the release is rolling back or over")
        stable = await self.cluster.stable(target)
        if stable is None:
            return Failed(f"Deployment {target.key()} not found")
        try:
            point = conventions.restore_point_of(stable)
        except conventions.CorruptRestorePoint as error:
            return Failed(str(error))
        if point is not None and point.release_id != release_id:
            return Superseded(f"stable carries the restore point of release {point.release_id}")
        size = point.replicas if point is not None else await self._size_without_point(target)
        log.info("promoting %s to %s at %d replicas", target.key(), version.image, size)
        try:
            renames = await self.cluster.config_copies(target, version, release_id)
            await self.cluster.promote_stable(target, version, size, renames)
        except (LookupError, WorkloadError) as error:
            return Failed(str(error))

        def promoted(s: Snapshot) -> bool:
            return decisions.in_place(s.stable, size, s.stable_image, version.image)

        waited = await self._wait(command, "promotion", promoted, deadline=deadline, wanted=wanted)
        if not isinstance(waited, Snapshot):
            return waited
        await router.finalize(target)
        removal_deadline = self.now() + timedelta(seconds=CANARY_REMOVAL_SECONDS)
        # The analysis is over: canary and baseline go together.
        canary_gone, baseline_gone = await asyncio.gather(
            self.cluster.remove_canary(target, release_id, removal_deadline),
            self.cluster.remove_baseline(target, release_id, removal_deadline),
        )
        if not (canary_gone and baseline_gone):
            raise TimeoutError(
                f"the canary or baseline of {target.key()} is still there after promotion"
            )
        await router.remove(target)
        await self.cluster.finish_promotion(target, version, release_id)
        await self.cluster.clear_restore_point(target, release_id)
        await self.cluster.clear_bundle(target, release_id)
        return Promoted(image=version.image, replicas=size)

    async def _size_without_point(self, target: TargetRef) -> int:
        """Full size when nothing was recorded: what stable and the canary run together."""
        stable = await self.cluster.stable(target)
        canary = await self.cluster.canary(target)
        total = (full_size(stable) if stable else 0) + (full_size(canary) if canary else 0)
        return max(total, 1)


def _as_canary(version: VersionSpec, command: ApplyPhase) -> VersionSpec:
    """The version as the canary runs it: with the policy's canary resources, if it sets any."""
    if command.canary_resources is None:
        return version
    return version.model_copy(update={"resources": command.canary_resources})


def _stable_at(snapshot: Snapshot, plan: ReplicaPlan) -> bool:
    # Stable keeps its own image during the steps; only its size and readiness matter.
    return snapshot.stable.complete and snapshot.stable.desired == plan.stable
