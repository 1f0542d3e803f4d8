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
from datetime import timedelta
from typing import TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from canaryflow.rollback.restorer import Restorer, restore_seconds_of
from canaryflow.rollback.triggers import abort_refusal, reason_of
from canaryflow.runtime import conventions, kube, observability, policies, tracing
from canaryflow.runtime.authority import rollback_refusals
from canaryflow.runtime.bus import Delivery, Handler, PermanentError
from canaryflow.runtime.operators import refusal_notice, refused_id
from canaryflow.runtime.service import Service
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
# rollback, and for how long after it ended (see ``sweep`` in ``build_service``).
SWEEP_SECONDS = 10.0
LATE_WRITE_WINDOW = timedelta(minutes=5)

log = logging.getLogger(__name__)

E = TypeVar("E", bound=EventData)


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


def build_service(
    settings: Settings,
    *,
    api: client.ApiClient | None = None,
    now: kube.Clock = kube.utc_now,
    restore_seconds: float = RESTORE_SECONDS,
    sweep_seconds: float = SWEEP_SECONDS,
) -> Service:
    service = Service(settings)
    kube_api = api or kube.api_client(settings.kubeconfig)
    restorer = Restorer(kube_api, now)
    metrics = observability.service_metrics()

    async def routers_of(target: TargetRef) -> list[TrafficRouter]:
        """The router the target's policy names; every router if the policy cannot say."""
        found = await kube.read_policies(kube_api, target.namespace)
        governing = policies.governing(target.namespace, target.name, found)
        if governing.spec is not None:
            try:
                spec = governing.spec
                return [
                    router_for(spec.traffic, kube_api, spec.service_name, settings.enabled_routers)
                ]
            except ValueError as error:
                log.warning("%s: %s; finalizing every router", target.key(), error)
        return every_router(kube_api, settings.enabled_routers)

    async def roll_back(envelope: Envelope[E], delivery: Delivery) -> None:
        data, release_id = envelope.data, envelope.subject
        if isinstance(data, AnalysisVerdict) and data.action is not VerdictAction.ROLLBACK:
            return  # most verdicts: skip without reading the store
        versioned = await service.store.get(release_id)
        state = versioned.state if versioned is not None else None
        refusals = rollback_refusals(release_id, data, state)
        if refusals or state is None:
            await service.refuse(envelope, refusals)
            return
        if isinstance(data, AbortRelease):
            why = abort_refusal(envelope, state, now())
            if why is not None:
                log.warning("abort by %s refused: %s", data.actor, why)
                notice = refusal_notice(state.target, data, why)
                await service.publisher.publish(
                    notice, release_id, event_id=refused_id(release_id, envelope.id)
                )
                return
        # The target is the release's own, never the command's, and what is restored is what
        # the release recorded on the cluster (restore point, bundle), never anything named
        # in the command.
        target, reason = state.target, reason_of(data)
        deadline = now() + timedelta(seconds=restore_seconds)
        span = tracing.handling(
            "rollback",
            {"canaryflow.trigger": data.event_type(), "canaryflow.reason": reason},
        )
        async with delivery.keep_alive():
            try:
                routers = await routers_of(target)
                restored = await restorer.restore(release_id, target, deadline, routers)
            except Exception as error:
                final = no_retry_helps(error)
                if final or delivery.attempt >= settings.max_deliver:
                    await give_up(envelope, target, error, delivery.attempt, final)
                if isinstance(error, conventions.CorruptRestorePoint):
                    raise PermanentError(f"{target.key()}: {error}") from error
                if final:
                    raise PermanentError(f"{target.key()}: {_describe(error)}") from error
                raise
        seconds = restore_seconds_of(restored, envelope.time, now())
        span.set_attributes(tracing.outcome_attributes(restored))
        span.set_attribute("canaryflow.seconds_to_restore", seconds)
        if restored.traffic_back_at is not None:
            metrics.restore_seconds.observe(seconds)
        log.info("rolled back in %.2fs: %s", seconds, restored.note)
        completed = RollbackCompleted(
            target=target,
            reason=reason,
            stable_replicas=restored.stable_replicas,
            seconds_to_restore=round(seconds, 3),
        )
        await service.publisher.publish(
            completed, release_id, event_id=f"{release_id}.rollback-completed"
        )

    async def give_up(
        envelope: Envelope[E], target: TargetRef, error: Exception, attempts: int, final: bool
    ) -> None:
        """Say that this trigger's rollback could not be done, and what it leaves behind."""
        release_id = envelope.subject
        reason = _describe(error)
        leftovers = await restorer.leftovers(release_id, target)
        log.error(
            "rollback of %s gave up after %d attempt(s)%s: %s; left: %s",
            target.key(),
            attempts,
            " (no retry can help)" if final else "",
            reason,
            "; ".join(leftovers) or "nothing",
            extra={"release_id": release_id},
        )
        metrics.rollbacks_failed.labels(target.namespace, "final" if final else "exhausted").inc()
        failed = RollbackFailed(
            target=target, reason=reason, attempts=attempts, final=final, leftovers=leftovers
        )
        digest = hashlib.sha256(envelope.id.encode()).hexdigest()[:12]
        await service.publisher.publish(
            failed, release_id, event_id=f"{release_id}.rollback-failed.{digest}"
        )

    def handler(kind: type[E]) -> Handler[E]:
        """``roll_back`` under a name of its own: FastStream names each subscriber by it."""

        async def on_event(envelope: Envelope[E], delivery: Delivery) -> None:
            await roll_back(envelope, delivery)

        on_event.__name__ = f"on_{kind.event_name}"
        return on_event

    async def sweep() -> None:
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
            await asyncio.sleep(sweep_seconds)
            for versioned in await service.store.all():
                state = versioned.state
                if state.status is not ReleaseStatus.ROLLED_BACK:
                    continue
                if now() - state.updated_at > LATE_WRITE_WINDOW:
                    continue
                left = await restorer.leftovers(state.release_id, state.target)
                if not left or any(item.startswith("not fully inspected") for item in left):
                    continue
                log.warning(
                    "rolled-back release %s still has %s; restoring again",
                    state.release_id,
                    "; ".join(left),
                    extra={"release_id": state.release_id},
                )
                restored = await restorer.restore(
                    state.release_id, state.target, now() + timedelta(seconds=restore_seconds)
                )
                log.info("late writes undone: %s", restored.note)

    service.every(sweep)
    service.subscribe(AnalysisVerdict, "verdict", handler(AnalysisVerdict))
    service.subscribe(PhaseFailed, "phase_failed", handler(PhaseFailed))
    service.subscribe(RollbackRequested, "requested", handler(RollbackRequested))
    service.subscribe(AbortRelease, "abort", handler(AbortRelease))
    return service
