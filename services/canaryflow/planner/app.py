"""The planner as a service: events in, state written with compare-and-set, commands out.

Handlers only translate: read the release, ask the pure machine, write the new state under the
revision that was read (a ``StaleWrite`` means another replica or event got there first, so
read and decide again), and publish only after the write succeeded. Command ids are
deterministic, so a redelivered event that publishes again is dropped by JetStream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from opentelemetry import trace
from pydantic import ConfigDict, ValidationError

from canaryflow.planner import groups, pipelines
from canaryflow.planner.gauges import canary_weights, release_counts
from canaryflow.planner.group_app import GroupCoordinator
from canaryflow.planner.machine import (
    Command,
    Decision,
    Request,
    accept,
    decide,
    refuse,
    reject,
    request_again,
)
from canaryflow.planner.pipeline_app import PipelineCoordinator
from canaryflow.planner.planning import Admission, Refusal, limit_refusal
from canaryflow.planner.reconcile import DEFAULT_TIMINGS, ReconcileTimings, reconcile
from canaryflow.planner.validation import (
    ClusterReader,
    KubeClusterReader,
    describe_validation_error,
    validate,
)
from canaryflow.runtime import observability, tracing
from canaryflow.runtime.bus import Delivery, Unreadable
from canaryflow.runtime.ports import Publisher
from canaryflow.runtime.service import Route, Service
from canaryflow.runtime.settings import Settings
from canaryflow.runtime.store import StaleWrite, Versioned, VersionedGroup, VersionedPipeline
from canaryflow.runtime.traffic import ROUTERS
from canaryflow_contracts import Envelope, EventData
from canaryflow_contracts.events import (
    AbortRelease,
    AnalysisVerdict,
    GroupPromoteMember,
    HookCompleted,
    OpenGate,
    PauseRelease,
    PhaseFailed,
    PhaseReached,
    PromoteNow,
    PromotionCompleted,
    ReleaseRequested,
    ResumeRelease,
    RollbackCompleted,
    RollbackFailed,
    RollbackRequested,
    SetWeight,
    TargetRef,
)
from canaryflow_contracts.state import ReleaseState, ReleaseStatus

SERVICE_NAME = "planner"
# Compare-and-set attempts before the message is handed back for redelivery.
CAS_ATTEMPTS = 10

log = logging.getLogger(__name__)


class ReleaseRequestPayload(EventData):
    """A release request as received, before it is checked against the public contract.

    The request is the public API: a malformed one must be answered with a rejection that
    names every problem, not dead-lettered where the requester never sees it. So the planner
    accepts any payload here and validates it as ``ReleaseRequested`` itself.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    event_domain = ReleaseRequested.event_domain
    event_name = ReleaseRequested.event_name


class StateStore(Protocol):
    async def get(self, release_id: str) -> Versioned | None: ...
    async def create(self, state: ReleaseState) -> int: ...
    async def update(self, state: ReleaseState, revision: int) -> int: ...
    async def claim_target(self, target: TargetRef, release_id: str) -> str: ...
    async def free_target(self, target: TargetRef, release_id: str) -> None: ...
    async def all(self) -> list[Versioned]: ...


class GroupReader(Protocol):
    async def get_group(self, group_id: str) -> VersionedGroup | None: ...
    async def get_pipeline(self, pipeline_id: str) -> VersionedPipeline | None: ...


Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Planner:
    """The planner's handlers, with their adapters injected (tests pass fakes)."""

    def __init__(
        self,
        store: Callable[[], StateStore],
        publisher: Publisher,
        cluster: ClusterReader,
        clock: Clock = utc_now,
        timings: ReconcileTimings = DEFAULT_TIMINGS,
        *,
        routers: Collection[str] = ROUTERS.keys(),
        groups: Callable[[], GroupReader] | None = None,
    ) -> None:
        self._groups = groups  # where a group member's request is checked against its group
        self._routers = routers  # the traffic routers a policy may name here
        self._store = store  # a getter: the service's store exists only once it has started
        self._publisher = publisher
        self._cluster = cluster
        self._clock = clock
        self._timings = timings

    def routes(self, request_subjects: Sequence[str]) -> tuple[Route[Any], ...]:
        """The handler table: the requests, on every subject under the public request prefix
        (so that none is stored unread), then the events it follows (``FOLLOWED``)."""
        requests = tuple(
            Route(
                ReleaseRequestPayload,
                name,
                self.on_request,
                on_malformed=self.on_unreadable_request,
                subject_filter=subject_filter,
            )
            for name, subject_filter in zip(
                ("requested", "requested-bare"), request_subjects, strict=True
            )
        )
        followed = tuple(
            Route(
                event,
                name,
                self.on_event,
                quiet=_routine_verdict if event is AnalysisVerdict else None,
            )
            for event, name in FOLLOWED
        )
        return requests + followed

    async def on_request(
        self, event: Envelope[ReleaseRequestPayload], delivery: Delivery | None = None
    ) -> None:
        release_id = event.subject
        # The request's span is the root of the release's trace (see runtime.tracing).
        tracing.handling(f"release {release_id}")
        subject = delivery.subject if delivery is not None else ""
        origin = Request(event.id, release_id, subject)
        try:
            request = ReleaseRequested.model_validate(event.data.model_extra or {})
        except ValidationError as error:
            # Not a release: refused on the request's subject, the release id stays free.
            reasons = [f"malformed request: {r}" for r in describe_validation_error(error)]
            log.warning("refusing a malformed request: %s", "; ".join(reasons))
            await self._publish(release_id, refuse(origin, reasons))
            return
        typed = cast("Envelope[ReleaseRequested]", event.model_copy(update={"data": request}))
        redelivered = delivery is not None and delivery.attempt > 1
        for _ in range(CAS_ATTEMPTS):
            if await self._admit(release_id, typed, origin, redelivered):
                return
        raise RuntimeError(f"release {release_id}: state kept changing under us")

    async def on_unreadable_request(self, message: Unreadable) -> None:
        """A message on the request subjects that is not a request still gets an answer.

        The bus dead-letters it too, with the same problem.
        """
        log.warning(
            "refusing an unreadable request on %s: %s",
            message.subject,
            message.problem,
            extra={"release_id": message.release_id},
        )
        origin = Request(message.message_key, message.release_id, message.subject)
        await self._publish(message.release_id, refuse(origin, [message.problem]))

    async def _admit(
        self,
        release_id: str,
        event: Envelope[ReleaseRequested],
        origin: Request,
        redelivered: bool,
    ) -> bool:
        store = self._store()
        current = await store.get(release_id)
        if current is not None:  # a redelivery, a duplicate, or another request reusing the id
            again = request_again(current.state, event, origin, redelivered)
            await self._publish(release_id, again, current.state)
            return True
        request = event.data
        now = self._clock()
        admitted = await validate(request, self._cluster, now, self._routers)
        if isinstance(admitted, Admission) and (request.group or request.pipeline):
            why = await self._group_refusal(release_id, request)
            if why is not None:
                admitted = Refusal((why,))
        if isinstance(admitted, Admission) and admitted.limits is not None:
            in_flight = [
                (v.state.target.namespace, v.state.release_id)
                for v in await store.all()
                if not v.state.status.terminal
            ]
            why = limit_refusal(admitted.limits, request.target.namespace, in_flight)
            if why is not None:
                admitted = Refusal((why,))
        if isinstance(admitted, Admission):
            holder = await store.claim_target(request.target, release_id)
            if holder != release_id:
                busy = (
                    f"Deployment {request.target.key()} already has a release in flight: {holder}"
                )
                admitted = Refusal((busy,))
        if isinstance(admitted, Refusal):
            decision = reject(release_id, event, request, list(admitted.reasons), now)
        else:
            decision = accept(release_id, event, admitted, now)
        assert decision.state is not None
        # Every later command of this release re-enters the trace rooted here.
        root = tracing.current_traceparent()
        decision = Decision(
            decision.state.model_copy(update={"trace_parent": root}), decision.commands
        )
        assert decision.state is not None
        try:
            await store.create(decision.state)
        except StaleWrite:
            if isinstance(admitted, Admission):
                await self._unclaim_unless_ours(release_id, request.target)
            return False
        trace.get_current_span().set_attribute(
            "canaryflow.status.after", decision.state.status.value
        )
        log.info(
            "release %s: %s",
            decision.state.status.value,
            "; ".join(admitted.reasons) if isinstance(admitted, Refusal) else admitted.policy_name,
        )
        await self._publish(release_id, decision)
        return True

    async def _group_refusal(self, release_id: str, request: ReleaseRequested) -> str | None:
        """Why a request naming a group (or a pipeline) may not be its member (None: it may)."""
        if self._groups is None:
            return "release groups and pipelines are not served by this planner"
        if request.group and request.pipeline:
            return "a release is a group's member or a pipeline's environment, not both"
        if request.pipeline:
            pipeline = await self._groups().get_pipeline(request.pipeline)
            state = pipeline.state if pipeline is not None else None
            return pipelines.listed(state, release_id, request)
        group = await self._groups().get_group(request.group)
        return groups.listed(group.state if group is not None else None, release_id, request)

    async def _unclaim_unless_ours(self, release_id: str, target: TargetRef) -> None:
        """We lost the race to create this release: keep the lock only if it is the same one."""
        existing = await self._store().get(release_id)
        if existing is None or existing.state.target != target or existing.state.status.terminal:
            await self._store().free_target(target, release_id)

    async def on_event(self, event: Envelope[Any], delivery: Delivery | None = None) -> None:
        release_id = event.subject
        kind = event.type.removeprefix("io.canaryflow.").rsplit(".", 1)[0]
        tracing.handling(f"decide {kind}")
        for _ in range(CAS_ATTEMPTS):
            current = await self._store().get(release_id)
            if current is None:
                log.info("no release %s: nothing to do for %s", release_id, event.type)
                return
            if await self._apply(current, event):
                return
        raise RuntimeError(f"release {release_id}: state kept changing under us")

    async def _apply(self, current: Versioned, event: Envelope[Any]) -> bool:
        """Decide and write; False when the state changed since it was read."""
        decision = decide(current.state, event, self._clock())
        after = decision.state or current.state
        trace.get_current_span().set_attributes(
            {
                "canaryflow.status.before": current.state.status.value,
                "canaryflow.status.after": after.status.value,
                tracing.STEP: after.step_index,
                "canaryflow.commands": [type(c.data).__name__ for c in decision.commands],
            }
        )
        if decision.state is not None:
            try:
                await self._store().update(decision.state, current.revision)
            except StaleWrite:
                return False
            # At once, not only at the next reconcile: a short step must still show on a graph.
            export_weight(decision.state)
            log.info(
                "%s -> %s%s",
                event.type,
                decision.state.status.value,
                " (paused)" if decision.state.paused else "",
            )
        await self._publish(current.state.release_id, decision, current.state)
        return True

    async def _publish(
        self, release_id: str, decision: Decision, before: ReleaseState | None = None
    ) -> None:
        known = decision.state or before
        with tracing.within(known.trace_parent if known is not None else ""):
            for command in decision.commands:
                await self._send(release_id, command)
        # A replay (no new state, commands again) may follow a crash before the lock was freed.
        after = decision.state or (before if decision.commands else None)
        if after is not None and after.status.terminal:
            # Frees only a lock this release holds, so a replay or a rejection is harmless.
            await self._store().free_target(after.target, release_id)

    async def _send(self, release_id: str, command: Command) -> None:
        await self._publisher.publish(
            command.data, command.subject_key or release_id, event_id=command.event_id
        )

    async def reconcile_once(self) -> None:
        """One pass of the safety net over every release; a lost CAS race waits for the next."""
        now = self._clock()
        states: list[ReleaseState] = []
        for versioned in await self._store().all():
            states.append(versioned.state)
            decision = reconcile(versioned.state, now, self._timings)
            if decision.state is None:
                continue
            await self._reissue(versioned, decision)
        export_gauges(states)

    async def _reissue(self, versioned: Versioned, decision: Decision) -> None:
        assert decision.state is not None
        state = versioned.state
        with (
            tracing.within(state.trace_parent),
            tracing.span("reconcile", state.release_id) as span,
            observability.release_context(state.release_id),
        ):
            try:
                await self._store().update(decision.state, versioned.revision)
            except StaleWrite:
                span.set_attribute("canaryflow.reconcile.lost_race", True)
                return
            detail = decision.state.history[-1].detail
            span.set_attributes(
                {
                    "canaryflow.reconcile.detail": detail,
                    "canaryflow.status.before": state.status.value,
                    "canaryflow.status.after": decision.state.status.value,
                }
            )
            log.warning("reconcile: %s", detail)
            await self._publish(state.release_id, decision)

    async def reconcile_forever(self, every_seconds: float) -> None:
        while True:
            # Sleep first: a planner that has just started has a backlog of events to take,
            # and a pass reads every release; the net is for what events left unsettled.
            await asyncio.sleep(every_seconds)
            try:
                await self.reconcile_once()
            except Exception:
                # The bus or the bucket may be briefly away; the next pass tries again.
                log.exception("reconcile pass failed")


def export_gauges(states: list[ReleaseState]) -> None:
    """Releases by status and each target's canary share, as the state in the bucket says."""
    metrics = observability.service_metrics()
    counts = release_counts(states)
    for status in ReleaseStatus:
        metrics.releases.labels(status.value).set(counts[status])
    for (namespace, name), weight in canary_weights(states).items():
        metrics.canary_weight.labels(namespace, name).set(weight)


def export_weight(state: ReleaseState) -> None:
    """The target's canary share after a transition of its (only) release in flight."""
    weight = canary_weights([state])[(state.target.namespace, state.target.name)]
    observability.service_metrics().canary_weight.labels(
        state.target.namespace, state.target.name
    ).set(weight)


# The events the planner follows, each with its own durable consumer.
FOLLOWED: tuple[tuple[type[EventData], str], ...] = (
    (PhaseReached, "phase-reached"),
    (PhaseFailed, "phase-failed"),
    (AnalysisVerdict, "verdict"),
    (PromotionCompleted, "promotion-completed"),
    (RollbackRequested, "rollback-requested"),
    (RollbackCompleted, "rollback-completed"),
    (RollbackFailed, "rollback-failed"),
    (PauseRelease, "pause"),
    (ResumeRelease, "resume"),
    (AbortRelease, "abort"),
    (PromoteNow, "promote-now"),
    (SetWeight, "set-weight"),
    (HookCompleted, "hook-completed"),
    (OpenGate, "open-gate"),
    (GroupPromoteMember, "group-promote-member"),
)


def _routine_verdict(envelope: Envelope[Any]) -> bool:
    """A verdict the planner only records: no span of its own (see tracing.MessageTracing).

    The metrics-watcher's verdict span, with the evidence, stands for it in the trace; one
    analysis tick every few seconds would otherwise add a planner span that says "nothing
    changed" and costs the planner a tenth of its work on the message.
    """
    return isinstance(envelope.data, AnalysisVerdict) and envelope.data.routine


def build_service(
    settings: Settings,
    cluster_reader: ClusterReader | None = None,
    *,
    clock: Clock = utc_now,
    timings: ReconcileTimings = DEFAULT_TIMINGS,
) -> Service:
    """The composition: the real adapters (or the test's), the handlers, routes and loop."""
    service = Service(settings)
    cluster = cluster_reader or KubeClusterReader(settings.kubeconfig)
    planner = Planner(
        lambda: service.store,
        service.publisher,
        cluster,
        clock,
        timings,
        routers=settings.enabled_routers,
        groups=lambda: service.store,
    )
    pipeline_coordinator = PipelineCoordinator(
        lambda: service.store, service.publisher, cluster, clock, routers=settings.enabled_routers
    )
    coordinator = GroupCoordinator(
        lambda: service.store,
        service.publisher,
        cluster,
        clock,
        routers=settings.enabled_routers,
        pipelines=pipeline_coordinator.advance,
    )
    service.route(
        planner.routes(settings.subjects.requests())
        + coordinator.routes()
        + pipeline_coordinator.routes()
    )

    async def reconcile_loop() -> None:
        await planner.reconcile_forever(settings.reconcile_seconds)

    async def group_loop() -> None:
        while True:
            await asyncio.sleep(settings.reconcile_seconds)
            try:
                await coordinator.reconcile_once()
                await pipeline_coordinator.reconcile_once()
            except Exception:
                log.exception("group reconcile pass failed")

    service.every(group_loop)

    service.every(reconcile_loop)
    return service
