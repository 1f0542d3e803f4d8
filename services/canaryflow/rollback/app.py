"""The rollback service: every reason to stop in, a restored target and one completion out.

It consumes the triggers itself (a failed verdict, a failed phase, a rollback request, an
operator's abort) rather than waiting for the planner to relay them, so a rollback starts
one hop after the failure and still happens while the planner is down. Handlers only
translate; the decisions are in ``triggers`` and ``restore``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from canaryflow.rollback.restorer import Restored, Restorer, restore_seconds_of
from canaryflow.rollback.triggers import RollbackTrigger, abort_refusal, reason_of
from canaryflow.runtime import conventions, kube, observability, policies, tracing
from canaryflow.runtime.authority import rollback_refusals
from canaryflow.runtime.bus import Delivery, PermanentError
from canaryflow.runtime.deployment_watch import DeploymentWatch
from canaryflow.runtime.operators import refusal_notice, refused_id
from canaryflow.runtime.ports import Publisher, Refuser, ReleaseReader
from canaryflow.runtime.service import Route, Service
from canaryflow.runtime.settings import Settings
from canaryflow.runtime.traffic import TrafficRouter, every_router, router_for
from canaryflow_contracts import Envelope, EventData
from canaryflow_contracts.events import (
    AbortRelease,
    AnalysisVerdict,
    PhaseFailed,
    RollbackCompleted,
    RollbackFailed,
    RollbackRequested,
    TargetRef,
    VerdictAction,
)
from canaryflow_contracts.state import ReleaseStatus

SERVICE_NAME = "rollback"
# How long stable may take to be whole again before the attempt is retried (redelivery).
RESTORE_SECONDS = 300.0
# How often rolled-back releases are looked at for forward writes that landed after their
# rollback, and for how long after it ended (see ``Rollback.sweep``).
SWEEP_SECONDS = 10.0
LATE_WRITE_WINDOW = timedelta(minutes=5)

log = logging.getLogger(__name__)


# API answers that no retry turns into a success: the writes are forbidden, or refused as
# invalid. A person must act (fix the RBAC, the object); the release ends as failed.
_FINAL_STATUSES = frozenset({401, 403, 422})


def no_retry_helps(error: Exception) -> bool:
    if isinstance(error, conventions.CorruptRestorePoint):
        return True
    return isinstance(error, ApiException) and error.status in _FINAL_STATUSES


def _describe(error: Exception) -> str:
    """One line a person can act on (an ApiException's str is a multi-line HTTP dump)."""
    if isinstance(error, ApiException):
        return f"the API answered {error.status} {error.reason}: {error.body or ''}"[:500]
    return f"{type(error).__name__}: {error}"[:500]


class Restoring(Protocol):
    """Puts a target back as its release recorded it (``Restorer``; tests pass fakes)."""

    async def restore(
        self,
        release_id: str,
        target: TargetRef,
        deadline: datetime,
        routers: Sequence[TrafficRouter] = (),
    ) -> Restored: ...

    async def leftovers(self, release_id: str, target: TargetRef) -> list[str]: ...


class Routers(Protocol):
    async def of(self, target: TargetRef) -> list[TrafficRouter]: ...


class PolicyRouters:
    """The router the target's policy names; every router if the policy cannot say."""

    def __init__(self, api: client.ApiClient, enabled: Collection[str]) -> None:
        self._api = api
        self._enabled = enabled

    async def of(self, target: TargetRef) -> list[TrafficRouter]:
        found = await kube.read_policies(self._api, target.namespace, target.name)
        governing = policies.governing(target.namespace, target.name, found)
        if governing.spec is not None:
            try:
                spec = governing.spec
                return [router_for(spec.traffic, self._api, spec.service_name, self._enabled)]
            except ValueError as error:
                log.warning("%s: %s; finalizing every router", target.key(), error)
        return every_router(self._api, self._enabled)


class Rollback:
    """The rollback service's handler and sweep, with their adapters injected."""

    def __init__(
        self,
        releases: Callable[[], ReleaseReader],
        publisher: Publisher,
        refuser: Refuser,
        restorer: Restoring,
        routers: Routers,
        *,
        now: kube.Clock = kube.utc_now,
        max_deliver: int,
        restore_seconds: float = RESTORE_SECONDS,
        sweep_seconds: float = SWEEP_SECONDS,
        workers: int = 16,
    ) -> None:
        self._releases = releases  # a getter: the service's store exists once it has started
        self._publisher = publisher
        self._refuser = refuser
        self._restorer = restorer
        self._routers = routers
        self._now = now
        self._max_deliver = max_deliver
        self._restore_seconds = restore_seconds
        self._sweep_seconds = sweep_seconds
        self._workers = workers  # each rollback holds its message until stable is whole
        self._metrics = observability.service_metrics()

    def routes(self) -> tuple[Route[Any], ...]:
        """The handler table: every trigger (``TRIGGERS``) to ``on_trigger``."""
        return tuple(
            Route(event, name, self.on_trigger, workers=self._workers) for event, name in TRIGGERS
        )

    async def on_trigger(self, envelope: Envelope[RollbackTrigger], delivery: Delivery) -> None:
        data, release_id = envelope.data, envelope.subject
        if isinstance(data, AnalysisVerdict) and data.action is not VerdictAction.ROLLBACK:
            return  # most verdicts: skip without reading the store
        versioned = await self._releases().get(release_id)
        state = versioned.state if versioned is not None else None
        refusals = rollback_refusals(release_id, data, state)
        if refusals or state is None:
            await self._refuser.refuse(envelope, refusals)
            return
        if isinstance(data, AbortRelease):
            why = abort_refusal(envelope, state, self._now())
            if why is not None:
                log.warning("abort by %s refused: %s", data.actor, why)
                notice = refusal_notice(state.target, data, why)
                await self._publisher.publish(
                    notice, release_id, event_id=refused_id(release_id, envelope.id)
                )
                return
        # The target is the release's own, never the command's, and what is restored is what
        # the release recorded on the cluster (restore point, bundle), never anything named
        # in the command.
        target, reason = state.target, reason_of(data)
        deadline = self._now() + timedelta(seconds=self._restore_seconds)
        span = tracing.handling(
            "rollback",
            {"canaryflow.trigger": data.event_type(), "canaryflow.reason": reason},
        )
        async with delivery.keep_alive():
            try:
                routers = await self._routers.of(target)
                restored = await self._restorer.restore(release_id, target, deadline, routers)
            except Exception as error:
                final = no_retry_helps(error)
                if final or delivery.attempt >= self._max_deliver:
                    await self._give_up(envelope, target, error, delivery.attempt, final)
                if isinstance(error, conventions.CorruptRestorePoint):
                    raise PermanentError(f"{target.key()}: {error}") from error
                if final:
                    raise PermanentError(f"{target.key()}: {_describe(error)}") from error
                raise
        seconds = restore_seconds_of(restored, envelope.time, self._now())
        span.set_attributes(tracing.outcome_attributes(restored))
        span.set_attribute("canaryflow.seconds_to_restore", seconds)
        if restored.traffic_back_at is not None:
            self._metrics.restore_seconds.observe(seconds)
        log.info("rolled back in %.2fs: %s", seconds, restored.note)
        completed = RollbackCompleted(
            target=target,
            reason=reason,
            stable_replicas=restored.stable_replicas,
            seconds_to_restore=round(seconds, 3),
        )
        await self._publisher.publish(
            completed, release_id, event_id=f"{release_id}.rollback-completed"
        )

    async def _give_up(
        self,
        envelope: Envelope[RollbackTrigger],
        target: TargetRef,
        error: Exception,
        attempts: int,
        final: bool,
    ) -> None:
        """Say that this trigger's rollback could not be done, and what it leaves behind."""
        release_id = envelope.subject
        reason = _describe(error)
        leftovers = await self._restorer.leftovers(release_id, target)
        log.error(
            "rollback of %s gave up after %d attempt(s)%s: %s; left: %s",
            target.key(),
            attempts,
            " (no retry can help)" if final else "",
            reason,
            "; ".join(leftovers) or "nothing",
            extra={"release_id": release_id},
        )
        self._metrics.rollbacks_failed.labels(
            target.namespace, "final" if final else "exhausted"
        ).inc()
        failed = RollbackFailed(
            target=target, reason=reason, attempts=attempts, final=final, leftovers=leftovers
        )
        digest = hashlib.sha256(envelope.id.encode()).hexdigest()[:12]
        await self._publisher.publish(
            failed, release_id, event_id=f"{release_id}.rollback-failed.{digest}"
        )

    async def sweep(self) -> None:
        """Restore again what a forward write put back after a rollback had finished.

        Found by the fault campaign (``make chaos``): an abort arrived while the executor was
        putting step 0 in place; the rollback found nothing to undo yet and completed, then
        the executor's writes landed (restore point, canary, baseline), and it stopped only
        at its next look at the release, leaving them behind for good. No check before a
        write closes that window (the state can change right after it), so the way back is
        level-triggered too: each rolled-back release is looked at for a few minutes after it
        ended, and whatever it still has on the cluster is restored like any rollback (every
        step checks the release id, so a later release of the target is never touched).
        """
        while True:
            await asyncio.sleep(self._sweep_seconds)
            for versioned in await self._releases().all():
                state = versioned.state
                if state.status is not ReleaseStatus.ROLLED_BACK:
                    continue
                if self._now() - state.updated_at > LATE_WRITE_WINDOW:
                    continue
                left = await self._restorer.leftovers(state.release_id, state.target)
                if not left or any(item.startswith("not fully inspected") for item in left):
                    continue
                log.warning(
                    "rolled-back release %s still has %s; restoring again",
                    state.release_id,
                    "; ".join(left),
                    extra={"release_id": state.release_id},
                )
                restored = await self._restorer.restore(
                    state.release_id,
                    state.target,
                    self._now() + timedelta(seconds=self._restore_seconds),
                )
                log.info("late writes undone: %s", restored.note)


# The triggers the rollback service consumes (``RollbackTrigger``), each with its own durable
# consumer.
TRIGGERS: tuple[tuple[type[EventData], str], ...] = (
    (AnalysisVerdict, "verdict"),
    (PhaseFailed, "phase_failed"),
    (RollbackRequested, "requested"),
    (AbortRelease, "abort"),
)


def build_service(
    settings: Settings,
    *,
    api: client.ApiClient | None = None,
    now: kube.Clock = kube.utc_now,
    restore_seconds: float = RESTORE_SECONDS,
    sweep_seconds: float = SWEEP_SECONDS,
) -> Service:
    """The composition: the real adapters (or the test's), the handler, its routes and sweep."""
    service = Service(settings)
    kube_api = api or kube.api_client(settings.kubeconfig)
    watch = DeploymentWatch(kube_api, settings.watched_namespaces)
    service.every(watch.run)
    rollback = Rollback(
        lambda: service.store,
        service.publisher,
        service,
        Restorer(kube_api, now, watch=watch),
        PolicyRouters(kube_api, settings.enabled_routers),
        now=now,
        max_deliver=settings.max_deliver,
        restore_seconds=restore_seconds,
        workers=settings.wait_workers,
        sweep_seconds=sweep_seconds,
    )
    service.every(rollback.sweep)
    service.route(rollback.routes())
    return service
