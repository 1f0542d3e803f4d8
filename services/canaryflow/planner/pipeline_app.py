"""Release pipelines as part of the planner service: requests and gate openings in, pipeline
state written with compare-and-set, environment releases requested.

The handlers only translate; ``pipelines`` decides. The outcome of an environment's release
reaches its pipeline through ``group_app``'s member-event consumers (one set of consumers for
both kinds of coordinator).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any, Protocol

from canaryflow.planner import pipelines
from canaryflow.planner.machine import Command
from canaryflow.planner.pipelines import PipelineDecision
from canaryflow.planner.planning import Admission, Refusal
from canaryflow.planner.validation import ClusterReader, validate
from canaryflow.runtime import operators, tracing
from canaryflow.runtime.bus import Delivery
from canaryflow.runtime.ports import Publisher
from canaryflow.runtime.service import Route
from canaryflow.runtime.store import StaleWrite, Versioned, VersionedPipeline
from canaryflow_contracts import Envelope
from canaryflow_contracts.events import (
    OpenPipelineGate,
    PipelineRequested,
    ReleaseRequested,
    TargetRef,
)
from canaryflow_contracts.state import PipelineState, ReleaseState

CAS_ATTEMPTS = 10

log = logging.getLogger(__name__)


class PipelineStore(Protocol):
    async def get(self, release_id: str) -> Versioned | None: ...
    async def holder_of(self, target: TargetRef) -> str | None: ...
    async def get_pipeline(self, pipeline_id: str) -> VersionedPipeline | None: ...
    async def create_pipeline(self, state: PipelineState) -> int: ...
    async def update_pipeline(self, state: PipelineState, revision: int) -> int: ...
    async def all_pipelines(self) -> list[VersionedPipeline]: ...


class PipelineCoordinator:
    def __init__(
        self,
        store: Callable[[], PipelineStore],
        publisher: Publisher,
        cluster: ClusterReader,
        clock: Callable[[], datetime],
        *,
        routers: Collection[str],
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._cluster = cluster
        self._clock = clock
        self._routers = routers

    def routes(self) -> tuple[Route[Any], ...]:
        return (
            Route(PipelineRequested, "pipeline-requested", self.on_request),
            Route(OpenPipelineGate, "pipeline-open-gate", self.on_open_gate),
        )

    async def on_request(
        self, event: Envelope[PipelineRequested], delivery: Delivery | None = None
    ) -> None:
        pipeline_id = event.subject
        tracing.handling(f"pipeline {pipeline_id}")
        for _ in range(CAS_ATTEMPTS):
            current = await self._store().get_pipeline(pipeline_id)
            if current is not None:
                if current.state.request_id == event.id:
                    await self._advance(current)  # a redelivery: publish what is due
                else:
                    log.warning("pipeline %s exists: request %s ignored", pipeline_id, event.id)
                return
            reasons = await self._check(pipeline_id, event.data)
            decision = pipelines.plan(pipeline_id, event, self._clock(), reasons)
            assert decision.state is not None
            state = decision.state.model_copy(
                update={"trace_parent": tracing.current_traceparent()}
            )
            try:
                revision = await self._store().create_pipeline(state)
            except StaleWrite:
                continue
            await self._publish(state, decision.commands)
            if not reasons:
                await self._advance(VersionedPipeline(state, revision))
            return
        raise RuntimeError(f"pipeline {pipeline_id}: state kept changing under us")

    async def _check(self, pipeline_id: str, request: PipelineRequested) -> list[str]:
        """Its shape, each environment against its policy, and the version already in flight
        (a release of the target in an environment, or another pipeline moving it)."""
        reasons = pipelines.check(pipeline_id, request)
        now = self._clock()
        for env in request.environments:
            target = TargetRef(namespace=env.namespace, name=request.target)
            as_release = ReleaseRequested(
                target=target, version=request.version, requested_by=request.requested_by
            )
            admitted = await validate(as_release, self._cluster, now, self._routers)
            if isinstance(admitted, Refusal):
                reasons += [f"{env.name}: {reason}" for reason in admitted.reasons]
            holder = await self._store().holder_of(target)
            if holder is not None:
                reasons.append(
                    f"{env.name}: Deployment {target.key()} already has a release in flight: "
                    f"{holder}"
                )
        for other in await self._store().all_pipelines():
            theirs = other.state
            same = theirs.target == request.target and theirs.version == request.version
            if same and not theirs.status.terminal and theirs.pipeline_id != pipeline_id:
                reasons.append(
                    f"version {request.version.image} of {request.target} is already in flight "
                    f"in pipeline {theirs.pipeline_id} ({theirs.status.value})"
                )
        return reasons

    async def on_open_gate(
        self, event: Envelope[OpenPipelineGate], delivery: Delivery | None = None
    ) -> None:
        pipeline_id = event.subject
        tracing.handling(f"pipeline {pipeline_id}: open gate {event.data.environment}")
        for _ in range(CAS_ATTEMPTS):
            current = await self._store().get_pipeline(pipeline_id)
            if current is None:
                log.info("no pipeline %s: gate not opened", pipeline_id)
                return
            stage = pipelines.waiting_for(current.state)
            if stage is None or stage.name != event.data.environment:
                log.info("pipeline %s does not wait at %s", pipeline_id, event.data.environment)
                return
            target = pipelines.target_of(current.state, stage)
            refused = await self._refusal(current.state, target, event)
            if refused is not None:
                notice = operators.refusal_notice(target, event.data, refused)
                await self._publisher.publish(
                    notice,
                    stage.release_id,
                    event_id=operators.refused_id(stage.release_id, event.id),
                )
                return
            data = event.data
            decision = pipelines.open_gate(
                current.state, data.environment, data.actor, data.reason, self._clock()
            )
            if decision.state is None:
                return
            try:
                revision = await self._store().update_pipeline(decision.state, current.revision)
            except StaleWrite:
                continue
            await self._publish(decision.state, decision.commands)
            await self._advance(VersionedPipeline(decision.state, revision))
            return
        raise RuntimeError(f"pipeline {pipeline_id}: state kept changing under us")

    async def _refusal(
        self, pipeline: PipelineState, target: TargetRef, event: Envelope[OpenPipelineGate]
    ) -> str | None:
        """The environment's ReleasePolicy says who may open its gate."""
        request = ReleaseRequested(
            target=target, version=pipeline.version, requested_by=pipeline.requested_by
        )
        admitted = await validate(request, self._cluster, self._clock(), self._routers)
        if not isinstance(admitted, Admission):
            return "; ".join(admitted.reasons)
        return operators.command_refusal(admitted.operators, event, self._clock())

    async def advance(self, pipeline_id: str) -> None:
        for _ in range(CAS_ATTEMPTS):
            current = await self._store().get_pipeline(pipeline_id)
            if current is None or await self._advance(current):
                return
        raise RuntimeError(f"pipeline {pipeline_id}: state kept changing under us")

    async def _releases(self, pipeline: PipelineState) -> dict[str, ReleaseState | None]:
        found: dict[str, ReleaseState | None] = {}
        for stage in pipeline.stages:
            versioned = await self._store().get(stage.release_id)
            found[stage.release_id] = versioned.state if versioned is not None else None
        return found

    async def _advance(self, current: VersionedPipeline) -> bool:
        releases = await self._releases(current.state)
        decision: PipelineDecision = pipelines.advance(current.state, releases, self._clock())
        if decision.state is None:
            return True
        try:
            await self._store().update_pipeline(decision.state, current.revision)
        except StaleWrite:
            return False
        log.info("pipeline %s: %s", decision.state.pipeline_id, decision.state.status.value)
        await self._publish(decision.state, decision.commands)
        return True

    async def _publish(self, pipeline: PipelineState, commands: list[Command]) -> None:
        with tracing.within(pipeline.trace_parent):
            for command in commands:
                await self._publisher.publish(
                    command.data,
                    command.subject_key or pipeline.pipeline_id,
                    event_id=command.event_id,
                )

    async def reconcile_once(self) -> None:
        for versioned in await self._store().all_pipelines():
            if versioned.state.status.terminal:
                continue
            try:
                await self._advance(versioned)
                latest = await self._store().get_pipeline(versioned.state.pipeline_id)
                if latest is None:
                    continue
                again = pipelines.reissue(
                    latest.state, await self._releases(latest.state), self._clock()
                )
                await self._publish(latest.state, again)
            except StaleWrite:
                continue
