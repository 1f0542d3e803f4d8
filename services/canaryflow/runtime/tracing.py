"""One trace per release, across four processes, redeliveries and the planner's reconcile.

A release is followed in Jaeger as one tree, so every span of it must share one trace id and
have its parent in that trace. The context travels in NATS headers: ``publishing`` puts the
publishing span's ``traceparent`` in the message, and ``MessageTracing`` (which the bus calls
for every message) makes each consumer's span a child of it (JetStream keeps the headers, so
a redelivery continues the same trace). Two cases need more than the headers: where a
release begins, and a message that arrives without a context:

- A release request's consumer span is the release's root (the planner names it
  ``release <id>``), so the whole release hangs off it; a requester that sent a
  ``traceparent`` gets the root as a child of its own span. Without one, the root's trace id
  is derived from the prefix and the release id: a redelivered request (or another request
  reusing the id) lands in the same trace instead of starting a second one, with no lookup
  on the way.
- Any other message without a context (an operator's ``nats pub``, a system that does not
  trace) adopts the release's stored root, read from the release state in the KV bucket.
- Work that starts outside a handler enters the release's trace: the planner's reconcile
  with ``within(state.trace_parent)``, and any other publish with no span current (the
  alert webhook) through the stored root the publisher looks up.

Spans cost the service about 0.1 ms of CPU each in place (made, then encoded and exported),
so a handler names the consumer span after its work (``handling``) instead of opening another.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
    TracerProvider,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue
from pydantic import TypeAdapter

from canaryflow_contracts import MESSAGE_ID_HEADER, EventData, Subjects
from canaryflow_contracts.events import AnalysisVerdict, MetricCheck, ReleaseRequested

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
INSTRUMENTATION = "canaryflow"

# Span attributes canaryflow sets (searchable in Jaeger as tags).
RELEASE_ID = "canaryflow.release.id"
EVENT_ID = "canaryflow.event.id"
STEP = "canaryflow.step"
WEIGHT = "canaryflow.weight"

_TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_propagator = TraceContextTextMapPropagator()
_forced_trace_id: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "canaryflow_forced_trace_id", default=None
)
_tracer: Tracer | None = None


class ReleaseIdGenerator(RandomIdGenerator):
    """Random ids, except a root span started under ``_forced_trace_id`` gets that trace id."""

    def generate_trace_id(self) -> int:
        forced = _forced_trace_id.get()
        return forced if forced is not None else super().generate_trace_id()


def use_provider(provider: TracerProvider) -> None:
    """The provider canaryflow's own spans go to (the service's; tests pass their own)."""
    global _tracer  # noqa: PLW0603 - one provider per process, set where it is configured
    # Kept: the SDK's get_tracer costs ~10 µs a call (it resets a warnings filter each time).
    _tracer = provider.get_tracer(INSTRUMENTATION)


def tracer() -> Tracer:
    return _tracer if _tracer is not None else trace.get_tracer(INSTRUMENTATION)


def tracer_enabled() -> bool:
    """False under OTEL_SDK_DISABLED (or with no SDK): then no lookups are worth making."""
    return not isinstance(tracer(), trace.NoOpTracer)


# --------------------------------------------------------------------------- W3C trace context


def release_trace_id(prefix: str, release_id: str) -> int:
    """The trace id of a release whose requester sent no context: stable per installation."""
    digest = hashlib.sha256(f"{prefix}/{release_id}".encode()).digest()
    return int.from_bytes(digest[:16], "big") or 1  # an all-zero trace id is invalid


def traceparent_of(span: Span) -> str:
    """The span's W3C ``traceparent`` header value, or "" for a non-recording invalid span."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return ""
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def current_traceparent() -> str:
    return traceparent_of(trace.get_current_span())


def context_from(headers: Mapping[str, str] | None) -> otel_context.Context:
    """The producer's context carried in message headers (an empty context if there is none).

    A version-00 ``traceparent`` alone, which is what canaryflow's services send, is read
    here; anything else (a ``tracestate``, another version, something malformed) goes to the
    SDK's propagator. On every message this takes ~5 µs where the propagator takes ~18.
    """
    if not headers or not isinstance(value := headers.get(TRACEPARENT), str):
        return otel_context.Context()
    match = _TRACEPARENT_RE.fullmatch(value)
    if match is None or TRACESTATE in headers:
        return _propagator.extract(headers)
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not trace_id or not span_id:  # invalid, as the propagator also decides
        return otel_context.Context()
    flags = TraceFlags(int(match[3], 16))
    parent = SpanContext(trace_id, span_id, is_remote=True, trace_flags=flags)
    return trace.set_span_in_context(NonRecordingSpan(parent), otel_context.Context())


def _context_headers() -> dict[str, str]:
    """The current span's context as headers (what the propagator's ``inject`` writes)."""
    span = trace.get_current_span()
    if not (traceparent := traceparent_of(span)):
        return {}
    headers = {TRACEPARENT: traceparent}
    if trace_state := span.get_span_context().trace_state:
        headers[TRACESTATE] = trace_state.to_header()
    return headers


def trace_id_of(traceparent: str) -> str:
    """The 32-hex-digit trace id in a ``traceparent`` value, or "" if it is not one."""
    match = _TRACEPARENT_RE.match(traceparent.strip().lower())
    if match is None or match.group(1) == "0" * 32:
        return ""
    return match.group(1)


def in_trace() -> bool:
    """Whether some span is current (a handler's, or one of ours)."""
    return trace.get_current_span().get_span_context().is_valid


@contextlib.contextmanager
def within(traceparent: str) -> Iterator[None]:
    """Make the release's trace current, unless the current span already belongs to it.

    Inside a handler the current span is the causal parent and is kept; outside one (the
    reconcile loop) or under a foreign context the release's stored root becomes the parent.
    """
    if not traceparent:  # most publishes: nothing to re-enter
        yield
        return
    wanted = trace_id_of(traceparent)
    current = trace.get_current_span().get_span_context()
    if not wanted or (current.is_valid and f"{current.trace_id:032x}" == wanted):
        yield
        return
    token = otel_context.attach(context_from({TRACEPARENT: traceparent.strip().lower()}))
    try:
        yield
    finally:
        otel_context.detach(token)


@contextlib.contextmanager
def span(
    name: str,
    release_id: str,
    attributes: dict[str, AttributeValue] | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
) -> Iterator[Span]:
    """A canaryflow span, current inside the block; an exception marks it failed."""
    with tracer().start_as_current_span(
        name,
        kind=kind,
        attributes={RELEASE_ID: release_id, **(attributes or {})},
        record_exception=True,
        set_status_on_exception=True,
    ) as current:
        yield current


def handling(name: str, attributes: dict[str, AttributeValue] | None = None) -> Span:
    """Name the span of the message being handled after what the handler makes of it.

    The consumer span ``MessageTracing`` opened for the message (already tagged with the
    release id) is the handler's span: renaming it (``apply step 2 (30%)`` instead of
    ``<subject> process``) reads better in Jaeger than a child span would, and costs nothing,
    where every extra span costs the service ~0.1 ms.
    """
    current = trace.get_current_span()
    current.update_name(name)
    if attributes:
        current.set_attributes(attributes)
    return current


@contextlib.contextmanager
def publishing(
    data: EventData, release_id: str, event_id: str, subject: str
) -> Iterator[dict[str, str]]:
    """The headers that carry the current span's context to the event's consumers.

    The consumer's span becomes a child of the span that published: the handler's, whose
    name already says what it did. Only a verdict gets a producer span of its own, because
    it carries the verdict's decision and evidence. (FastStream's publish middleware would
    make two spans per publish; at ~0.1 ms a span, that was most of tracing's cost.)
    """
    if not isinstance(data, AnalysisVerdict) or not tracer_enabled():
        yield _context_headers()
        return
    with tracer().start_as_current_span(
        f"verdict {data.result.value}",
        kind=SpanKind.PRODUCER,
        attributes={
            RELEASE_ID: release_id,
            EVENT_ID: event_id,
            "messaging.destination.name": subject,
            **verdict_attributes(data),
        },
    ):
        yield _context_headers()


def mark_failed(current: Span, description: str) -> None:
    current.set_status(Status(StatusCode.ERROR, description))


def outcome_attributes(outcome: object) -> dict[str, AttributeValue]:
    """A step's, promotion's or restore's outcome (a dataclass) as span attributes."""
    attributes: dict[str, AttributeValue] = {"canaryflow.outcome": type(outcome).__name__.lower()}
    if dataclasses.is_dataclass(outcome) and not isinstance(outcome, type):
        for field, value in dataclasses.asdict(outcome).items():
            if isinstance(value, str | bool | int | float):
                attributes[f"canaryflow.outcome.{field}"] = value
    return attributes


# --------------------------------------------------------------------------- verdict evidence


def verdict_decision(verdict: AnalysisVerdict) -> dict[str, AttributeValue]:
    """What a verdict decided, in four attributes."""
    return {
        "canaryflow.verdict.result": verdict.result.value,
        "canaryflow.verdict.action": verdict.action.value,
        "canaryflow.verdict.final": verdict.final,
        "canaryflow.verdict.reason": verdict.reason,
    }


def verdict_attributes(verdict: AnalysisVerdict) -> dict[str, AttributeValue]:
    """A verdict as span attributes: the decision, and the evidence behind it.

    The evidence (every check's values, threshold, sample sizes, statistic, interval and
    decision) is one JSON attribute, for a person reading the span; the PromQL of each check
    stays in the verdict event, because a span pays for every byte on every tick. The checks
    that failed are also flattened (``canaryflow.check.<metric>.<track>.value``,
    ``.threshold``, ``.passed``, ``.sample_size``, ``.statistic``) so a search finds them.
    """
    attributes = verdict_decision(verdict)
    attributes[STEP] = verdict.step.index
    attributes[WEIGHT] = verdict.step.weight
    attributes["canaryflow.verdict.evidence"] = _EVIDENCE.dump_json(
        verdict.checks, exclude_defaults=True, exclude={"__all__": {"query", "baseline_query"}}
    ).decode()
    for check in verdict.checks:
        if check.passed is not False:
            continue
        key = f"canaryflow.check.{_token(check.metric)}.{_token(check.track)}"
        for field in _FLATTENED:
            value = getattr(check, field, None)
            if isinstance(value, bool | int | float):
                attributes[f"{key}.{field}"] = value
    return attributes


_FLATTENED = ("value", "threshold", "passed", "sample_size", "statistic")
# The checks in JSON, serialised by pydantic in one call (a fifth of dumping each in Python).
_EVIDENCE: TypeAdapter[list[MetricCheck]] = TypeAdapter(list[MetricCheck])


def _token(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text) or "_"


# --------------------------------------------------------------------------- consumer spans

# The stored root ``traceparent`` of a release ("" when unknown).
RootLookup = Callable[[str], Awaitable[str]]


class MessageTracing:
    """Each consumed message's span, always in its release's trace (the bus calls ``consuming``).

    It is the only place consumer spans are made (FastStream's telemetry middleware is not
    used): the span's parent is the producer's context from the headers, else the release's
    stored root; a release request without a context becomes the root itself, with the trace
    id derived from the release. One span per message, so the planner's request costs one
    span, not a root plus FastStream's "create" and "process" spans.

    A *quiet* message (one its consumer only takes note of, such as an interim verdict the
    analysis goes on after) gets no span: its handling runs in the producer's span, which
    already stands for it in the trace, and anything it does (a log line, a publish, a
    Kubernetes write) hangs off that span. If its handling fails, a span records the failure.
    """

    def __init__(self, subjects: Subjects, lookup: RootLookup) -> None:
        self._subjects = subjects
        self._lookup = lookup
        self._request_filter = subjects.every(ReleaseRequested).removesuffix("*")

    @contextlib.asynccontextmanager
    async def consuming(
        self, subject: str, headers: Mapping[str, str] | None, *, quiet: bool = False
    ) -> AsyncIterator[Span]:
        """The message's span, current inside the block (a quiet message's: the producer's)."""
        if not tracer_enabled():
            yield trace.INVALID_SPAN
            return
        release_id = Subjects.release_id_of(subject)
        headers = headers or {}
        parent = context_from(headers)
        forced: int | None = None
        if not trace.get_current_span(parent).get_span_context().is_valid:
            if subject.startswith(self._request_filter):
                forced = release_trace_id(self._subjects.prefix, release_id)  # the root
            elif stored := await self._stored_root(release_id):
                # A message from a system that does not trace: it joins the release's trace.
                parent = context_from({TRACEPARENT: stored})
        if quiet:
            token = otel_context.attach(parent)
            try:
                yield trace.get_current_span()
            finally:
                otel_context.detach(token)
            return
        forced_token = _forced_trace_id.set(forced)
        try:
            consumer = _start_consumer_span(subject, release_id, headers, parent)
        finally:
            _forced_trace_id.reset(forced_token)
        # The handler names the span after its work (``handling``) and may add attributes.
        with trace.use_span(
            consumer, end_on_exit=True, record_exception=True, set_status_on_exception=True
        ):
            yield consumer

    async def _stored_root(self, release_id: str) -> str:
        try:
            return await self._lookup(release_id)
        except Exception as error:  # tracing must never stop a message from being handled
            log.warning("could not read the trace of release %s: %r", release_id, error)
            return ""


def failure_span(subject: str, started_ns: int, headers: Mapping[str, str] | None) -> Span:
    """A span for a quiet message whose handling failed, from when it began; end it when done."""
    release_id = Subjects.release_id_of(subject)
    return _start_consumer_span(subject, release_id, headers or {}, None, started_ns)


def _start_consumer_span(
    subject: str,
    release_id: str,
    headers: Mapping[str, str],
    parent: otel_context.Context | None,
    started_ns: int | None = None,
) -> Span:
    attributes: dict[str, AttributeValue] = {
        RELEASE_ID: release_id,
        "messaging.system": "nats",
        "messaging.destination.name": subject,
    }
    if event_id := headers.get(MESSAGE_ID_HEADER):
        # Given now, as one set costs less than a second call (the bus checks the envelope).
        attributes[EVENT_ID] = event_id
    return tracer().start_span(
        f"{subject} process",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        start_time=started_ns,
    )
