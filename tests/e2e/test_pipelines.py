"""Release pipelines on the real stack: one version through test, staging and production.

Given three namespaces (test, staging, production), each with the sample shop and its own
quick policy (production's lets ops@shop open gates), when a system publishes one
PipelineRequested naming the version once, then the version is released in each environment
in order, production only after its gate is opened; a version that fails in staging stops
there and never touches production.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from canaryflow.demo import shop
from canaryflow.demo.launcher import ServiceLauncher
from canaryflow.planner.pipelines import stage_id
from canaryflow_contracts import Envelope, EventData
from canaryflow_contracts.events import (
    OpenPipelineGate,
    PipelineEnvironment,
    PipelinePlanned,
    PipelineRequested,
    PipelineStatusChanged,
    PipelineStopped,
    PipelineSucceeded,
    PipelineTransition,
    ReleaseSucceeded,
    VersionSpec,
)
from tests.conftest import TEST_NAMESPACE_LABEL
from tests.e2e.conftest import Releases
from tests.support import JaegerQuery, wait_until

pytestmark = pytest.mark.stack

PIPELINE_END = (PipelineSucceeded, PipelineStopped)
SERVICES = ("canaryflow-planner", "canaryflow-executor", "canaryflow-metrics-watcher")
GOOD = {"error_rate": 0.005, "latency_ms": {"median": 40, "p99": 120}}
BAD = {"error_rate": 0.2, "latency_ms": {"median": 40, "p99": 120}}


@pytest.fixture
def environments(kube: client.ApiClient) -> Iterator[dict[str, str]]:
    """test, staging and production namespaces, each with the shop on v1. v2-bad fails only
    where staging's data reaches it (it is fine in test)."""
    core = client.CoreV1Api(kube)
    suffix = uuid.uuid4().hex[:6]
    made = {env: f"t-pipeline-{env}-{suffix}" for env in ("test", "staging", "production")}
    try:
        for env, name in made.items():
            core.create_namespace(
                client.V1Namespace(
                    metadata=client.V1ObjectMeta(name=name, labels={TEST_NAMESPACE_LABEL: "true"})
                )
            )
            _wait_for_service_account(core, name)
            shop.deploy(kube, name, replicas=4, rps=80)
            bad = GOOD if env == "test" else BAD
            shop.set_behaviour(kube, name, {"v1": GOOD, "v2": GOOD, "v2-bad": bad})
            weights = (50,) if env == "test" else (20, 50)
            # The pods get 240 s: set when a step's deadline still ran while every service was
            # down (their restart mid-staging took over 60 s on a loaded machine); kept as a
            # margin for the loaded machine.
            policy: dict[str, Any] = shop.quick_policy(
                weights=weights,
                hold_seconds=6,
                max_p99_seconds=5.0,
                compare=False,
                pod_ready_seconds=240,
            )
            if env == "production":
                policy["operators"] = [{"subject": "ops@shop", "actions": ["open-gate"]}]
            shop.apply_policy(kube, name, policy)
        yield made
    finally:
        for name in made.values():
            with contextlib.suppress(ApiException):
                core.delete_namespace(name, propagation_policy="Background")


def _wait_for_service_account(core: client.CoreV1Api, name: str) -> None:
    # Pods are refused until the controller manager has made the default ServiceAccount.
    wait_until(
        lambda: core.read_namespaced_service_account("default", name),
        timeout=30,
        message=f"the default ServiceAccount in namespace {name}",
    )


def _request(namespaces: dict[str, str], image: str) -> PipelineRequested:
    return PipelineRequested(
        target="web",
        version=VersionSpec(image=image),
        environments=[
            PipelineEnvironment(name="test", namespace=namespaces["test"]),
            PipelineEnvironment(name="staging", namespace=namespaces["staging"]),
            PipelineEnvironment(name="production", namespace=namespaces["production"], gate=True),
        ],
        requested_by="e2e-test",
    )


def _image(kube: client.ApiClient, namespace: str) -> str:
    web = client.AppsV1Api(kube).read_namespaced_deployment("web", namespace)
    image: str = web.spec.template.spec.containers[0].image
    return image


def _status(status: PipelineTransition, environment: str) -> Any:
    def matches(envelope: Envelope[EventData]) -> bool:
        data = envelope.data
        return (
            isinstance(data, PipelineStatusChanged)
            and data.status is status
            and data.environment == environment
        )

    return matches


async def test_a_version_walks_three_environments_through_a_gate_and_a_restart(
    kube: client.ApiClient,
    environments: dict[str, str],
    releases: Releases,
    services: ServiceLauncher,
) -> None:
    pipeline_id = f"pipe-{uuid.uuid4().hex[:8]}"
    await releases.publish(_request(environments, shop.image("v2")), pipeline_id)

    # Every service restarts while staging is under way: the pipeline goes on.
    started = _status(PipelineTransition.ENVIRONMENT_STARTED, "staging")
    await releases.events(pipeline_id, until=(PipelineStatusChanged,), stop=started, timeout=300)
    services.stop()
    services.start(timeout=180)

    waiting = _status(PipelineTransition.GATE_WAITING, "production")
    await releases.events(pipeline_id, until=(PipelineStatusChanged,), stop=waiting, timeout=400)
    assert _image(kube, environments["test"]) == shop.image("v2")
    assert _image(kube, environments["staging"]) == shop.image("v2")
    assert _image(kube, environments["production"]) == shop.image("v1")

    # A second request for the version in flight is refused, with the reason.
    again = f"pipe-{uuid.uuid4().hex[:8]}"
    await releases.publish(_request(environments, shop.image("v2")), again)
    refused = (await releases.events(again, until=PIPELINE_END, timeout=60))[-1].data
    assert isinstance(refused, PipelineStopped) and refused.environment == ""
    assert any(f"already in flight in pipeline {pipeline_id}" in r for r in refused.reasons)

    gate = OpenPipelineGate(actor="ops@shop", environment="production", reason="CAB ok")
    await releases.publish(gate, pipeline_id)
    events = await releases.events(pipeline_id, until=PIPELINE_END, timeout=400)

    assert isinstance(events[-1].data, PipelineSucceeded), [e.type for e in events]
    planned = next(e.data for e in events if isinstance(e.data, PipelinePlanned))
    assert planned.version == VersionSpec(image=shop.image("v2"))
    ends = []
    for index in range(3):
        stage_events = await releases.events(stage_id(pipeline_id, index), timeout=30)
        assert isinstance(stage_events[-1].data, ReleaseSucceeded)
        ends.append(stage_events[-1].time)
    assert ends == sorted(ends), "the environments did not succeed in order"
    opened = next(e for e in events if _status(PipelineTransition.GATE_OPENED, "production")(e))
    assert ends[1] < opened.time < ends[2]
    assert _image(kube, environments["production"]) == shop.image("v2")


def _trace_ids(jaeger: JaegerQuery, subject: str) -> set[str]:
    """Every trace in which any service tagged a span with this release (or pipeline) id."""
    return {
        str(trace["traceID"])
        for service in SERVICES
        for trace in jaeger.find_traces(service, {"canaryflow.release.id": subject})
    }


async def test_a_version_failing_in_staging_never_touches_production(
    kube: client.ApiClient,
    environments: dict[str, str],
    releases: Releases,
    jaeger: JaegerQuery,
) -> None:
    pipeline_id = f"pipe-{uuid.uuid4().hex[:8]}"
    await releases.publish(_request(environments, shop.image("v2-bad")), pipeline_id)

    events = await releases.events(pipeline_id, until=PIPELINE_END, timeout=400)

    stopped = events[-1].data
    assert isinstance(stopped, PipelineStopped), [e.type for e in events]
    assert stopped.environment == "staging"
    assert [c for c in stopped.evidence if c.passed is False], stopped
    assert _image(kube, environments["test"]) == shop.image("v2-bad")  # test keeps it
    assert _image(kube, environments["staging"]) == shop.image("v1")
    assert _image(kube, environments["production"]) == shop.image("v1")
    production = [
        e
        for e in events
        if isinstance(e.data, PipelineStatusChanged) and e.data.environment == "production"
    ]
    assert production == []
    deployments = client.AppsV1Api(kube).list_namespaced_deployment(environments["production"])
    assert [d.metadata.name for d in deployments.items] == ["web"]

    # One trace for the pipeline, with each environment's release beneath it.
    def one_trace() -> set[str] | None:
        by_subject = [
            _trace_ids(jaeger, subject)
            for subject in (pipeline_id, stage_id(pipeline_id, 0), stage_id(pipeline_id, 1))
        ]
        if not all(by_subject):
            return None  # Jaeger has not every span yet
        return set().union(*by_subject)

    traces = wait_until(one_trace, timeout=60, message="the pipeline's traces", interval=2)
    assert len(traces) == 1, traces
