"""Carrying out a restore plan: traffic, configuration, stable, the canary, then the records.

Traffic goes back first: the router the release routed with sends every user to stable
(pinned and header-matched ones included) before anything else changes, so no new request
reaches the failing version and none fails because a canary pod went away under it; the
router's own objects go only after the canary is gone.
The release bundle's ConfigMaps and Secrets are put back first, so that stable's restored
pods start on the recorded configuration. Stable is then made whole (its recorded template,
its recorded size, all Ready) before the canary loses a pod, so the service's capacity never
drops below what it had before the release; only then do the HPA's own bounds come back,
the canary go, its ConfigMap copies go, and the records (restore point, bundle) go. Every
step re-reads the API, so a rollback that crashed half way, or runs twice at once in two
replicas, converges on the same result.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from kubernetes import client

from canaryflow.rollback.restore import RestorePlan, plan_restore
from canaryflow.runtime import bundle as bundles
from canaryflow.runtime import conventions, deployment_watch, kube, objects
from canaryflow.runtime.baseline import remove_baseline
from canaryflow.runtime.bundle import Bundle
from canaryflow.runtime.conventions import baseline_name
from canaryflow.runtime.deployment_watch import DeploymentWatch
from canaryflow.runtime.traffic import TrafficRouter
from canaryflow_contracts.events import TargetRef

log = logging.getLogger(__name__)

CANARY_REMOVAL_SECONDS = 60.0
RESTORE_POLL_SECONDS = 0.1
WATCHED_RESTORE_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Restored:
    stable_replicas: int
    note: str
    changed: bool
    traffic_back_at: datetime | None = None
    """When this attempt saw stable whole and the canary gone, if it brought traffic back.

    None when it found traffic already back (an earlier attempt, perhaps killed before it
    could say so, did that part): only the attempt that did it knows when it happened.
    """


class Restorer:
    def __init__(
        self,
        api: client.ApiClient,
        now: kube.Clock = kube.utc_now,
        *,
        prescale: bool = True,
        watch: DeploymentWatch | None = None,
    ) -> None:
        self.api = api
        self.now = now
        # Stable's wait looks at this copy when it changes, not at the API every 0.1 s.
        self.watch = watch
        # False only to measure the alternative: the canary goes at once (a "snap-back").
        self.prescale = prescale

    async def _owns_target(self, target: TargetRef, release_id: str) -> bool:
        """No other release's restore point on stable: this release's routes may be undone."""
        stable = await kube.call(kube.read_deployment, self.api, target.namespace, target.name)
        point = conventions.restore_point_of(stable) if stable is not None else None
        return point is None or point.release_id in ("", release_id)

    async def _bundle(self, target: TargetRef, release_id: str) -> Bundle | None:
        """This release's bundle, if stable still carries this release's restore point."""
        stable = await kube.call(kube.read_deployment, self.api, target.namespace, target.name)
        point = conventions.restore_point_of(stable) if stable is not None else None
        if point is None or point.release_id not in ("", release_id):
            return None
        found = await kube.call(objects.read_bundle, self.api, target)
        return found if found is not None and found.release_id == release_id else None

    async def restore(
        self,
        release_id: str,
        target: TargetRef,
        deadline: datetime,
        routers: Sequence[TrafficRouter] = (),
    ) -> Restored:
        """Restore ``target``; raises ``TimeoutError`` if stable is not whole by ``deadline``.

        ``routers``: the one the release routed with (or every one, when unknown).
        """
        namespace = target.namespace
        ours = await self._owns_target(target, release_id)
        if ours:
            for router in routers:
                await router.finalize(target)
        bundle = await self._bundle(target, release_id)
        restored: list[str] = []
        if bundle is not None:
            restored += await kube.with_conflict_retry(
                lambda: objects.restore_configuration(self.api, namespace, bundle),
                f"{target.key()} configuration",
            )

        def write() -> RestorePlan:
            stable = kube.read_deployment(self.api, target.namespace, target.name)
            canary = kube.read_deployment(
                self.api, target.namespace, conventions.canary_name(target)
            )
            baseline = kube.read_deployment(self.api, target.namespace, baseline_name(target))
            plan = plan_restore(release_id, stable, canary, baseline)
            if plan.stable_body is not None:
                kube.replace_deployment(self.api, plan.stable_body)
            return plan

        plan: RestorePlan = await kube.with_conflict_retry(write, f"{target.key()} restore")
        log.info("restoring %s: %s", target.key(), plan.note)
        if not self.prescale and plan.remove_canary:
            await self._remove_canary(target, release_id)
        if plan.wait_for_stable:

            async def read() -> conventions.DeploymentReadiness:
                body = await deployment_watch.seen(
                    self.watch, self.api, target.namespace, target.name
                )
                return conventions.readiness_of(body)

            readiness, whole = await deployment_watch.poll_until(
                self.watch,
                target.namespace,
                read,
                lambda r: r.complete and r.desired == plan.full_size,
                deadline=deadline,
                now=self.now,
                # Users wait on this one: every tenth of a second counts. Watched, a change
                # ends the sleep at once and the copy costs no request.
                interval=lambda: RESTORE_POLL_SECONDS,
                watched_interval=WATCHED_RESTORE_POLL_SECONDS,
            )
            if not whole:
                raise TimeoutError(
                    f"stable {target.key()} not complete at {plan.full_size} replicas by "
                    f"{deadline.isoformat()}: {readiness.ready}/{readiness.desired} ready"
                )
        if bundle is not None:
            restored += await kube.with_conflict_retry(
                lambda: objects.restore_scaling(self.api, namespace, bundle),
                f"{target.key()} scaling",
            )
        if plan.remove_canary:
            await self._remove_canary(target, release_id)
        # Every user is on stable by now (finalized routes, no canary pod): giving the routes
        # back may still wait for the target's Service to settle, which users do not see.
        traffic_back_at = self.now() if plan.changes_something else None
        if ours:
            for router in routers:
                await router.remove(target)
        # The canary's configuration goes with it, unless stable names it (a promoted release).
        stable = await kube.call(kube.read_deployment, self.api, namespace, target.name)
        keep = bundles.references(stable["spec"]["template"]).config_maps if stable else set()
        deleted = await kube.call(
            objects.delete_release_copies, self.api, namespace, release_id, keep
        )
        if plan.clear_restore_point:
            await kube.clear_restore_point(self.api, target, release_id)
        await kube.call(objects.clear_bundle, self.api, target, release_id)
        note = plan.note
        if restored or deleted:
            note += "; " + ", ".join([*restored, *(f"deleted ConfigMap {n}" for n in deleted)])
        changed = plan.changes_something or bool(restored or deleted)
        return Restored(plan.full_size, note, changed, traffic_back_at)

    async def leftovers(self, release_id: str, target: TargetRef) -> list[str]:
        """What ``release_id`` still has on the cluster, for the person who takes over.

        Best effort: a read that fails (the same RBAC that stopped the restore, say) is named
        with its error instead of its result.
        """
        ns = target.namespace
        found: list[str] = []

        def deployment(name: str, ours: bool) -> None:
            body = kube.read_deployment(self.api, ns, name)
            if body is None or (ours and conventions.release_of(body) not in (None, release_id)):
                return
            size = (body.get("spec") or {}).get("replicas")
            if not ours:
                point = conventions.restore_point_of(body)
                if point is not None and point.release_id in ("", release_id):
                    found.append(
                        f"Deployment {ns}/{name} still carries the restore point "
                        f"({point.replicas} replicas recorded, {size} now)"
                    )
                return
            found.append(f"Deployment {ns}/{name} ({size} replicas)")

        def inspect() -> None:
            deployment(conventions.canary_name(target), ours=True)
            deployment(baseline_name(target), ours=True)
            deployment(target.name, ours=False)
            bundle = objects.read_bundle(self.api, target)
            if bundle is not None and bundle.release_id == release_id:
                found.append(f"the release bundle of {target.key()} (recorded configuration)")
            found.extend(
                f"ConfigMap {ns}/{name} (the canary's copy)"
                for name in objects.release_copies(self.api, ns, release_id)
            )

        try:
            await asyncio.to_thread(inspect)
        except Exception as error:  # reported, never raised: we are giving up anyway
            found.append(f"not fully inspected: {type(error).__name__}: {error}"[:300])
        return found

    async def _remove_canary(self, target: TargetRef, release_id: str) -> None:
        """The canary and the live baseline together: the analysis is over either way."""
        removal_deadline = self.now() + timedelta(seconds=CANARY_REMOVAL_SECONDS)
        canary_gone, baseline_gone = await asyncio.gather(
            kube.remove_canary(
                self.api, target, release_id, deadline=removal_deadline, now=self.now
            ),
            remove_baseline(self.api, target, release_id, deadline=removal_deadline, now=self.now),
        )
        if not (canary_gone and baseline_gone):
            raise TimeoutError(f"the canary or baseline of {target.key()} is still being deleted")


def restore_seconds_of(restored: Restored, triggered_at: datetime, now: datetime) -> float:
    """Seconds from the trigger to traffic fully back on stable.

    Measured at the moment this attempt saw it happen, not when the attempt ended or was
    handed the message: a redelivery after a killed attempt must not add its wait to a
    restore that was already complete. When this attempt found traffic already back, ``now``
    is only an upper bound (the caller does not observe it as a restore time).
    """
    back = restored.traffic_back_at or now
    return max((back - triggered_at).total_seconds(), 0.0)
