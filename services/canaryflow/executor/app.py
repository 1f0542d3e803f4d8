"""The executor as a service: phase and promotion commands in, facts about the cluster out.

Handlers only translate: they build the ``wanted`` check from the release's state in the KV
bucket, hold the message (keep-alive) while ``PhaseRunner`` works and waits, and publish
the outcome under a deterministic event id, so a replayed command that finds its work done
publishes a duplicate that JetStream drops.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from kubernetes import client

from canaryflow.executor import hooks, notify
from canaryflow.executor.cluster import Cluster
from canaryflow.executor.phases import (
    Failed,
    PhaseRunner,
    Promoted,
    Reached,
    Superseded,
)
from canaryflow.runtime import authority, kube, observability, policies, tracing
from canaryflow.runtime.bus import Delivery
from canaryflow.runtime.service import Service
from canaryflow.runtime.settings import Settings
from canaryflow.runtime.traffic import TrafficRouter, router_for
from canaryflow_contracts import Envelope
from canaryflow_contracts.events import (
    ApplyPhase,
    PhaseFailed,
    PhaseReached,
    PromotionCompleted,
    RequestPromotion,
    RollbackRequested,
)
from canaryflow_contracts.state import ReleaseState

SERVICE_NAME = "executor"
# How long stable may take to run the new version at full size before we ask for a rollback.
PROMOTION_SECONDS = 300.0

log = logging.getLogger(__name__)


def build_service(
    settings: Settings,
    *,
    api: client.ApiClient | None = None,
    now: kube.Clock = kube.utc_now,
    promotion_seconds: float = PROMOTION_SECONDS,
) -> Service:
    service = Service(settings)
    kube_api = api or kube.api_client(settings.kubeconfig)
    runner = PhaseRunner(Cluster(kube_api, now), now)
    metrics = observability.service_metrics()

    async def state_of(release_id: str) -> ReleaseState | None:
        versioned = await service.store.get(release_id)
        return versioned.state if versioned is not None else None

    async def refused(
        envelope: Envelope[ApplyPhase] | Envelope[RequestPromotion],
        refusals: list[authority.Refusal],
    ) -> TrafficRouter | str | None:
        """Refuse, and say why, unless a live release asks for exactly this, under a policy
        that governs the target and allows the image (read from the cluster, not the bus).

        Not refused: the router the policy names, or why it cannot be had (a reason the
        release fails on, not a refusal: the command is the release's own).
        """
        target = envelope.data.target
        found = await kube.read_policies(kube_api, target.namespace)
        governing = policies.governing(target.namespace, target.name, found)
        refusals = refusals + authority.policy_refusals(
            target, envelope.data.version.image, governing
        )
        if refusals or governing.spec is None:
            await service.refuse(envelope, refusals)
            return None
        spec = governing.spec
        try:
            return router_for(spec.traffic, kube_api, spec.service_name, settings.enabled_routers)
        except ValueError as error:
            return f"ReleasePolicy {target.namespace}/{governing.name}: {error}"

    async def on_apply(envelope: Envelope[ApplyPhase], delivery: Delivery) -> None:
        command, rid = envelope.data, envelope.subject
        step = command.step
        router = await refused(
            envelope, authority.apply_refusals(rid, command, await state_of(rid))
        )
        if router is None:
            return

        async def wanted() -> bool:
            return not authority.apply_refusals(rid, command, await state_of(rid))

        span = tracing.handling(
            f"apply step {step.index + 1} ({step.weight}%)",
            {tracing.STEP: step.index, tracing.WEIGHT: step.weight},
        )
        async with delivery.keep_alive():
            outcome = (
                Failed(router)
                if isinstance(router, str)
                else await runner.apply(rid, command, wanted, router)
            )
        span.set_attributes(tracing.outcome_attributes(outcome))
        target = command.target
        if isinstance(outcome, Reached):
            metrics.phase_seconds.labels(target.namespace, target.name).observe(
                (now() - envelope.time).total_seconds()
            )
            reached = PhaseReached(
                target=target,
                step=step,
                canary_weight=outcome.weight,
                canary_ready=outcome.canary_ready,
                stable_ready=outcome.stable_ready,
                baseline_ready=outcome.baseline_ready,
            )
            await service.publisher.publish(reached, rid, event_id=f"{rid}.reached.{step.index}")
        elif isinstance(outcome, Failed):
            log.warning("step %d failed: %s", step.index, outcome.reason)
            failed = PhaseFailed(target=target, step=step, reason=outcome.reason)
            await service.publisher.publish(failed, rid, event_id=f"{rid}.failed.{step.index}")
        elif isinstance(outcome, Superseded):
            log.info("ApplyPhase for step %d not carried out: %s", step.index, outcome.reason)

    async def on_promote(envelope: Envelope[RequestPromotion], delivery: Delivery) -> None:
        command, rid = envelope.data, envelope.subject
        refusals = authority.promotion_refusals(rid, command, await state_of(rid))
        router = await refused(envelope, refusals)
        if router is None:
            return

        async def wanted() -> bool:
            return not authority.promotion_refusals(rid, command, await state_of(rid))

        deadline = now() + timedelta(seconds=promotion_seconds)
        span = tracing.handling("promote", {"canaryflow.image": command.version.image})
        async with delivery.keep_alive():
            outcome = (
                Failed(router)
                if isinstance(router, str)
                else await runner.promote(rid, command, deadline, wanted, router)
            )
        span.set_attributes(tracing.outcome_attributes(outcome))
        target = command.target
        if isinstance(outcome, Promoted):
            completed = PromotionCompleted(target=target, image=outcome.image)
            await service.publisher.publish(completed, rid, event_id=f"{rid}.promoted")
        elif isinstance(outcome, Failed):
            # Not a step failure: the planner is promoting, and a rollback is what restores
            # the recorded stable, so ask for one (the planner and rollback both consume it).
            log.warning("promotion failed: %s", outcome.reason)
            rollback = RollbackRequested(
                target=target,
                reason=f"promotion failed: {outcome.reason}",
                requested_by=f"canaryflow/{SERVICE_NAME}",
            )
            await service.publisher.publish(rollback, rid, event_id=f"{rid}.rollback.promotion")
        else:
            log.info("RequestPromotion not carried out: %s", outcome.reason)

    service.subscribe(ApplyPhase, "apply", on_apply)
    service.subscribe(RequestPromotion, "promote", on_promote)
    hooks.register(service)
    notify.register(service)
    return service
