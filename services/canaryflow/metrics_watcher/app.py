"""The metrics-watcher as a service: analysis requests in, verdicts out.

``MetricsWatcher`` holds the handler, with its analysis injected; ``build_service`` composes
it with the real adapters, as every service does.

``build_service`` takes the provider and the clock as arguments: an integration test passes a
real Prometheus provider and the system clock, a service test can pass a fake provider and a
clock that jumps.
"""

from __future__ import annotations

from typing import Any, Protocol

from nats.js import JetStreamContext

from canaryflow.metrics_watcher import webhook
from canaryflow.metrics_watcher.analysis import AnalysisJob, Analyst, Clock, SystemClock
from canaryflow.metrics_watcher.policies import KubePolicySource, PolicySource
from canaryflow.metrics_watcher.progress import KvProgress
from canaryflow.metrics_watcher.providers import MetricProvider, create_provider
from canaryflow.runtime import tracing
from canaryflow.runtime.bus import Delivery
from canaryflow.runtime.service import Route, Service
from canaryflow.runtime.settings import Settings
from canaryflow.runtime.store import Versioned
from canaryflow_contracts import Envelope
from canaryflow_contracts.events import AnalysisVerdict, RequestAnalysis

SERVICE_NAME = "metrics-watcher"


class _StoreReader:
    """The service's release store, which exists only once the service has started."""

    def __init__(self, service: Service) -> None:
        self._service = service

    async def get(self, release_id: str) -> Versioned | None:
        return await self._service.store.get(release_id)


class Analysis(Protocol):
    """Analyses a step to its final verdict (``Analyst``; tests pass fakes)."""

    async def run(self, job: AnalysisJob) -> AnalysisVerdict | None: ...


class MetricsWatcher:
    """The metrics-watcher's handler, with its analysis injected."""

    def __init__(self, analyst: Analysis, *, workers: int | None = None) -> None:
        self._analyst = analyst
        self._workers = workers  # analyses held at once by this replica

    def routes(self) -> tuple[Route[Any], ...]:
        """The handler table: what it consumes (the catalogue's ``metrics-watcher`` rows)."""
        return (
            Route(RequestAnalysis, "analysis", self.on_analysis_requested, workers=self._workers),
        )

    async def on_analysis_requested(
        self, envelope: Envelope[RequestAnalysis], delivery: Delivery
    ) -> None:
        job = AnalysisJob(
            delivery.release_id,
            envelope.id,
            envelope.data,
            anchor=envelope.time,
            attempt=delivery.attempt,
        )
        # The message stays unacknowledged for the whole hold, kept alive every third of the
        # ack wait: if this replica dies, the next delivery (here after a restart, or on
        # another replica) continues from the progress it left, about one ack wait later.
        step = envelope.data.step
        span = tracing.handling(
            f"analyse step {step.index + 1} ({step.weight}%)",
            {tracing.STEP: step.index, tracing.WEIGHT: step.weight},
        )
        async with delivery.keep_alive():
            final = await self._analyst.run(job)
        if final is not None:
            span.set_attributes(tracing.verdict_decision(final))


ConsumedEvent = RequestAnalysis
"""What the metrics-watcher consumes (``MetricsWatcher.routes``, checked against the catalogue)."""


def build_service(
    settings: Settings,
    provider: MetricProvider | None = None,
    clock: Clock | None = None,
    policies: PolicySource | None = None,
) -> Service:
    """The composition: the real adapters (or the test's), the handler, its routes and loops."""
    service = Service(settings)

    async def publish(release_id: str, verdict: AnalysisVerdict, event_id: str) -> None:
        await service.publisher.publish(verdict, release_id, event_id=event_id)

    progress = KvProgress()

    async def open_progress(js: JetStreamContext) -> None:
        await progress.open(js, settings.subjects.analyses_bucket, settings.stream_replicas)

    service.when_connected(open_progress)
    analyst = Analyst(
        provider=provider or create_provider("prometheus", settings),
        clock=clock or SystemClock(),
        releases=_StoreReader(service),
        policies=policies or KubePolicySource(settings.kubeconfig),
        publish=publish,
        progress=progress,
    )
    service.route(MetricsWatcher(analyst, workers=settings.analysis_workers).routes())
    if settings.http_port:
        # Pushed alerts: a firing alert fails the release in flight without waiting a tick.
        service.every(
            webhook.serve(settings.http_port, lambda: service.store, publish, settings.alerts_token)
        )
    return service
