"""Our OTLP encoding is the SDK's, byte for byte in meaning, for every kind of span we can make."""

from __future__ import annotations

import importlib.metadata
import re
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.exporter.otlp.proto.http import trace_exporter as sdk_exporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)
from opentelemetry.util.types import AttributeValue

from canaryflow.runtime import otlp

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"
# The packages otlp.py leans on the private parts of (its docstring says which and why).
PINNED = ("opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http")
UPGRADE = (
    "runtime/otlp.py sends its own encoding through the SDK exporter's private _client and "
    "reads its _shutdown: before changing the pin, check that the new SDK's "
    "OTLPSpanExporter.export still only encodes and hands the bytes to self._client.export "
    "(anything more it does, otlp.py must do too or say it does not), run this file and "
    "bench/otlp_encoding.py, then pin the new version in pyproject.toml"
)

REMOTE_PARENT = SpanContext(
    trace_id=0x0AF7651916CD43DD8448EB211C80319C,
    span_id=0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
    trace_state=TraceState([("vendor", "value"), ("other", "x")]),
)


def _provider(exporter: InMemorySpanExporter, service: str, **limits: int) -> TracerProvider:
    provider = TracerProvider(
        resource=Resource.create({"service.name": service, "deployment.environment": "test"}),
        span_limits=SpanLimits(**limits) if limits else None,
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def every_kind_of_span() -> Iterator[list[ReadableSpan]]:
    exporter = InMemorySpanExporter()
    planner = _provider(exporter, "planner")
    tight = _provider(
        exporter,
        "executor",
        max_span_attributes=2,
        max_event_attributes=1,
        max_link_attributes=1,
        max_events=1,
        max_links=1,
    )
    tracer = planner.get_tracer("canaryflow", "1.2.3", schema_url="https://example.com/schema")
    other_scope = planner.get_tracer("kubernetes")
    values: dict[str, AttributeValue] = {
        "short": "web-42",
        "empty": "",
        **{f"edge {n}": "e" * n for n in (125, 126, 127, 128)},  # one- to two-byte lengths
        "long": "x" * 300,
        "huge": "é" * 9000,  # a length needing three varint bytes
        "true": True,
        "false": False,
        "zero": 0,
        "int": 300,
        "negative": -5,
        "big": 2**62,
        "float": 0.25,
        "strings": ["ApplyPhase", "PhaseStarted"],
        "ints": [1, 2, 3],
        "floats": [0.5, -1.5],
        "bools": [True, False],
        "no strings": [],
    }
    with tracer.start_as_current_span("release web-42", kind=SpanKind.CONSUMER) as root:
        root.set_attributes(values)
        root.add_event("validated", {"canaryflow.step": 2, "note": "ok"})
        root.add_event("bare")
        with tracer.start_as_current_span("apply", kind=SpanKind.PRODUCER) as child:
            child.set_status(Status(StatusCode.ERROR, "pods did not become ready"))
            child.record_exception(RuntimeError("boom"))
        with other_scope.start_as_current_span("k8s PATCH deployments", kind=SpanKind.CLIENT):
            pass
    remote = set_span_in_context(NonRecordingSpan(REMOTE_PARENT))
    with tracer.start_as_current_span(
        "verdict pass",
        context=remote,
        kind=SpanKind.SERVER,
        links=[Link(REMOTE_PARENT, {"why": "caused by"}), Link(root.get_span_context())],
    ) as span:
        span.set_status(Status(StatusCode.OK))
    with tight.get_tracer("canaryflow").start_as_current_span(
        "over the limits",
        links=[Link(REMOTE_PARENT), Link(REMOTE_PARENT, {"a": 1, "b": 2})],  # the last kept
    ) as over:
        over.set_attributes({"a": 1, "b": 2, "c": 3})
        over.add_event("first")
        over.add_event("second", {"a": 1, "b": 2})  # the one kept
    yield list(exporter.get_finished_spans())
    planner.shutdown()
    tight.shutdown()


def test_our_encoding_decodes_to_exactly_the_sdk_request(
    every_kind_of_span: list[ReadableSpan],
) -> None:
    ours = otlp.encode_spans(every_kind_of_span)
    theirs = sdk_encode(every_kind_of_span)
    assert ExportTraceServiceRequest.FromString(ours) == theirs
    assert len(ours) == len(theirs.SerializeToString())
    # The cases the spans were made for did happen (else the comparison proves little).
    decoded = ExportTraceServiceRequest.FromString(ours)
    assert len(decoded.resource_spans) == 2
    assert sum(len(r.scope_spans) for r in decoded.resource_spans) == 3
    spans = [s for r in decoded.resource_spans for scope in r.scope_spans for s in scope.spans]
    assert {s.name for s in spans} >= {"release web-42", "verdict pass", "over the limits"}
    assert any(s.dropped_attributes_count and s.dropped_events_count for s in spans)
    assert any(s.dropped_links_count for s in spans)
    assert any(e.dropped_attributes_count for s in spans for e in s.events)
    assert any(link.dropped_attributes_count for s in spans for link in s.links)
    assert any(s.trace_state == "vendor=value,other=x" for s in spans)


def test_an_empty_batch_is_an_empty_request() -> None:
    assert otlp.encode_spans([]) == b""
    assert ExportTraceServiceRequest.FromString(b"") == sdk_encode([])


class _Receiver(BaseHTTPRequestHandler):
    bodies: list[bytes] = []  # noqa: RUF012 - one test's receiver, reset by the fixture

    def do_POST(self) -> None:
        _Receiver.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    _Receiver.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    server.shutdown()
    thread.join(timeout=5)


def test_the_exporter_sends_our_encoding_through_the_sdk_sender(
    every_kind_of_span: list[ReadableSpan], receiver: str
) -> None:
    exporter = otlp.OTLPSpanExporter(endpoint=receiver, timeout=5)
    assert getattr(exporter, "_client", None) is not None, "the SDK's sender moved: fast path lost"
    assert exporter.export(every_kind_of_span) is SpanExportResult.SUCCESS
    exporter.shutdown()  # type: ignore[no-untyped-call]
    (body,) = _Receiver.bodies
    assert body == otlp.encode_spans(every_kind_of_span)


def test_the_exporter_reports_a_refused_batch_as_failed(
    every_kind_of_span: list[ReadableSpan],
) -> None:
    exporter = otlp.OTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces", timeout=0.5)
    assert exporter.export(every_kind_of_span) is SpanExportResult.FAILURE
    exporter.shutdown()  # type: ignore[no-untyped-call]


def _pins() -> dict[str, str]:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    found = (re.fullmatch(r"([A-Za-z0-9_.-]+)==([^,;\s]+)", spec) for spec in dependencies)
    return {match[1]: match[2] for match in found if match}


def test_the_sdk_is_the_exact_version_the_encoder_was_checked_against() -> None:
    pins = _pins()
    for package in PINNED:
        assert package in pins, f"{package} must be pinned exactly (==) in pyproject.toml"
        installed = importlib.metadata.version(package)
        assert installed == pins[package], (
            f"{package} {installed} is installed, {pins[package]} pinned. {UPGRADE}"
        )


def test_the_sdk_exporter_still_has_what_the_encoder_uses() -> None:
    exporter = sdk_exporter.OTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")
    for name in otlp.SDK_PRIVATE_ATTRIBUTES:
        assert hasattr(exporter, name), f"the SDK exporter has no {name}. {UPGRADE}"
    assert callable(exporter._client.export), f"no _client.export. {UPGRADE}"
    assert exporter._shutdown is False, f"_shutdown is no longer a flag. {UPGRADE}"
    exporter.shutdown()  # type: ignore[no-untyped-call]


def test_an_sdk_without_them_is_refused_when_the_exporter_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Loudly, at a service's start: no longer a silent fall back to the slower encoder."""

    def built_differently(self: sdk_exporter.OTLPSpanExporter, **_: object) -> None:
        self._shutdown = False  # and no _client

    monkeypatch.setattr(sdk_exporter.OTLPSpanExporter, "__init__", built_differently)
    with pytest.raises(RuntimeError, match="_client"):
        otlp.OTLPSpanExporter()
