"""Trace context over real JetStream: rooted requests, redeliveries, untraced producers.

Given a service on the stack's NATS whose spans are collected in memory (the planner reading
the stack's API server, where each test's namespace has the sample shop and its policy),
these check what
FastStream's middleware alone cannot give: a release request becomes the root of its trace
(or a child of the requester's span), a redelivered message continues the trace of its
first delivery, and a message from a system that does not trace joins the release's trace
instead of starting one.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from kubernetes import client
from nats.aio.client import Client as NatsClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from tests.integration.release_support import running, service_settings
from tests.support import StackEnv, async_wait_until
from tests.unit.support_state import sample_state

from canaryflow.demo import shop
from canaryflow.planner.app import build_service as build_planner
from canaryflow.planner.validation import ClusterReader, DeploymentFacts, KubeClusterReader
from canaryflow.runtime import observability, tracing
from canaryflow.runtime.bus import Delivery
from canaryflow.runtime.policies import PolicyObject
from canaryflow.runtime.service import Service
from canaryflow_contracts import MESSAGE_ID_HEADER, Envelope, EventData, Subjects
from canaryflow_contracts.events import (
    ApplyPhase,
    PhaseReached,
    PlannedStep,
    ReleaseRequested,
    TargetRef,
    VersionSpec,
)

pytestmark = pytest.mark.stack

REQUESTER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _collect(service: Service) -> InMemorySpanExporter:
    """The spans from now on, as the service's entry point would export them (it sets up the
    process's tracer provider; a service built in-process leaves that to its test)."""
    exporter = InMemorySpanExporter()
    provider = observability.configure_tracing(service.settings.service)
    assert isinstance(provider, TracerProvider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def _trace_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


def _parent_id(span: ReadableSpan) -> str:
    assert span.parent is not None
    return f"{span.parent.span_id:016x}"


def _processed(exporter: InMemorySpanExporter, subject: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == f"{subject} process"]


async def _handled_twice(spans: InMemorySpanExporter, subject: str) -> None:
    async def check() -> bool:
        return len(_processed(spans, subject)) >= 2

    await async_wait_until(check, timeout=20, message=f"two deliveries of {subject} handled")


async def _publish(
    nc: NatsClient,
    subjects: Subjects,
    data: EventData,
    rid: str,
    traceparent: str = "",
    *,
    headers: bool = True,
) -> str:
    """Publish as our services do (``headers=False``: as a bare ``nats pub``); the event id."""
    envelope = Envelope.wrap(data, release_id=rid, source="tests/tracing")
    sent = {MESSAGE_ID_HEADER: envelope.id} if headers else {}
    if traceparent:
        sent["traceparent"] = traceparent
    await nc.jetstream().publish(
        subjects.of(type(data), rid), envelope.model_dump_json().encode(), headers=sent or None
    )
    return envelope.id


def _reached(rid: str) -> PhaseReached:
    return PhaseReached(
        target=TargetRef(namespace="shop", name="web"),
        step=PlannedStep(index=0, weight=10, hold_seconds=5),
        canary_weight=10,
        canary_ready=1,
        stable_ready=9,
    )


@dataclass
class Flaky:
    """A handler that fails its first delivery of each release."""

    seen: list[tuple[str, int]] = field(default_factory=list)

    async def __call__(self, envelope: Envelope[PhaseReached], delivery: Delivery) -> None:
        self.seen.append((delivery.release_id, delivery.attempt))
        if delivery.attempt == 1:
            raise RuntimeError("first attempt fails")


@contextlib.asynccontextmanager
async def _generic(
    stack: StackEnv, prefix: str, handler: Flaky, *, quiet: bool = False
) -> AsyncIterator[Service]:
    service = Service(service_settings(stack, prefix, "tracetest"))
    service.subscribe(PhaseReached, "reached", handler, quiet=(lambda _: True) if quiet else None)
    async with running(service):
        yield service


@pytest.mark.parametrize("context", ["in the message", "stored with the release"])
async def test_both_deliveries_of_a_message_continue_the_release_trace(
    stack: StackEnv, nats_client: NatsClient, stream_prefix: str, context: str
) -> None:
    """The context comes in the headers, or (a producer that does not trace) from the state.

    The message fails once: the redelivery continues the same trace.
    """
    flaky, rid = Flaky(), f"web-{uuid.uuid4().hex[:8]}"
    async with _generic(stack, stream_prefix, flaky) as service:
        spans = _collect(service)
        subjects = service.settings.subjects
        if context == "in the message":
            event_id = await _publish(nats_client, subjects, _reached(rid), rid, REQUESTER)
        else:
            stored = sample_state(rid).model_copy(update={"trace_parent": REQUESTER})
            await service.store.create(stored)
            event_id = await _publish(nats_client, subjects, _reached(rid), rid, headers=False)
        await _handled_twice(spans, subjects.of(PhaseReached, rid))
    first, second = _processed(spans, subjects.of(PhaseReached, rid))[:2]
    assert [attempt for _, attempt in flaky.seen] == [1, 2]
    for span in (first, second):
        assert _trace_id(span) == tracing.trace_id_of(REQUESTER)
        assert span.attributes is not None
        assert span.attributes[tracing.EVENT_ID] == event_id  # from the header or the envelope
        assert _parent_id(span) == "00f067aa0ba902b7"
    assert first.attributes is not None and first.attributes[tracing.RELEASE_ID] == rid


@dataclass
class FlakyWithChild(Flaky):
    """Fails its first delivery, and does some traced work each time (as a Kubernetes write)."""

    async def __call__(self, envelope: Envelope[PhaseReached], delivery: Delivery) -> None:
        with tracing.span(f"work {delivery.attempt}", delivery.release_id):
            pass
        await super().__call__(envelope, delivery)


async def test_a_quiet_message_has_no_span_of_its_own_unless_its_handling_fails(
    stack: StackEnv, nats_client: NatsClient, stream_prefix: str
) -> None:
    """Its work hangs off the producer's span; a failed attempt still shows, with its error."""
    handler, rid = FlakyWithChild(), f"web-{uuid.uuid4().hex[:8]}"
    async with _generic(stack, stream_prefix, handler, quiet=True) as service:
        spans = _collect(service)
        subject = service.settings.subjects.of(PhaseReached, rid)
        await _publish(nats_client, service.settings.subjects, _reached(rid), rid, REQUESTER)

        async def both_attempts_worked() -> bool:
            return {"work 1", "work 2"} <= {s.name for s in spans.get_finished_spans()}

        await async_wait_until(both_attempts_worked, timeout=20, message="two attempts handled")
    finished = {s.name: s for s in spans.get_finished_spans()}
    (failed,) = _processed(spans, subject)  # the failed attempt's; none for the second
    assert failed.status.status_code is StatusCode.ERROR
    assert "first attempt fails" in (failed.status.description or "")
    assert [e.name for e in failed.events] == ["exception"]
    assert _parent_id(failed) == "00f067aa0ba902b7"  # the producer's span
    for work in ("work 1", "work 2"):
        assert _trace_id(finished[work]) == tracing.trace_id_of(REQUESTER)
        assert _parent_id(finished[work]) == "00f067aa0ba902b7"
    assert failed.start_time is not None and finished["work 1"].start_time is not None
    assert failed.start_time <= finished["work 1"].start_time  # it covers the whole attempt


@pytest.fixture
def shop_cluster(stack: StackEnv, kube: client.ApiClient, namespace: str) -> KubeClusterReader:
    """The stack's API server, with the sample shop and its policy in the test's namespace."""
    shop.install_crd(kube)
    shop.deploy(kube, namespace, replicas=2)
    shop.apply_policy(kube, namespace, shop.quick_policy())
    return KubeClusterReader(stack.kubeconfig)


@dataclass
class FlakyCluster:
    """The real API server behind one injected failure: the first Deployment read is refused
    as if the server were away, every later read reaches it."""

    real: KubeClusterReader
    failures: int = 1

    async def deployment(self, namespace: str, name: str) -> DeploymentFacts | None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("API server away")
        return await self.real.deployment(namespace, name)

    async def release_policies(
        self, namespace: str, targeting: str | None = None
    ) -> list[PolicyObject]:
        return await self.real.release_policies(namespace, targeting)


def _request(namespace: str) -> ReleaseRequested:
    return ReleaseRequested(
        target=TargetRef(namespace=namespace, name="web"),
        version=VersionSpec(image=shop.image("v2")),
        requested_by="tests",
    )


async def _applied_traceparent(nc: NatsClient, subjects: Subjects, rid: str) -> str:
    async def check() -> str | None:
        with contextlib.suppress(Exception):
            raw = await nc.jetstream().get_last_msg(
                subjects.events_stream.name, subjects.of(ApplyPhase, rid)
            )
            return str((raw.headers or {}).get("traceparent", ""))
        return None

    return await async_wait_until(check, timeout=20, message=f"ApplyPhase of {rid}")


@dataclass
class Planned:
    """What a planner made of one request: its spans, the ApplyPhase's context, the state."""

    roots: list[ReadableSpan]
    applied_traceparent: str
    stored_traceparent: str


async def _plan(
    stack: StackEnv,
    nats_client: NatsClient,
    prefix: str,
    cluster: ClusterReader,
    rid: str,
    *,
    namespace: str,
    traceparent: str = "",
) -> Planned:
    planner = build_planner(service_settings(stack, prefix, "planner"), cluster)
    spans = _collect(planner)
    async with running(planner):
        subjects = planner.settings.subjects
        await _publish(nats_client, subjects, _request(namespace), rid, traceparent)
        applied = await _applied_traceparent(nats_client, subjects, rid)
        versioned = await planner.store.get(rid)
    assert versioned is not None
    roots = [s for s in spans.get_finished_spans() if s.name == f"release {rid}"]
    return Planned(roots, applied, versioned.state.trace_parent)


async def test_an_untraced_request_is_the_root_of_its_release_trace_even_when_redelivered(
    stack: StackEnv,
    nats_client: NatsClient,
    stream_prefix: str,
    shop_cluster: KubeClusterReader,
    namespace: str,
) -> None:
    rid = f"web-{uuid.uuid4().hex[:8]}"
    flaky = FlakyCluster(shop_cluster)
    planned = await _plan(stack, nats_client, stream_prefix, flaky, rid, namespace=namespace)
    assert flaky.failures == 0
    expected = f"{tracing.release_trace_id(stream_prefix, rid):032x}"
    # The first attempt failed before the state was stored: its retry is a second root of the
    # same trace, never a second trace.
    assert len(planned.roots) == 2
    assert {_trace_id(root) for root in planned.roots} == {expected}
    assert all(root.parent is None for root in planned.roots)
    assert tracing.trace_id_of(planned.stored_traceparent) == expected
    assert tracing.trace_id_of(planned.applied_traceparent) == expected


async def test_a_request_carrying_a_trace_context_roots_the_release_under_the_requester(
    stack: StackEnv,
    nats_client: NatsClient,
    stream_prefix: str,
    shop_cluster: KubeClusterReader,
    namespace: str,
) -> None:
    rid = f"web-{uuid.uuid4().hex[:8]}"
    planned = await _plan(
        stack,
        nats_client,
        stream_prefix,
        shop_cluster,
        rid,
        namespace=namespace,
        traceparent=REQUESTER,
    )
    (root,) = planned.roots
    assert _trace_id(root) == tracing.trace_id_of(REQUESTER)
    assert _parent_id(root) == "00f067aa0ba902b7"
    assert root.context is not None
    assert planned.stored_traceparent.split("-")[2] == f"{root.context.span_id:016x}"
    assert tracing.trace_id_of(planned.applied_traceparent) == tracing.trace_id_of(REQUESTER)


async def test_a_publish_outside_any_handler_joins_the_release_trace(
    stack: StackEnv, nats_client: NatsClient, stream_prefix: str
) -> None:
    """E.g. the alert webhook's verdict: no consumer span is current when it is published."""
    rid = f"web-{uuid.uuid4().hex[:8]}"
    async with _generic(stack, stream_prefix, Flaky()) as service:
        await service.store.create(sample_state(rid).model_copy(update={"trace_parent": REQUESTER}))
        await service.publisher.publish(_reached(rid), rid, event_id=f"{rid}.reached.0")
        subjects = service.settings.subjects
        raw = await nats_client.jetstream().get_last_msg(
            subjects.events_stream.name, subjects.of(PhaseReached, rid)
        )
    traceparent = (raw.headers or {}).get("traceparent", "")
    assert tracing.trace_id_of(traceparent) == tracing.trace_id_of(REQUESTER)
