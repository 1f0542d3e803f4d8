"""The executor's writes to the cluster: each one reads, decides with a pure function, writes.

Every write is safe to repeat: it is computed from what the API shows now, is skipped when
the object already says it, and carries the resourceVersion it read, so a concurrent writer
turns it into a 409 that ``with_conflict_retry`` answers by reading and deciding again.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from kubernetes import client

from canaryflow.executor import workload
from canaryflow.executor.workload import Body, Recording
from canaryflow.runtime import conventions, deployment_watch, kube, objects
from canaryflow.runtime.baseline import remove_baseline
from canaryflow.runtime.bundle import Bundle
from canaryflow.runtime.conventions import baseline_name
from canaryflow.runtime.deployment_watch import DeploymentWatch
from canaryflow_contracts.events import TargetRef, VersionSpec

log = logging.getLogger(__name__)


class CanaryRecreating(RuntimeError):
    """The old canary had another selector and is being deleted; the next attempt makes it."""


class Cluster:
    def __init__(
        self,
        api: client.ApiClient,
        now: kube.Clock = kube.utc_now,
        watch: DeploymentWatch | None = None,
    ) -> None:
        self.api = api
        self.now = now
        self.watch = watch

    async def read(self, namespace: str, name: str) -> Body | None:
        return await kube.call(kube.read_deployment, self.api, namespace, name)

    async def seen(self, namespace: str, name: str) -> Body | None:
        return await deployment_watch.seen(self.watch, self.api, namespace, name)

    async def stable(self, target: TargetRef) -> Body | None:
        return await self.read(target.namespace, target.name)

    async def canary(self, target: TargetRef) -> Body | None:
        return await self.read(target.namespace, conventions.canary_name(target))

    async def baseline(self, target: TargetRef) -> Body | None:
        return await self.read(target.namespace, baseline_name(target))

    async def record_restore_point(self, target: TargetRef, release_id: str) -> Recording:
        """Write the restore point on stable unless it is there; returns the one in force."""

        def write() -> Recording:
            stable = kube.read_target(self.api, target)
            recording = workload.record_restore_point(stable, release_id)
            if recording.body is not None:
                kube.replace_deployment(self.api, recording.body)
            return recording

        recording: Recording = await kube.with_conflict_retry(write, f"{target.key()} restore")
        if recording.adopted_from:
            log.warning(
                "kept the restore point left by release %s on %s",
                recording.adopted_from,
                target.key(),
            )
        return recording

    async def record_bundle(self, target: TargetRef, release_id: str) -> Bundle:
        """Record everything the release may change, before it changes anything."""
        recorded: Bundle = await kube.with_conflict_retry(
            lambda: objects.record_bundle(self.api, target, release_id), f"{target.key()} bundle"
        )
        return recorded

    async def hold_autoscaler(self, target: TargetRef, bundle: Bundle) -> None:
        await kube.with_conflict_retry(
            lambda: objects.hold_autoscaler(self.api, target.namespace, bundle),
            f"{target.key()} autoscaler hold",
        )

    async def config_copies(
        self, target: TargetRef, version: VersionSpec, release_id: str
    ) -> dict[str, str]:
        """The canary's versioned ConfigMaps, made if missing: {stable's name: copy's name}."""

        def write() -> dict[str, str]:
            stable = kube.read_target(self.api, target)
            return objects.ensure_config_copies(
                self.api, target, stable, version.config_maps, release_id
            )

        renames: dict[str, str] = await kube.with_conflict_retry(
            write, f"{target.key()} configuration copies"
        )
        return renames

    async def finish_promotion(
        self, target: TargetRef, version: VersionSpec, release_id: str
    ) -> None:
        """After promotion: the HPA's own spec back, superseded copies gone, the bundle gone."""
        bundle = await kube.call(objects.read_bundle, self.api, target)
        if bundle is not None and bundle.release_id == release_id:
            restored = await kube.with_conflict_retry(
                lambda: objects.restore_scaling(self.api, target.namespace, bundle),
                f"{target.key()} autoscaler",
            )
            if restored:
                log.info("promotion of %s: restored %s", target.key(), ", ".join(restored))
        stable = await self.stable(target)
        if stable is not None and version.config_maps:
            deleted = await kube.call(
                objects.delete_superseded_copies,
                self.api,
                target.namespace,
                [change.name for change in version.config_maps],
                stable["spec"]["template"],
            )
            if deleted:
                log.info("deleted superseded configuration: %s", ", ".join(deleted))

    async def clear_bundle(self, target: TargetRef, release_id: str) -> None:
        await kube.call(objects.clear_bundle, self.api, target, release_id)

    async def apply_canary(
        self,
        target: TargetRef,
        version: VersionSpec,
        release_id: str,
        replicas: int,
        renames: dict[str, str] | None = None,
    ) -> None:
        """Create the canary, or bring the existing one to the wanted spec and size."""

        def write() -> None:
            stable = kube.read_target(self.api, target)
            desired = workload.canary_body(
                stable, target, version, release_id, replicas, renames=renames
            )
            existing = kube.read_deployment(
                self.api, target.namespace, conventions.canary_name(target)
            )
            _converge(self.api, desired, existing, f"canary of {target.key()}")

        await kube.with_conflict_retry(write, f"{conventions.canary_name(target)} canary")

    async def apply_baseline(self, target: TargetRef, release_id: str, replicas: int) -> None:
        """Run the recorded stable version on ``replicas`` fresh pods (none: leave it absent)."""

        def write() -> None:
            stable = kube.read_target(self.api, target)
            point = conventions.restore_point_of(stable)
            template = point.template if point is not None else stable["spec"]["template"]
            existing = kube.read_deployment(self.api, target.namespace, baseline_name(target))
            if existing is None and replicas == 0:
                return
            desired = workload.baseline_body(stable, template, target, release_id, replicas)
            _converge(self.api, desired, existing, f"baseline of {target.key()}")

        await kube.with_conflict_retry(write, f"{baseline_name(target)} baseline")

    async def scale_stable(self, target: TargetRef, release_id: str, replicas: int) -> bool:
        """Scale stable for a step, only while it carries this release's restore point.

        False (and no write) once the point is gone or the rollback service has marked stable
        as its own: a rollback restored stable meanwhile, and scaling it down again would undo
        that. The patch names the resourceVersion it checked, so a rollback writing in between
        turns it into a 409 and a fresh check.
        """

        def write() -> bool:
            stable = kube.read_target(self.api, target)
            point = conventions.restore_point_of(stable)
            if point is None or point.release_id != release_id or conventions.rolling_back(stable):
                return False
            if workload.full_size(stable) != replicas:
                patch = {
                    "metadata": {"resourceVersion": stable["metadata"]["resourceVersion"]},
                    "spec": {"replicas": replicas},
                }
                kube.patch_deployment(self.api, target.namespace, target.name, patch)
            return True

        scaled: bool = await kube.with_conflict_retry(write, f"{target.key()} scale")
        return scaled

    async def promote_stable(
        self,
        target: TargetRef,
        version: VersionSpec,
        replicas: int,
        renames: dict[str, str] | None = None,
    ) -> None:
        def write() -> None:
            stable = kube.read_target(self.api, target)
            body = workload.promoted_stable(stable, version, replicas, renames)
            if body is not None:
                kube.replace_deployment(self.api, body)

        await kube.with_conflict_retry(write, f"{target.key()} promotion")

    async def remove_canary(self, target: TargetRef, release_id: str, deadline: datetime) -> bool:
        return await kube.remove_canary(
            self.api, target, release_id, deadline=deadline, now=self.now
        )

    async def remove_baseline(self, target: TargetRef, release_id: str, deadline: datetime) -> bool:
        return await remove_baseline(self.api, target, release_id, deadline=deadline, now=self.now)

    async def clear_restore_point(self, target: TargetRef, release_id: str) -> None:
        await kube.clear_restore_point(self.api, target, release_id)


def _converge(api: client.ApiClient, desired: Body, existing: Body | None, what: str) -> None:
    """Create, replace or recreate a canary-like Deployment so the API has ``desired``."""
    decision = workload.canary_write(desired, existing)
    if decision.action == "create":
        kube.create_deployment(api, desired)
    elif decision.action == "replace" and decision.body is not None:
        kube.replace_deployment(api, decision.body)
    elif decision.action == "recreate" and existing is not None:
        kube.delete_deployment(
            api,
            desired["metadata"]["namespace"],
            existing["metadata"]["name"],
            existing["metadata"]["uid"],
        )
        raise CanaryRecreating(f"{what} had another selector")


def image_of(deployment: dict[str, Any] | None, container: str | None) -> str:
    if deployment is None:
        return ""
    try:
        return workload.image_of(deployment["spec"]["template"], container)
    except workload.WorkloadError:
        return ""
