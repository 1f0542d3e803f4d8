"""The trace-context helpers that keep a release in one trace: ids, parsing, re-entry, evidence."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from canaryflow.runtime import tracing
from canaryflow_contracts.events import (
    AnalysisVerdict,
    PhaseReached,
    PlannedStep,
    VerdictAction,
    VerdictResult,
)
from tests.unit.planner.factory import CHECK, TARGET

ROOT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(id_generator=tracing.ReleaseIdGenerator())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    provider.shutdown()


def test_a_release_without_a_requester_context_has_a_stable_trace_id_per_installation() -> None:
    first = tracing.release_trace_id("canaryflow", "web-42")
    assert first == tracing.release_trace_id("canaryflow", "web-42")
    assert first != tracing.release_trace_id("canaryflow", "web-43")
    assert first != tracing.release_trace_id("staging", "web-42")
    assert 0 < first < 2**128


def test_the_release_trace_id_is_the_first_half_of_a_sha256() -> None:
    # Kept stable across versions: a request redelivered after an upgrade stays in its trace.
    digest = hashlib.sha256(b"canaryflow/web-42").hexdigest()
    assert tracing.release_trace_id("canaryflow", "web-42") == int(digest[:32], 16)


@pytest.mark.parametrize(
    "headers",
    [
        {"traceparent": ROOT},
        {"traceparent": ROOT[:-2] + "00"},  # not sampled
        {"traceparent": ROOT, "tracestate": "vendor=value,other=x"},
        {"traceparent": "00-" + "0" * 32 + "-b7ad6b7169203331-01"},  # invalid trace id
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01"},
        {"traceparent": ROOT.upper()},
        {"traceparent": " " + ROOT},
        {"traceparent": "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future"},
        {"traceparent": "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        {"traceparent": ROOT + "-extra"},
        {"traceparent": "garbage"},
        {"Nats-Msg-Id": "web-42.reached.0"},
        {},
    ],
)
def test_the_context_read_from_headers_is_the_propagators(headers: dict[str, str]) -> None:
    ours = trace.get_current_span(tracing.context_from(headers)).get_span_context()
    sdk = trace.get_current_span(TraceContextTextMapPropagator().extract(headers))
    assert ours == sdk.get_span_context()
    assert ours.trace_state == sdk.get_span_context().trace_state


def _reached() -> PhaseReached:
    return PhaseReached(
        target=TARGET,
        step=PlannedStep(index=0, weight=10, hold_seconds=8),
        canary_weight=10,
        canary_ready=1,
        stable_ready=9,
    )


def test_the_headers_written_are_the_propagators(spans: InMemorySpanExporter) -> None:
    requester = tracing.context_from({"traceparent": ROOT, "tracestate": "vendor=value"})
    reached = _reached()
    with (
        tracing.tracer().start_as_current_span("handler", context=requester),
        tracing.publishing(reached, "web-42", "e-1", "subject") as headers,
    ):
        expected: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(expected)
    assert headers == expected
    assert headers["tracestate"] == "vendor=value"


def test_a_traceparent_yields_its_trace_id_and_anything_else_none() -> None:
    assert tracing.trace_id_of(ROOT) == "0af7651916cd43dd8448eb211c80319c"
    assert tracing.trace_id_of(ROOT.upper()) == "0af7651916cd43dd8448eb211c80319c"
    assert tracing.trace_id_of("") == ""
    assert tracing.trace_id_of("00-" + "0" * 32 + "-b7ad6b7169203331-01") == ""
    assert tracing.trace_id_of("garbage") == ""


def test_within_enters_the_release_trace_from_outside_any_span(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.within(ROOT), tracing.span("reconcile", "web-42"):
        pass
    (span,) = spans.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == tracing.trace_id_of(ROOT)
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "b7ad6b7169203331"
    assert span.attributes is not None and span.attributes[tracing.RELEASE_ID] == "web-42"


def test_within_keeps_the_causal_parent_when_already_in_the_release_trace(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.span("handler", "web-42") as handler:
        stored = tracing.traceparent_of(handler)
        with tracing.within(stored), tracing.span("decide", "web-42") as inner:
            assert trace.get_current_span() is inner
    inner_span, outer_span = spans.get_finished_spans()
    assert inner_span.parent is not None
    assert inner_span.parent.span_id == outer_span.context.span_id


def test_within_replaces_a_foreign_trace_with_the_release_one(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.span("foreign", "web-42"), tracing.within(ROOT):
        assert tracing.trace_id_of(tracing.current_traceparent()) == tracing.trace_id_of(ROOT)


def test_the_id_generator_gives_a_forced_trace_id_only_while_forced() -> None:
    generator = tracing.ReleaseIdGenerator()
    token = tracing._forced_trace_id.set(42)
    try:
        assert generator.generate_trace_id() == 42
    finally:
        tracing._forced_trace_id.reset(token)
    assert generator.generate_trace_id() != 42


def _verdict() -> AnalysisVerdict:
    return AnalysisVerdict(
        target=TARGET,
        step=PlannedStep(index=1, weight=30, hold_seconds=8),
        result=VerdictResult.FAIL,
        action=VerdictAction.ROLLBACK,
        final=True,
        reason="errors 0.2 > 0.05",
        checks=[CHECK],
    )


def test_a_verdict_becomes_searchable_attributes_with_its_whole_evidence() -> None:
    attributes = tracing.verdict_attributes(_verdict())
    assert attributes["canaryflow.verdict.result"] == "fail"
    assert attributes["canaryflow.verdict.action"] == "rollback"
    assert attributes["canaryflow.verdict.final"] is True
    assert attributes[tracing.STEP] == 1 and attributes[tracing.WEIGHT] == 30
    assert attributes["canaryflow.check.errors.canary.value"] == 0.2
    assert attributes["canaryflow.check.errors.canary.threshold"] == 0.05
    assert attributes["canaryflow.check.errors.canary.passed"] is False
    assert "canaryflow.check.errors.canary.query" not in attributes  # in the evidence
    evidence = attributes["canaryflow.verdict.evidence"]
    assert isinstance(evidence, str)
    assert json.loads(evidence)[0]["value"] == 0.2
    assert "query" not in json.loads(evidence)[0]  # the PromQL stays in the event
    assert all(value is not None for value in attributes.values())


@dataclass(frozen=True)
class Reached:
    canary_ready: int
    weight: float
    note: str
    pods: tuple[str, ...] = ()


def test_an_outcome_becomes_attributes() -> None:
    attributes = tracing.outcome_attributes(Reached(canary_ready=1, weight=10.0, note="ok"))
    assert attributes == {
        "canaryflow.outcome": "reached",
        "canaryflow.outcome.canary_ready": 1,
        "canaryflow.outcome.weight": 10.0,
        "canaryflow.outcome.note": "ok",
    }


def test_a_publish_carries_the_context_of_the_span_that_publishes(
    spans: InMemorySpanExporter,
) -> None:
    reached = _reached()
    with (
        tracing.span("handler", "web-42") as handler,
        tracing.publishing(
            reached, "web-42", "web-42.reached.0", "canaryflow.phase.reached.v1.web-42"
        ) as headers,
    ):
        context = handler.get_span_context()
    (only,) = spans.get_finished_spans()
    assert only.name == "handler"
    assert headers[tracing.TRACEPARENT].startswith(
        f"00-{context.trace_id:032x}-{context.span_id:016x}-"
    )


def test_a_published_verdict_is_named_by_its_result_and_carries_its_evidence(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.publishing(_verdict(), "web-42", "v-1", "canaryflow.analysis.verdict.v1.web-42"):
        pass
    (span,) = spans.get_finished_spans()
    assert span.name == "verdict fail"
    assert span.kind is SpanKind.PRODUCER
    assert span.attributes is not None
    assert span.attributes["canaryflow.verdict.action"] == "rollback"
    assert span.attributes[tracing.EVENT_ID] == "v-1"


def test_without_tracing_nothing_is_propagated() -> None:
    tracing.use_provider(trace.NoOpTracerProvider())
    assert not tracing.tracer_enabled()
    with tracing.publishing(_verdict(), "web-42", "v-1", "subject") as headers:
        assert headers == {}


def test_a_handler_names_the_span_of_its_message(spans: InMemorySpanExporter) -> None:
    with tracing.span("subject process", "web-42"):
        tracing.handling("apply step 1 (10%)", {tracing.STEP: 0})
    (span,) = spans.get_finished_spans()
    assert span.name == "apply step 1 (10%)"
    assert span.attributes is not None and span.attributes[tracing.STEP] == 0


def test_only_failing_checks_are_flattened() -> None:
    passing = CHECK.model_copy(update={"metric": "latency", "passed": True, "value": 0.1})
    verdict = _verdict().model_copy(update={"checks": [CHECK, passing]})
    attributes = tracing.verdict_attributes(verdict)
    assert attributes["canaryflow.check.errors.canary.passed"] is False
    assert not [key for key in attributes if key.startswith("canaryflow.check.latency")]
    evidence = attributes["canaryflow.verdict.evidence"]
    assert isinstance(evidence, str)
    assert [check["metric"] for check in json.loads(evidence)] == ["errors", "latency"]
