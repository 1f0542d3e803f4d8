"""How a service's tracing is configured from the standard OTEL_* variables."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from canaryflow.runtime import observability, tracing

# A requester whose own trace was not sampled (flags 00).
UNSAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """configure_tracing without exporting, and without touching the process's global state."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.setattr(trace, "set_tracer_provider", lambda provider: None)
    monkeypatch.setattr(tracing, "_tracer", tracing._tracer)  # restored afterwards
    return monkeypatch


def _span_under_unsampled_requester(provider: TracerProvider) -> trace.Span:
    parent = tracing.context_from({"traceparent": UNSAMPLED})
    span = provider.get_tracer("test").start_span("release web-42", context=parent)
    span.end()
    return span


def test_a_release_is_traced_even_when_its_requester_was_not_sampled(
    configure: pytest.MonkeyPatch,
) -> None:
    provider = observability.configure_tracing("planner")
    span = _span_under_unsampled_requester(provider)
    assert span.is_recording() is False  # ended
    context = span.get_span_context()
    assert context.trace_flags.sampled
    assert f"{context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"  # same trace


def test_a_sampler_named_in_the_environment_is_obeyed(configure: pytest.MonkeyPatch) -> None:
    configure.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    provider = observability.configure_tracing("planner")
    span = _span_under_unsampled_requester(provider)
    assert not span.get_span_context().trace_flags.sampled
