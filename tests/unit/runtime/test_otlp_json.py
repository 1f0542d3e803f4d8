"""Spans as OTLP/JSON, and how the exporter treats a collector that is busy or refuses."""

from __future__ import annotations

import json

import httpx
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from canaryflow.runtime import otlp_json


def _spans() -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "canaryflow-test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("canaryflow", "1.0")
    attributes: dict[str, AttributeValue] = {
        "s": "x",
        "i": 42,
        "f": 0.5,
        "b": True,
        "l": ["a", "b"],
    }
    with (
        tracer.start_as_current_span("root", kind=SpanKind.SERVER, attributes=attributes),
        tracer.start_as_current_span("child", kind=SpanKind.PRODUCER) as child,
    ):
        child.add_event("retry", {"attempt": 2})
        child.set_status(Status(StatusCode.ERROR, "stream unavailable"))
    return list(exporter.get_finished_spans())


def test_spans_are_grouped_by_resource_and_scope_with_hex_ids_and_typed_values() -> None:
    spans = _spans()
    body = otlp_json.encode(spans)
    (resource_spans,) = body["resourceSpans"]
    resource = {a["key"]: a["value"] for a in resource_spans["resource"]["attributes"]}
    assert resource["service.name"] == {"stringValue": "canaryflow-test"}
    (scope,) = resource_spans["scopeSpans"]
    assert scope["scope"] == {"name": "canaryflow", "version": "1.0"}
    child, root = scope["spans"]
    assert len(root["traceId"]) == 32 and len(root["spanId"]) == 16
    assert child["parentSpanId"] == root["spanId"] and "parentSpanId" not in root
    assert (root["kind"], child["kind"]) == (2, 4)
    values = {a["key"]: a["value"] for a in root["attributes"]}
    assert values == {
        "s": {"stringValue": "x"},
        "i": {"intValue": "42"},
        "f": {"doubleValue": 0.5},
        "b": {"boolValue": True},
        "l": {"arrayValue": {"values": [{"stringValue": "a"}, {"stringValue": "b"}]}},
    }
    assert child["status"] == {"code": 2, "message": "stream unavailable"}
    assert child["events"][0]["name"] == "retry"
    assert int(child["endTimeUnixNano"]) >= int(child["startTimeUnixNano"]) > 0
    json.dumps(body)  # plain JSON all the way down


def test_a_busy_collector_is_retried_and_a_refusal_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(otlp_json, "RETRY_DELAYS_SECONDS", (0.0, 0.0))
    answers = [503, 200]
    seen: list[str] = []

    def collector(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["content-type"])
        return httpx.Response(answers.pop(0))

    exporter = otlp_json.OtlpJsonSpanExporter(
        "http://collector/v1/traces", transport=httpx.MockTransport(collector)
    )
    assert exporter.export(_spans()) is SpanExportResult.SUCCESS
    assert seen == ["application/json", "application/json"]

    answers[:] = [400]
    assert exporter.export(_spans()) is SpanExportResult.FAILURE
    assert answers == []
    exporter.shutdown()


def test_the_endpoint_and_headers_come_from_the_standard_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318/")
    assert otlp_json.traces_endpoint() == "http://jaeger:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://other/traces")
    assert otlp_json.traces_endpoint() == "http://other/traces"
    assert otlp_json._headers("api-key=a%20b, tenant=shop,broken") == {
        "api-key": "a b",
        "tenant": "shop",
    }
