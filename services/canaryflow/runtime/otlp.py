"""The SDK's OTLP/HTTP span exporter, with the batch encoded straight to protobuf bytes.

The SDK encodes a batch by building a protobuf message object for every span, attribute and
value, then serialising it: about 40 µs of CPU per span in our services, spent in the same
process (and, under the GIL, the same CPU time) as the handlers. ``encode_spans`` writes the
same ``ExportTraceServiceRequest`` in the protobuf wire format directly, at about 15 µs per
span; a unit test checks that the SDK decodes it to exactly the message its own encoder
builds. Everything else stays the SDK's: the OTEL_EXPORTER_OTLP_* settings, TLS, compression,
timeouts and retries.

Why it is kept, and what it leans on: the SDK has no hook for the encoding, so ``export``
replaces the SDK exporter's own and hands the bytes to its sender, the private ``_client``
(and reads its private ``_shutdown``). That is worth its upkeep only as long as the SDK
stays the one it was written against: ``opentelemetry-sdk`` and
``opentelemetry-exporter-otlp-proto-http`` are pinned exactly in pyproject.toml (the exporter
pins the packages its sender lives in), an exporter without them refuses to be built (a
service then fails at start, rather than exporting slower unnoticed), and
tests/unit/runtime/test_otlp.py fails when the installed SDK is not the pinned one or its
exporter no longer has them. What the SDK's own ``export`` does besides encoding and sending
(in 1.45: a ``max_request_size`` check, of 64 MiB, and the exporter's metrics of itself when
OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED) is not done here. bench/otlp_encoding.py measures
the two encoders alone, without the stack: re-run it after an upgrade of the SDK or protobuf,
and drop this module the day the SDK's encoder is as fast.

Wire format (https://protobuf.dev/programming-guides/encoding/): a field is a tag byte
(``field_number << 3 | wire_type``) then its value: a varint (type 0), 8 little-endian bytes
(type 1), a varint length and that many bytes (type 2: strings, bytes, nested messages), or 4
little-endian bytes (type 5). Field numbers are those of opentelemetry-proto's trace.proto.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http import trace_exporter as sdk_exporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.util.types import Attributes

log = logging.getLogger(__name__)

_fixed64 = struct.Struct("<Q").pack
_fixed32 = struct.Struct("<I").pack
_double = struct.Struct("<d").pack

# Span.flags: bit 8 says whether the parent's remoteness is known, bit 9 that it is remote.
_PARENT_LOCAL = _fixed32(0x100)
_PARENT_REMOTE = _fixed32(0x300)
# SDK SpanKind (INTERNAL=0 .. CONSUMER=4) to OTLP (SPAN_KIND_INTERNAL=1 ..), as field 6.
_KIND = {value: bytes((0x30, value + 1)) for value in range(5)}
_EMPTY_STATUS = b"\x7a\x00"


# What of the SDK exporter's private state ``export`` uses (see the module's docstring).
SDK_PRIVATE_ATTRIBUTES = ("_client", "_shutdown")


class OTLPSpanExporter(sdk_exporter.OTLPSpanExporter):
    """Configured and sending exactly as the SDK's exporter; only the encoding is ours."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        missing = [name for name in SDK_PRIVATE_ATTRIBUTES if not hasattr(self, name)]
        if not missing and not callable(getattr(self._client, "export", None)):
            missing = ["_client.export"]
        if missing:
            raise RuntimeError(
                f"the OpenTelemetry SDK's OTLP exporter has no {', '.join(missing)}, which "
                "canaryflow.runtime.otlp sends its encoding through: install the versions "
                "pyproject.toml pins, or re-check otlp.py against this SDK"
            )

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:  # the SDK's answer: a warning and FAILURE
            return super().export(spans)
        try:
            payload = encode_spans(spans)
        except Exception:  # a span we cannot encode must not lose the batch: the SDK's way
            log.exception("could not encode %d span(s); using the SDK's encoder", len(spans))
            return super().export(spans)
        result = self._client.export(payload)  # the SDK's sender (endpoint, retries, TLS)
        return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """An OTLP ``ExportTraceServiceRequest``: spans grouped by resource, then by scope."""
    # Grouped by identity: a provider's resource and scopes are the same objects on every span
    # (hashing a Resource dumps its attributes to JSON).
    by_resource: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
    for span in spans:
        _, scopes = by_resource.setdefault(id(span.resource), (span.resource, {}))
        scope = span.instrumentation_scope
        scopes.setdefault(id(scope), (scope, []))[1].append(_span(span))
    request = []
    for resource, scopes in by_resource.values():
        body = [_field(0x0A, _attributes(0x0A, resource.attributes))]  # 1: resource
        for scope, encoded in scopes.values():
            scope_body = [_field(0x0A, _scope(scope))]  # 1: scope
            scope_body += [_field(0x12, span) for span in encoded]  # 2: spans
            if scope is not None and scope.schema_url:
                scope_body.append(_field(0x1A, scope.schema_url.encode()))
            body.append(_field(0x12, b"".join(scope_body)))  # 2: scope_spans
        if resource.schema_url:
            body.append(_field(0x1A, resource.schema_url.encode()))
        request.append(_field(0x0A, b"".join(body)))  # 1: resource_spans
    return b"".join(request)


def _span(span: ReadableSpan) -> bytes:
    context = span.get_span_context()
    assert context is not None  # an SDK span always has one
    parent = span.parent
    parts = [b"\x0a\x10", context.trace_id.to_bytes(16, "big")]  # 1: trace_id
    parts += (b"\x12\x08", context.span_id.to_bytes(8, "big"))  # 2: span_id
    if context.trace_state:  # 3: trace_state
        parts.append(_field(0x1A, context.trace_state.to_header().encode()))
    if parent is not None:  # 4: parent_span_id
        parts += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
    parts += (
        _field(0x2A, span.name.encode()),  # 5: name
        _KIND[span.kind.value],  # 6: kind
        b"\x39",  # 7: start_time_unix_nano
        _fixed64(span.start_time or 0),
        b"\x41",  # 8: end_time_unix_nano
        _fixed64(span.end_time or 0),
        _attributes(0x4A, span.attributes),  # 9: attributes
    )
    if span.dropped_attributes:
        parts.append(b"\x50" + _varint(span.dropped_attributes))  # 10
    for event in span.events:  # 11: events
        body = b"\x09" + _fixed64(event.timestamp) + _field(0x12, event.name.encode())
        body += _attributes(0x1A, event.attributes)
        if event.dropped_attributes:
            body += b"\x20" + _varint(event.dropped_attributes)
        parts.append(_field(0x5A, body))
    if span.dropped_events:
        parts.append(b"\x60" + _varint(span.dropped_events))  # 12
    for link in span.links:  # 13: links
        linked = link.context
        body = b"\x0a\x10" + linked.trace_id.to_bytes(16, "big")
        body += b"\x12\x08" + linked.span_id.to_bytes(8, "big")
        body += _attributes(0x22, link.attributes)
        if link.dropped_attributes:
            body += b"\x28" + _varint(link.dropped_attributes)
        body += b"\x35" + (_PARENT_REMOTE if linked.is_remote else _PARENT_LOCAL)
        parts.append(_field(0x6A, body))
    if span.dropped_links:
        parts.append(b"\x70" + _varint(span.dropped_links))  # 14
    parts.append(_status(span.status.status_code.value, span.status.description))  # 15
    remote_parent = parent is not None and parent.is_remote
    parts += (b"\x85\x01", _PARENT_REMOTE if remote_parent else _PARENT_LOCAL)  # 16: flags
    return b"".join(parts)


def _status(code: int, description: str | None) -> bytes:
    body = _field(0x12, description.encode()) if description else b""  # 2: message
    if code:
        body += bytes((0x18, code))  # 3: code
    return _field(0x7A, body) if body else _EMPTY_STATUS


def _scope(scope: Any) -> bytes:
    if scope is None:
        return b""
    body = _field(0x0A, scope.name.encode()) if scope.name else b""
    if scope.version:
        body += _field(0x12, scope.version.encode())
    return body + _attributes(0x1A, scope.attributes)


# Attribute keys repeat on every span: each is encoded once.
_ENCODED_KEYS: dict[str, bytes] = {}


def _attributes(tag: int, attributes: Attributes) -> bytes:
    """Repeated ``KeyValue`` fields with the given tag."""
    if not attributes:
        return b""
    encoded = []
    for key, value in dict(attributes).items():  # a plain dict iterates faster than the SDK's
        pair = _key_value(key, value)
        encoded.append(_length_prefix(tag, len(pair)) + pair)
    return b"".join(encoded)


def _key_value(key: str, value: Any) -> bytes:
    encoded_key = _ENCODED_KEYS.get(key)
    if encoded_key is None:
        encoded_key = _ENCODED_KEYS.setdefault(key, _field(0x0A, key.encode()))
    if type(value) is str:  # most values: AnyValue{string_value} inline, with short lengths
        raw = value.encode()
        if len(raw) < 0x7E:
            return encoded_key + bytes((0x12, len(raw) + 2, 0x0A, len(raw))) + raw
    return encoded_key + _field(0x12, _any_value(value))


def _any_value(value: Any) -> bytes:
    if isinstance(value, str):
        return _field(0x0A, value.encode())  # 1: string_value
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"  # 2: bool_value
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # 3: int_value (two's complement)
    if isinstance(value, float):
        return b"\x21" + _double(value)  # 4: double_value
    if isinstance(value, bytes):
        return _field(0x3A, value)  # 7: bytes_value
    if isinstance(value, Sequence):  # 5: array_value
        return _field(0x2A, b"".join([_field(0x0A, _any_value(item)) for item in value]))
    if isinstance(value, Mapping):  # 6: kvlist_value
        pairs = [_field(0x0A, _key_value(str(k), v)) for k, v in value.items()]
        return _field(0x32, b"".join(pairs))
    return b""  # None: an empty AnyValue, as the SDK sends it


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return _length_prefix(tag, len(payload)) + payload


def _length_prefix(tag: int, length: int) -> bytes:
    return bytes((tag, length)) if length < 0x80 else bytes((tag,)) + _varint(length)


def _varint(number: int) -> bytes:
    if number < 0x80:
        return bytes((number,))
    out = bytearray()
    while number >= 0x80:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)
