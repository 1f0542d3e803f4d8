"""Carrying out a restore plan: stable first, then the canary, then the restore point.

Stable is made whole (its recorded template, its recorded size, all Ready) before the
canary loses a pod, so the service's capacity never drops below what it had before the
release. Every step re-reads the API, so a rollback that crashed half way, or runs twice
at once in two replicas, converges on the same result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from kubernetes import client

from canaryflow.rollback.restore import RestorePlan, plan_restore
from canaryflow.runtime import kube
from canaryflow_contracts.events import TargetRef

log = logging.getLogger(__name__)

CANARY_REMOVAL_SECONDS = 60.0


@dataclass(frozen=True)
class Restored:
    stable_replicas: int
    note: str
    changed: bool


class Restorer:
    def __init__(self, api: client.ApiClient, now: kube.Clock = kube.utc_now) -> None:
        self.api = api
        self.now = now

    async def restore(self, release_id: str, target: TargetRef, deadline: datetime) -> Restored:
        """Restore ``target``; raises ``TimeoutError`` if stable is not whole by ``deadline``."""

        def write() -> RestorePlan:
            stable = kube.read_deployment(self.api, target.namespace, target.name)
            canary = kube.read_deployment(self.api, target.namespace, kube.canary_name(target))
            plan = plan_restore(release_id, stable, canary)
            if plan.stable_body is not None:
                kube.replace_deployment(self.api, plan.stable_body)
            return plan

        plan: RestorePlan = await kube.with_conflict_retry(write, f"{target.key()} restore")
        log.info("restoring %s: %s", target.key(), plan.note)
        if plan.wait_for_stable:

            async def read() -> kube.DeploymentReadiness:
                body = await kube.call(
                    kube.read_deployment, self.api, target.namespace, target.name
                )
                return kube.readiness_of(body)

            readiness, whole = await kube.poll_until(
                read,
                lambda r: r.complete and r.desired == plan.full_size,
                deadline=deadline,
                now=self.now,
            )
            if not whole:
                raise TimeoutError(
                    f"stable {target.key()} not complete at {plan.full_size} replicas by "
                    f"{deadline.isoformat()}: {readiness.ready}/{readiness.desired} ready"
                )
        if plan.remove_canary:
            removal_deadline = self.now() + timedelta(seconds=CANARY_REMOVAL_SECONDS)
            gone = await kube.remove_canary(
                self.api, target, release_id, deadline=removal_deadline, now=self.now
            )
            if not gone:
                raise TimeoutError(f"the canary of {target.key()} is still being deleted")
        if plan.clear_restore_point:
            await kube.clear_restore_point(self.api, target, release_id)
        return Restored(plan.full_size, plan.note, plan.changes_something)
