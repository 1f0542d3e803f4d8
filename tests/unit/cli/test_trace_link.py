"""``status`` and ``watch`` lead to the release's trace in Jaeger."""

from __future__ import annotations

from canaryflow.cli import render
from canaryflow_contracts.state import ReleaseStatus
from tests.unit.support_state import sample_state

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_a_traceparent_links_to_its_trace_in_jaeger() -> None:
    assert render.trace_link(TRACEPARENT) == (
        "http://127.0.0.1:16686/trace/0af7651916cd43dd8448eb211c80319c"
    )
    assert render.trace_link(TRACEPARENT, "https://jaeger.example/") == (
        "https://jaeger.example/trace/0af7651916cd43dd8448eb211c80319c"
    )


def test_no_link_without_a_valid_trace() -> None:
    assert render.trace_link("") == ""
    assert render.trace_link("00-" + "0" * 32 + "-b7ad6b7169203331-01") == ""
    assert render.trace_link("not a traceparent") == ""


def test_status_shows_the_trace_link_when_asked_and_known() -> None:
    state = sample_state().model_copy(
        update={"trace_parent": TRACEPARENT, "status": ReleaseStatus.ANALYSING}
    )
    lines = render.status_lines(state, state.created_at, "http://jaeger:16686")
    assert lines[-1] == "  trace: http://jaeger:16686/trace/0af7651916cd43dd8448eb211c80319c"
    assert not any("trace:" in line for line in render.status_lines(state, state.created_at))
    untraced = render.status_lines(sample_state(), state.created_at, "http://jaeger:16686")
    assert not any("trace:" in line for line in untraced)
