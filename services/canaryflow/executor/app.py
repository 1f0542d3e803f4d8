"""The executor as a service: phase and promotion commands in, facts about the cluster out.

Handlers only translate: they build the ``wanted`` check from the release's state in the KV
bucket, hold the message (keep-alive) while ``PhaseRunner`` works and waits, and publish
the outcome under a deterministic event id, so a replayed command that finds its work done
publishes a duplicate that JetStream drops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from typing import Any, Protocol, assert_never

from kubernetes import client
from nats.js import JetStreamContext

from canaryflow.executor import decisions, hooks, notify
from canaryflow.executor.cluster import Cluster
from canaryflow.executor.ledger import SideEffectLedger
from canaryflow.executor.notify.base import NotifiedEvent
from canaryflow.executor.phases import (
    Failed,
    PhaseOutcome,
    PhaseRunner,
    Promoted,
    PromotionOutcome,
    Reached,
    Superseded,
    Wanted,
)
from canaryflow.runtime import authority, kube, observability, policies, tracing
from canaryflow.runtime.bus import Delivery
from canaryflow.runtime.deployment_watch import DeploymentWatch
from canaryflow.runtime.ports import Publisher, Refuser, ReleaseReader
from canaryflow.runtime.service import ConnectHook, Route, Service
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
    RunHook,
    TargetRef,
)
from canaryflow_contracts.policy import ReleasePolicySpec
from canaryflow_contracts.state import ReleaseState

SERVICE_NAME = "executor"
# How long stable may take to run the new version at full size before we ask for a rollback.
PROMOTION_SECONDS = 300.0

log = logging.getLogger(__name__)


class Phases(Protocol):
    """Carries out a step or a promotion on the cluster (``PhaseRunner``; tests pass fakes)."""

    async def apply(
        self,
        release_id: str,
        command: ApplyPhase,
        deadline: datetime,
        wanted: Wanted,
        router: TrafficRouter,
    ) -> PhaseOutcome: ...

    async def promote(
        self,
        release_id: str,
        command: RequestPromotion,
        deadline: datetime,
        wanted: Wanted,
        router: TrafficRouter,
    ) -> PromotionOutcome: ...


class Governance(Protocol):
    """The policy that governs a target, read from the cluster (not the bus), and its router."""

    async def governing(self, target: TargetRef) -> policies.Governing: ...

    def router(self, spec: ReleasePolicySpec) -> TrafficRouter:
        """The router the policy names; ValueError when it cannot be had here."""
        ...


class ClusterGovernance:
    def __init__(self, api: client.ApiClient, enabled_routers: Collection[str]) -> None:
        self._api = api
        self._enabled = enabled_routers

    async def governing(self, target: TargetRef) -> policies.Governing:
        found = await kube.read_policies(self._api, target.namespace, target.name)
        return policies.governing(target.namespace, target.name, found)

    def router(self, spec: ReleasePolicySpec) -> TrafficRouter:
        return router_for(spec.traffic, self._api, spec.service_name, self._enabled)


class Executor:
    """The executor's phase and promotion handlers, with their adapters injected."""

    def __init__(
        self,
        releases: Callable[[], ReleaseReader],
        publisher: Publisher,
        refuser: Refuser,
        runner: Phases,
        governance: Governance,
        *,
        now: kube.Clock = kube.utc_now,
        promotion_seconds: float = PROMOTION_SECONDS,
        workers: int = 16,
    ) -> None:
        self._releases = releases  # a getter: the service's store exists once it has started
        self._publisher = publisher
        self._refuser = refuser
        self._runner = runner
        self._governance = governance
        self._now = now
        self._promotion_seconds = promotion_seconds
        self._workers = workers  # each step or promotion holds its message while it waits
        self._metrics = observability.service_metrics()

    def routes(self) -> tuple[Route[Any], ...]:
        """The handler table for the commands it carries out (``COMMANDS``)."""
        return (
            Route(ApplyPhase, "apply", self.on_apply, workers=self._workers),
            Route(RequestPromotion, "promote", self.on_promote, workers=self._workers),
        )

    async def _state_of(self, release_id: str) -> ReleaseState | None:
        versioned = await self._releases().get(release_id)
        return versioned.state if versioned is not None else None

    async def _refused(
        self,
        envelope: Envelope[ApplyPhase] | Envelope[RequestPromotion],
        refusals: list[authority.Refusal],
    ) -> TrafficRouter | str | None:
        """Refuse, and say why, unless a live release asks for exactly this, under a policy
        that governs the target and allows the image (read from the cluster, not the bus).

        Not refused: the router the policy names, or why it cannot be had (a reason the
        release fails on, not a refusal: the command is the release's own).
        """
        target = envelope.data.target
        governing = await self._governance.governing(target)
        refusals = refusals + authority.policy_refusals(
            target, envelope.data.version.image, governing
        )
        if refusals or governing.spec is None:
            await self._refuser.refuse(envelope, refusals)
            return None
        try:
            return self._governance.router(governing.spec)
        except ValueError as error:
            return f"ReleasePolicy {target.namespace}/{governing.name}: {error}"

    async def on_apply(self, envelope: Envelope[ApplyPhase], delivery: Delivery) -> None:
        command, rid = envelope.data, envelope.subject
        step = command.step
        state = await self._state_of(rid)
        router = await self._refused(envelope, authority.apply_refusals(rid, command, state))
        if router is None or state is None:
            return
        deadline = decisions.step_deadline(command.ready_deadline, state.ready_window, self._now())

        async def wanted() -> bool:
            return not authority.apply_refusals(rid, command, await self._state_of(rid))

        span = tracing.handling(
            f"apply step {step.index + 1} ({step.weight}%)",
            {tracing.STEP: step.index, tracing.WEIGHT: step.weight},
        )
        async with delivery.keep_alive():
            outcome = (
                Failed(router)
                if isinstance(router, str)
                else await self._runner.apply(rid, command, deadline, wanted, router)
            )
        span.set_attributes(tracing.outcome_attributes(outcome))
        target = command.target
        match outcome:
            case Reached():
                self._metrics.phase_seconds.labels(target.namespace).observe(
                    (self._now() - envelope.time).total_seconds()
                )
                reached = PhaseReached(
                    target=target,
                    step=step,
                    canary_weight=outcome.weight,
                    canary_ready=outcome.canary_ready,
                    stable_ready=outcome.stable_ready,
                    baseline_ready=outcome.baseline_ready,
                )
                await self._publisher.publish(reached, rid, event_id=f"{rid}.reached.{step.index}")
            case Failed():
                log.warning("step %d failed: %s", step.index, outcome.reason)
                failed = PhaseFailed(target=target, step=step, reason=outcome.reason)
                await self._publisher.publish(failed, rid, event_id=f"{rid}.failed.{step.index}")
            case Superseded():
                log.info("ApplyPhase for step %d not carried out: %s", step.index, outcome.reason)
            case _:
                assert_never(outcome)

    async def on_promote(self, envelope: Envelope[RequestPromotion], delivery: Delivery) -> None:
        command, rid = envelope.data, envelope.subject
        refusals = authority.promotion_refusals(rid, command, await self._state_of(rid))
        router = await self._refused(envelope, refusals)
        if router is None:
            return

        async def wanted() -> bool:
            return not authority.promotion_refusals(rid, command, await self._state_of(rid))

        deadline = self._now() + timedelta(seconds=self._promotion_seconds)
        span = tracing.handling("promote", {"canaryflow.image": command.version.image})
        async with delivery.keep_alive():
            outcome = (
                Failed(router)
                if isinstance(router, str)
                else await self._runner.promote(rid, command, deadline, wanted, router)
            )
        span.set_attributes(tracing.outcome_attributes(outcome))
        target = command.target
        match outcome:
            case Promoted():
                completed = PromotionCompleted(target=target, image=outcome.image)
                await self._publisher.publish(completed, rid, event_id=f"{rid}.promoted")
            case Failed():
                # Not a step failure: the planner is promoting, and a rollback is what restores
                # the recorded stable, so ask for one (the planner and rollback both consume it).
                log.warning("promotion failed: %s", outcome.reason)
                rollback = RollbackRequested(
                    target=target,
                    reason=f"promotion failed: {outcome.reason}",
                    requested_by=f"canaryflow/{SERVICE_NAME}",
                )
                await self._publisher.publish(rollback, rid, event_id=f"{rid}.rollback.promotion")
            case Superseded():
                log.info("RequestPromotion not carried out: %s", outcome.reason)
            case _:
                assert_never(outcome)


ConsumedEvent = ApplyPhase | RequestPromotion | RunHook | NotifiedEvent
"""What the executor consumes: the commands it carries out (``Executor``), the hooks it calls
(``hooks.Hooks``) and the events people are notified of (``notify.Notifications``)."""


def build_service(
    settings: Settings,
    *,
    api: client.ApiClient | None = None,
    now: kube.Clock = kube.utc_now,
    promotion_seconds: float = PROMOTION_SECONDS,
) -> Service:
    """The composition: the real adapters (or the test's), the handlers and their routes."""
    service = Service(settings)
    kube_api = api or kube.api_client(settings.kubeconfig)
    # Every step's wait reads this copy of the Deployments, not the API (deployment_watch).
    watch = DeploymentWatch(kube_api, settings.watched_namespaces)
    service.every(watch.run)
    executor = Executor(
        lambda: service.store,
        service.publisher,
        service,
        PhaseRunner(Cluster(kube_api, now, watch), now),
        ClusterGovernance(kube_api, settings.enabled_routers),
        now=now,
        promotion_seconds=promotion_seconds,
        workers=settings.wait_workers,
    )
    service.route(executor.routes())
    hook_ledger = SideEffectLedger(lease_seconds=hooks.PUBLISH_MARGIN_SECONDS)  # per run
    service.when_connected(_opener(hook_ledger, settings))
    hook_caller = hooks.Hooks(
        lambda: service.store,
        service.publisher,
        service,
        hooks.WebhookCaller(signing_key=settings.signing_key),
        hook_ledger,
    )
    service.route(hook_caller.routes())
    notify_ledger = SideEffectLedger(notify.LEASE_SECONDS)
    service.when_connected(_opener(notify_ledger, settings))
    notifications = notify.Notifications(
        lambda: service.store,
        notify.WebhookNotifier(signing_key=settings.signing_key),
        notify_ledger,
        notify.urls_from_env(),
    )
    service.route(notifications.routes())
    return service


def _opener(ledger: SideEffectLedger, settings: Settings) -> ConnectHook:
    """Opens a side-effect ledger in the releases bucket once connected."""

    async def open_ledger(js: JetStreamContext) -> None:
        await ledger.open(js, settings.subjects.releases_bucket)

    return open_ledger
