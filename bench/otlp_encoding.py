"""CPU per span of encoding a batch for OTLP: the SDK's encoder and ours (runtime/otlp.py).

The measured reason for keeping a hand-written encoder, measured alone (no stack needed): a
batch as the services' BatchSpanProcessor sends it (512 spans: consumer spans with the bus's
attributes, each with a Kubernetes write span under it), encoded to bytes by each encoder
in turn, the best of several repeats.

    .venv/bin/python bench/otlp_encoding.py [--batches 50] [--repeats 7]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import timeit
from collections.abc import Callable

from google.protobuf.internal import api_implementation  # type: ignore[import-untyped]
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from canaryflow.runtime import otlp

BATCH = 512  # the BatchSpanProcessor's default max_export_batch_size


def batch() -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "executor"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("canaryflow", "0.1.0")
    for n in range(BATCH // 2):
        release = f"web-{n}"
        subject = f"canaryflow.events.release.{release}.phase-started"
        with tracer.start_as_current_span(f"{subject} process", kind=SpanKind.CONSUMER) as span:
            span.set_attributes(
                {
                    "messaging.system": "nats",
                    "messaging.operation.type": "process",
                    "messaging.destination.name": subject,
                    "messaging.message.id": f"{release}.phase-started.3",
                    "canaryflow.release_id": release,
                    "canaryflow.event_type": "io.canaryflow.release.phase-started.v1",
                    "messaging.nats.delivery_attempt": 1,
                }
            )
            with tracer.start_as_current_span("k8s PATCH deployments", kind=SpanKind.CLIENT) as k:
                k.set_attribute("k8s.namespace.name", "default")
    provider.shutdown()
    return list(exporter.get_finished_spans())


def per_span_us(encode: Callable[[], bytes], batches: int, repeats: int) -> float:
    return min(timeit.repeat(encode, number=batches, repeat=repeats)) / batches / BATCH * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    spans = batch()
    assert len(spans) == BATCH
    assert otlp.encode_spans(spans) == sdk_encode(spans).SerializePartialToString()
    sdk = per_span_us(
        lambda: sdk_encode(spans).SerializePartialToString(), args.batches, args.repeats
    )
    ours = per_span_us(lambda: otlp.encode_spans(spans), args.batches, args.repeats)
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http", "protobuf")
    )
    print(f"{versions} ({api_implementation.Type()} backend)")
    print(f"a batch of {BATCH} spans, best of {args.repeats} x {args.batches} batches:")
    print(f"  SDK encoder   {sdk:6.1f} µs per span")
    print(f"  runtime.otlp  {ours:6.1f} µs per span ({sdk / ours:.1f}x faster)")


if __name__ == "__main__":
    main()
