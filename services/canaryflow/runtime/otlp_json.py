"""OTLP/HTTP with JSON bodies: the span exporter the services use by default.

Why not the SDK's protobuf exporter: building the protobuf messages in Python costs about
40 µs per span, and a service handling an event makes five to ten spans (the consumer, the
publishes, every Kubernetes write), which alone took tracing over its 10 % budget in
``make bench``. The same spans as OTLP/JSON (part of the OTLP specification, accepted by
any OpenTelemetry Collector and by Jaeger) cost about a third of that, because the encoding
is plain dicts handed to the C JSON encoder. ``OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf``
selects the SDK's exporter instead.

The endpoint, headers and timeout come from the standard OTEL_EXPORTER_OTLP_* variables.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote

import httpx
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "http://localhost:4318"
DEFAULT_TIMEOUT_MS = 10_000
# As the OTLP specification asks: retry what may pass later, with growing waits.
RETRY_DELAYS_SECONDS = (0.5, 1.0, 2.0, 4.0)
RETRYABLE_STATUS = frozenset({408, 429, 502, 503, 504})

# OTLP's enums (opentelemetry/proto/trace/v1/trace.proto).
_KINDS = {
    SpanKind.INTERNAL: 1,
    SpanKind.SERVER: 2,
    SpanKind.CLIENT: 3,
    SpanKind.PRODUCER: 4,
    SpanKind.CONSUMER: 5,
}
_STATUS = {StatusCode.UNSET: 0, StatusCode.OK: 1, StatusCode.ERROR: 2}


def _value(value: Any) -> dict[str, Any]:
    """An attribute value as OTLP/JSON's AnyValue (64-bit integers travel as strings)."""
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, bytes):
        return {"stringValue": value.decode(errors="replace")}
    return {"arrayValue": {"values": [_value(item) for item in value]}}


def _attributes(attributes: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    # Strings are most attributes: they skip the type dispatch (this runs for every span).
    return [
        {"key": key, "value": {"stringValue": value} if type(value) is str else _value(value)}
        for key, value in (attributes or {}).items()
    ]


def _span(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    assert context is not None
    encoded: dict[str, Any] = {
        "traceId": f"{context.trace_id:032x}",
        "spanId": f"{context.span_id:016x}",
        "name": span.name,
        "kind": _KINDS.get(span.kind, 1),
        "startTimeUnixNano": str(span.start_time or 0),
        "endTimeUnixNano": str(span.end_time or 0),
        "attributes": _attributes(span.attributes),
        "status": {"code": _STATUS[span.status.status_code]},
    }
    if span.parent is not None:
        encoded["parentSpanId"] = f"{span.parent.span_id:016x}"
    if span.status.description:
        encoded["status"]["message"] = span.status.description
    if span.events:
        encoded["events"] = [
            {
                "timeUnixNano": str(event.timestamp),
                "name": event.name,
                "attributes": _attributes(event.attributes),
            }
            for event in span.events
        ]
    if span.links:
        encoded["links"] = [
            {
                "traceId": f"{link.context.trace_id:032x}",
                "spanId": f"{link.context.span_id:016x}",
                "attributes": _attributes(link.attributes),
            }
            for link in span.links
        ]
    return encoded


def encode(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """An ExportTraceServiceRequest in OTLP/JSON: spans grouped by resource and scope."""
    by_resource: dict[int, tuple[Any, dict[tuple[str, str], list[dict[str, Any]]]]] = {}
    for span in spans:
        resource = span.resource
        _, scopes = by_resource.setdefault(id(resource), (resource, {}))
        scope = span.instrumentation_scope
        key = (scope.name, scope.version or "") if scope is not None else ("", "")
        scopes.setdefault(key, []).append(_span(span))
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": _attributes(resource.attributes)},
                "scopeSpans": [
                    {"scope": {"name": name, "version": version}, "spans": encoded}
                    for (name, version), encoded in scopes.items()
                ],
            }
            for resource, scopes in by_resource.values()
        ]
    }


def _env(name: str) -> str:
    return os.environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or os.environ.get(
        f"OTEL_EXPORTER_OTLP_{name}", ""
    )


def _headers(raw: str) -> dict[str, str]:
    """``key1=value1,key2=value2`` (values URL-encoded), as the OTLP exporter spec says."""
    headers = {}
    for item in raw.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            headers[key.strip()] = unquote(value.strip())
    return headers


def traces_endpoint() -> str:
    """The URL spans are posted to, from the standard variables."""
    if specific := os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return specific
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or DEFAULT_ENDPOINT
    return f"{base.rstrip('/')}/v1/traces"


class OtlpJsonSpanExporter(SpanExporter):
    def __init__(
        self,
        endpoint: str | None = None,
        timeout_seconds: float | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.endpoint = endpoint or traces_endpoint()
        if timeout_seconds is None:
            raw = _env("TIMEOUT")
            timeout_seconds = (float(raw) if raw else DEFAULT_TIMEOUT_MS) / 1000
        self._client = httpx.Client(
            timeout=timeout_seconds,
            headers={"Content-Type": "application/json", **_headers(_env("HEADERS"))},
            trust_env=False,
            transport=transport,
        )
        self._stopped = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Post the batch; a busy or briefly unreachable collector is retried with back-off.

        This runs in the batch processor's own thread, so the waits hold up no handler.
        """
        body = json.dumps(encode(spans), separators=(",", ":")).encode()
        problem = ""
        for delay in (*RETRY_DELAYS_SECONDS, None):
            try:
                response = self._client.post(self.endpoint, content=body)
            except httpx.HTTPError as error:
                problem = repr(error)
            else:
                if response.status_code < 300:
                    return SpanExportResult.SUCCESS
                problem = f"HTTP {response.status_code} {response.text[:200]}"
                if response.status_code not in RETRYABLE_STATUS:
                    break
            if delay is None or self._stopped.wait(delay):
                break
        log.warning("could not export %d span(s) to %s: %s", len(spans), self.endpoint, problem)
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._stopped.set()
        self._client.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
