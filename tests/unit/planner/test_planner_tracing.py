"""The planner keeps every command of a release in the release's trace.

Handlers publish under the span of the event they handle; the reconcile loop, which runs
outside any handler, must re-enter the trace stored with the release, or each re-issued
command would start a trace of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from canaryflow.planner.app import Planner
from canaryflow.planner.gauges import canary_weights, release_counts
from canaryflow.planner.reconcile import ReconcileTimings
from canaryflow.runtime import tracing
from canaryflow_contracts import Envelope, EventData
from canaryflow_contracts.events import RequestAnalysis, TargetRef
from canaryflow_contracts.state import ReleaseStatus
from tests.unit.planner.factory import RID, FakeCluster, at, envelope, reached
from tests.unit.planner.test_planner_app import Clock, FakeStore, raw_request
from tests.unit.support_state import sample_state


@dataclass
class TracedPublisher:
    """Records each command with the trace id current when it was published."""

    sent: list[tuple[EventData, str]] = field(default_factory=list)

    async def publish(
        self, data: EventData, release_id: str, *, event_id: str | None = None
    ) -> Envelope[Any]:
        self.sent.append((data, tracing.trace_id_of(tracing.current_traceparent())))
        return envelope(data, event_id or "x")


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    provider.shutdown()


def _planner(store: FakeStore, bus: TracedPublisher, clock: Clock) -> Planner:
    timings = ReconcileTimings(grace_seconds=10, completion_grace_seconds=60)
    return Planner(lambda: store, bus, FakeCluster(), clock, timings)


async def test_the_request_trace_is_stored_and_reconcile_reissues_within_it(
    spans: InMemorySpanExporter,
) -> None:
    store, bus, clock = FakeStore(), TracedPublisher(), Clock()
    planner = _planner(store, bus, clock)
    with tracing.span("release", RID) as root:
        await planner.on_request(raw_request())
        stored = tracing.traceparent_of(root)
    state = store.state()
    assert state.trace_parent == stored
    release_trace = tracing.trace_id_of(stored)
    assert {trace_id for _, trace_id in bus.sent} == {release_trace}

    # The executor's answer arrives; then the analysis request goes unanswered.
    with tracing.span("executor", RID):
        await planner.on_event(envelope(reached(state, 0), "reached-0"))
    assert store.state().status is ReleaseStatus.ANALYSING
    bus.sent.clear()
    clock.now = at(3600)
    await planner.reconcile_once()  # outside any span, as in the service's loop

    assert [type(data) for data, _ in bus.sent] == [RequestAnalysis]
    assert bus.sent[0][1] == release_trace
    reconcile = next(s for s in spans.get_finished_spans() if s.name == "reconcile")
    assert f"{reconcile.context.trace_id:032x}" == release_trace
    assert reconcile.parent is not None
    assert reconcile.parent.span_id == root.get_span_context().span_id


async def test_a_handled_event_names_its_span_after_the_transition(
    spans: InMemorySpanExporter,
) -> None:
    store, bus, clock = FakeStore(), TracedPublisher(), Clock()
    planner = _planner(store, bus, clock)
    await planner.on_request(raw_request())
    with tracing.span("consumer", RID):  # as MessageTracing opens it, with the release id
        await planner.on_event(envelope(reached(store.state(), 0), "reached-0"))
    decide = next(s for s in spans.get_finished_spans() if s.name == "decide phase.reached")
    assert decide.attributes is not None
    assert decide.attributes["canaryflow.status.before"] == "applying"
    assert decide.attributes["canaryflow.status.after"] == "analysing"
    assert decide.attributes[tracing.RELEASE_ID] == RID


def test_gauges_count_releases_by_status_and_show_only_live_canaries() -> None:
    web = TargetRef(namespace="shop", name="web")
    api = TargetRef(namespace="shop", name="api")
    live = sample_state("web-2").model_copy(
        update={"status": ReleaseStatus.ANALYSING, "canary_weight": 30.0, "target": web}
    )
    done = sample_state("web-1").model_copy(
        update={"status": ReleaseStatus.SUCCEEDED, "canary_weight": 100.0, "target": web}
    )
    rolled = sample_state("api-1").model_copy(
        update={"status": ReleaseStatus.ROLLED_BACK, "canary_weight": 10.0, "target": api}
    )
    rejected = sample_state("web-3").model_copy(
        update={"status": ReleaseStatus.REJECTED, "target": web}
    )
    states = [done, live, rolled, rejected]
    assert canary_weights(states) == {("shop", "web"): 30.0, ("shop", "api"): 0.0}
    counts = release_counts(states)
    assert counts[ReleaseStatus.ANALYSING] == 1 and counts[ReleaseStatus.SUCCEEDED] == 1
    assert counts[ReleaseStatus.APPLYING] == 0
