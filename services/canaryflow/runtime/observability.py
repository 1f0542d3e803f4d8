"""Logs, traces and metrics for every service, configured the same way everywhere.

Logs are one JSON object per line carrying the trace id and the release id, so a line found
in a log search leads straight to the release's trace in Jaeger. Tracing is configured by the
standard OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, OTEL_SDK_DISABLED);
the trace context crosses NATS in message headers (``tracing.MessageTracing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from canaryflow.runtime import otlp, tracing

_release_id: contextvars.ContextVar[str] = contextvars.ContextVar("release_id", default="")
_event_id: contextvars.ContextVar[str] = contextvars.ContextVar("event_id", default="")

_STANDARD_RECORD_FIELDS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        if release_id := _release_id.get():
            entry["release_id"] = release_id
        if event_id := _event_id.get():
            entry["event_id"] = event_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_process(service: str) -> TracerProvider:
    """The process's telemetry: JSON logs on stderr and the tracer provider (see below).

    Both are global to the process, so they are set up once, by its entry point (a service's
    ``__main__`` through ``service.main``, a bench), never by a constructor: a test that builds
    services keeps its own log capture, and picks its own tracer provider.
    """
    configure_logging(service)
    return configure_tracing(service)


def configure_logging(service: str, level: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("CANARYFLOW_LOG_LEVEL", "INFO"))
    # FastStream logs every message at INFO in its own format; ours carry more and are JSON.
    logging.getLogger("faststream").setLevel(logging.WARNING)


def configure_tracing(service: str) -> TracerProvider:
    """A tracer provider exporting over OTLP/HTTP when an endpoint is configured.

    The standard variables apply: OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
    OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT/HEADERS/TIMEOUT (OTLP/HTTP with protobuf: the SDK's
    exporter, with our encoder), OTEL_TRACES_EXPORTER=otlp|console|none, OTEL_TRACES_SAMPLER,
    OTEL_BSP_* and OTEL_SDK_DISABLED=true (no spans at all).
    """
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)})
    # Every release is traced whole, even under a requester whose own trace was not sampled
    # (the SDK's default would follow the requester and drop it): unless OTEL_TRACES_SAMPLER
    # says otherwise. Also the cheaper sampler (no parent to look up).
    sampler = None if os.environ.get("OTEL_TRACES_SAMPLER") else ALWAYS_ON
    provider = TracerProvider(
        resource=resource, sampler=sampler, id_generator=tracing.ReleaseIdGenerator()
    )
    if (exporter := _span_exporter()) is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        # The global provider can be set once per process (tests run several services in one).
        trace.set_tracer_provider(provider)
    tracing.use_provider(provider)
    return provider


def _span_exporter() -> SpanExporter | None:
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if exporter == "console":
        return ConsoleSpanExporter()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    if exporter != "otlp" or not endpoint:
        return None
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol.strip().lower() != "http/protobuf":
        logging.getLogger(__name__).warning(
            "OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported; exporting with http/protobuf",
            protocol,
        )
    # The SDK's exporter reads the rest of OTEL_EXPORTER_OTLP_* (endpoint, headers, timeout);
    # ours only encodes the batches faster (see otlp).
    return otlp.OTLPSpanExporter()


@contextlib.contextmanager
def release_context(release_id: str, event_id: str = "") -> Iterator[None]:
    """Every log line inside carries this release id (and the event being handled)."""
    release_token = _release_id.set(release_id)
    event_token = _event_id.set(event_id)
    try:
        yield
    finally:
        _event_id.reset(event_token)
        _release_id.reset(release_token)


@dataclass(frozen=True)
class ServiceMetrics:
    """Prometheus metrics shared by the services (each exports the ones it uses)."""

    handling_seconds: Histogram
    redeliveries: Counter
    dead_letters: Counter
    releases: Gauge
    canary_weight: Gauge
    verdicts: Counter
    phase_seconds: Histogram
    restore_seconds: Histogram
    rollbacks_failed: Counter
    commands_refused: Counter


@cache
def service_metrics() -> ServiceMetrics:
    return ServiceMetrics(
        handling_seconds=Histogram(
            "canaryflow_event_handling_seconds",
            "Time to handle one event, by service and handler.",
            ["service", "handler"],
        ),
        redeliveries=Counter(
            "canaryflow_redeliveries_total",
            "Messages received again after a failure or a timeout.",
            ["service", "handler"],
        ),
        dead_letters=Counter(
            "canaryflow_dead_letters_total",
            "Messages given up on and copied to the dead-letter stream.",
            ["service", "handler"],
        ),
        releases=Gauge(
            "canaryflow_releases", "Releases known to this planner, by status.", ["status"]
        ),
        canary_weight=Gauge(
            "canaryflow_canary_weight_percent",
            "Traffic share of the canary reached, per target.",
            ["namespace", "target"],
        ),
        verdicts=Counter(
            "canaryflow_verdicts_total", "Analysis verdicts by result.", ["result", "final"]
        ),
        phase_seconds=Histogram(
            "canaryflow_phase_seconds",
            "Time from a step's command to the step being in place.",
            # Not by target: a histogram per target is 14 series each, and at 1,000 targets
            # rendering them took the executor's loop 85 % of its time (bench/scale.py).
            ["namespace"],
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
        ),
        restore_seconds=Histogram(
            "canaryflow_restore_seconds",
            "Time from a failure being detected to stable serving all traffic.",
            buckets=(0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60),
        ),
        rollbacks_failed=Counter(
            "canaryflow_rollbacks_failed_total",
            "Rollback triggers given up on, by namespace and why: 'final' (no retry can help: "
            "forbidden, invalid) or 'exhausted' (every delivery failed).",
            ["namespace", "why"],
        ),
        commands_refused=Counter(
            "canaryflow_commands_refused_total",
            "Commands not obeyed because no live release asked for them (or its policy "
            "forbids them), by service, command and failed check.",
            ["service", "command", "check"],
        ),
    )


Document = Callable[[], bytes]
Documents = Mapping[str, Document]
# A probe answers (healthy, body): 200 when healthy, else 503 (what Kubernetes' probes read).
Probe = Callable[[], tuple[bool, bytes]]
Probes = Mapping[str, Probe]


def http_application(
    documents: Documents | None = None,
    probes: Probes | None = None,
    registry: Collector = REGISTRY,
) -> web.Application:
    """Each of ``documents`` and ``probes`` by path (JSON, to any method), and the Prometheus
    metrics of ``registry`` to a GET of any other path (``/metrics``), as prometheus_client's
    own servers do. A probe only reads a state, on the loop; a document is made in a thread
    (the AsyncAPI one takes a quarter of a second the first time)."""
    app = web.Application()

    def answer(status: int, body: bytes) -> web.Response:
        return web.Response(status=status, body=body, content_type="application/json")

    for path, probe in (probes or {}).items():

        async def on_probe(request: web.Request, probe: Probe = probe) -> web.Response:
            healthy, body = probe()
            return answer(200 if healthy else 503, body)

        app.router.add_route("*", path, on_probe)
    for path, document in (documents or {}).items():

        async def on_document(request: web.Request, document: Document = document) -> web.Response:
            return answer(200, await asyncio.to_thread(document))

        app.router.add_route("*", path, on_document)
    app.router.add_get("/{path:.*}", metrics_handler(registry), allow_head=False)
    return app


def metrics_handler(registry: Collector) -> Callable[[web.Request], Any]:
    """The exposition, rendered in a thread: prometheus_client's own aiohttp handler renders
    on the event loop, and a scrape every second of a few thousand series held the
    executor's loop for most of each second (bench/scale.py, 200 releases)."""

    async def on_metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = await asyncio.to_thread(encoder, registry)
        response = web.Response(body=body, headers={"Content-Type": content_type})
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            response.enable_compression()
        return response

    return on_metrics


async def start_http(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve ``app`` on the running event loop until the runner's ``cleanup()``. No access
    log: Prometheus scrapes every second, and a line each would drown the rest."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def serve_metrics(
    port: int, documents: Documents | None = None, probes: Probes | None = None
) -> web.AppRunner | None:
    """Serve ``/metrics`` (and each of ``documents`` and ``probes`` by path) on ``port``, on
    the service's event loop; 0 serves nothing. ``cleanup()`` on the runner stops it.

    The probes only read what the health checks left (runtime/health.py), so they answer at
    once; a loop stuck for longer than a probe's timeout is not answered at all, which
    Kubernetes counts as a failed probe, like the 503 of a loop whose checks stopped.
    """
    if not port:
        return None
    addr = os.environ.get("CANARYFLOW_METRICS_ADDR", "127.0.0.1")
    return await start_http(http_application(documents, probes), addr, port)
