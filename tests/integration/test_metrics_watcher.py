"""The metrics-watcher on the real stack: real traffic, real Prometheus, real verdicts.

Given a Service the traffic simulator serves, with stable, baseline and canary pods (the shape
the executor builds: ``<name>-canary`` and ``<name>-baseline`` Deployments whose pods carry
``canaryflow.io/track: canary`` or ``baseline``), and a ReleasePolicy for it; when the
planner's RequestAnalysis arrives on NATS; then the watcher, running in-process against
Prometheus, publishes verdicts whose evidence is the simulator's numbers: a canary configured
with 30 % errors fails with an error-rate near 0.3, a healthy canary passes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client
from nats.aio.client import Client as NatsClient
from tests.support import PrometheusQuery, StackEnv, wait_until

from canaryflow.demo import shop
from canaryflow.metrics_watcher.app import SERVICE_NAME, build_service
from canaryflow.runtime.kube import TRACK_LABEL
from canaryflow.runtime.service import Service
from canaryflow.runtime.settings import Settings
from canaryflow_contracts import Envelope
from canaryflow_contracts.events import (
    AnalysisVerdict,
    PlannedStep,
    RequestAnalysis,
    TargetRef,
    VerdictAction,
    VerdictResult,
    VersionSpec,
)
from canaryflow_contracts.state import ReleaseState, ReleaseStatus

pytestmark = pytest.mark.stack

APP = "shop"
STABLE_TAG = "v1"
MIN_REQUESTS = 40
WINDOW_SECONDS = 10
HOLD_SECONDS = 6.0
INTERVAL_SECONDS = 2.0
RPS = 200  # 3 stable, 1 baseline and 1 canary pod: about 40 canary requests a second
SETTLED_REQUESTS = 300
POLICY: dict[str, Any] = {
    "targetRef": APP,
    "steps": [{"weight": 25, "holdSeconds": HOLD_SECONDS}],
    "analysis": {
        "intervalSeconds": INTERVAL_SECONDS,
        "windowSeconds": WINDOW_SECONDS,
        "minRequests": MIN_REQUESTS,
        "metrics": [
            {"name": "error-rate", "template": "error-rate", "max": 0.1},
            {"name": "p99-latency", "template": "p99-latency", "max": 2.0},
            {"name": "request-rate", "template": "request-rate", "min": 1},
        ],
    },
}


@pytest.fixture(scope="module")
def crd(kube: client.ApiClient) -> None:
    shop.install_crd(kube)  # idempotent


def _canary(namespace: str, tag: str, track: str = "canary") -> client.V1Deployment:
    """What the executor builds: stable's pod labels plus the track, one replica (the canary,
    or the live baseline of the stable version beside it)."""
    labels = {"app": APP, TRACK_LABEL: track}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=f"{APP}-{track}", namespace=namespace, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    containers=[client.V1Container(name=APP, image=shop.image(tag, APP))]
                ),
            ),
        ),
    )


def _shop(
    kube: client.ApiClient, prometheus: PrometheusQuery, namespace: str, canary_tag: str
) -> None:
    """Stable and canary pods behind a simulated Service, with traffic reaching the canary."""
    shop.set_behaviour(kube, namespace, {"v2-bad": {"error_rate": 0.3}})
    shop.deploy(kube, namespace, name=APP, tag=STABLE_TAG, replicas=3, rps=RPS)
    client.AppsV1Api(kube).create_namespaced_deployment(namespace, _canary(namespace, canary_tag))
    client.AppsV1Api(kube).create_namespaced_deployment(
        namespace, _canary(namespace, STABLE_TAG, "baseline")
    )
    shop.apply_policy(kube, namespace, POLICY, name="shop-policy")
    # Analysis on an empty window would only say "insufficient data": wait for real traffic.
    served = (
        f'sum(increase(http_requests_total{{namespace="{namespace}",service="{APP}",'
        f'version="{canary_tag}",track="canary"}}[{WINDOW_SECONDS}s]))'
    )
    # Enough of it that a 30 % error rate is measured within +-0.1 (binomial sd about 0.026).
    wait_until(
        lambda: [s for s in prometheus.query(served) if s.value >= SETTLED_REQUESTS],
        timeout=90,
        message=f"{SETTLED_REQUESTS} canary requests in Prometheus ({served})",
        interval=0.5,
    )


@pytest.fixture
def bad_shop(
    crd: None, kube: client.ApiClient, prometheus: PrometheusQuery, namespace: str
) -> None:
    _shop(kube, prometheus, namespace, "v2-bad")


@pytest.fixture
def good_shop(
    crd: None, kube: client.ApiClient, prometheus: PrometheusQuery, namespace: str
) -> None:
    _shop(kube, prometheus, namespace, "v2-good")


def _settings(stack: StackEnv, prefix: str, prometheus_url: str) -> Settings:
    return Settings(
        service=SERVICE_NAME,
        nats_url=stack.nats_url,
        prefix=prefix,
        kubeconfig=None if ":" in stack.kubeconfig else stack.kubeconfig,
        prometheus_url=prometheus_url,
        ack_wait_seconds=10,
        workers=4,
    )


@pytest.fixture
async def watcher(stack: StackEnv, stream_prefix: str) -> AsyncIterator[Service]:
    service = build_service(_settings(stack, stream_prefix, stack.prometheus_url))
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def blind_watcher(stack: StackEnv, stream_prefix: str) -> AsyncIterator[Service]:
    """A watcher whose Prometheus is a closed port: an outage of the metrics source."""
    service = build_service(_settings(stack, stream_prefix, "http://127.0.0.1:9"))
    await service.start()
    yield service
    await service.stop()


async def _analyse(
    watcher: Service,
    nats_client: NatsClient,
    namespace: str,
    canary_tag: str,
    hold_seconds: float = HOLD_SECONDS,
) -> list[AnalysisVerdict]:
    """Put the release in ANALYSING, request the analysis, collect verdicts up to the final."""
    subjects = watcher.settings.subjects
    release_id = f"shop-{uuid.uuid4().hex[:8]}"
    target = TargetRef(namespace=namespace, name=APP)
    step = PlannedStep(index=0, weight=25, hold_seconds=hold_seconds)
    now = datetime.now(UTC)
    await watcher.store.create(
        ReleaseState(
            release_id=release_id,
            target=target,
            version=VersionSpec(image=shop.image(canary_tag, APP)),
            stable_image=shop.image(STABLE_TAG, APP),
            policy="shop-policy",
            requested_by="tests",
            steps=[step],
            status=ReleaseStatus.ANALYSING,
            phase_started_at=now,
            ready_deadline=now + timedelta(minutes=2),
            created_at=now,
            updated_at=now,
        )
    )
    verdicts: asyncio.Queue[AnalysisVerdict] = asyncio.Queue()

    async def collect(msg: Any) -> None:
        envelope = Envelope[AnalysisVerdict].model_validate_json(msg.data)
        await verdicts.put(envelope.data)

    subscription = await nats_client.subscribe(subjects.of(AnalysisVerdict, release_id), cb=collect)
    try:
        request = Envelope.wrap(
            RequestAnalysis(
                target=target,
                step=step,
                canary_version=canary_tag,
                stable_version=STABLE_TAG,
                policy="shop-policy",
            ),
            release_id=release_id,
            source="tests/integration",
            id=f"{release_id}.analyse.0",
        )
        await nats_client.jetstream().publish(
            subjects.of(RequestAnalysis, release_id),
            request.model_dump_json().encode(),
            headers={"Nats-Msg-Id": request.id},
        )
        seen: list[AnalysisVerdict] = []
        while not (seen and seen[-1].final):
            seen.append(await asyncio.wait_for(verdicts.get(), timeout=hold_seconds + 20))
        return seen
    finally:
        await subscription.unsubscribe()


def _check(verdict: AnalysisVerdict, metric: str, track: str = "canary") -> Any:
    return next(c for c in verdict.checks if c.metric == metric and c.track == track)


async def test_a_canary_with_30_percent_errors_fails_at_once(
    bad_shop: None, watcher: Service, nats_client: NatsClient, namespace: str
) -> None:
    verdicts = await _analyse(watcher, nats_client, namespace, "v2-bad")

    final = verdicts[-1]
    assert (final.result, final.action, final.final) == (
        VerdictResult.FAIL,
        VerdictAction.ROLLBACK,
        True,
    ), final.reason
    assert len(verdicts) == 1, "the first tick has the data, so it decides"
    errors = _check(final, "error-rate")
    assert errors.passed is False
    assert errors.value == pytest.approx(0.3, abs=0.1)
    assert (errors.threshold, errors.comparison) == (0.1, "<=")
    assert errors.sample_size >= MIN_REQUESTS
    assert f'namespace="{namespace}"' in errors.query and 'version="v2-bad"' in errors.query
    stable_errors = _check(final, "error-rate", "baseline")
    assert stable_errors.value is not None and stable_errors.value < 0.05
    assert "error-rate" in final.reason


async def test_a_healthy_canary_passes_every_tick_and_the_step(
    good_shop: None, watcher: Service, nats_client: NatsClient, namespace: str
) -> None:
    verdicts = await _analyse(watcher, nats_client, namespace, "v2-good")

    assert [v.final for v in verdicts] == [False] * (len(verdicts) - 1) + [True]
    assert len(verdicts) == int(HOLD_SECONDS / INTERVAL_SECONDS) + 1
    assert all(v.result is VerdictResult.PASS for v in verdicts), [v.reason for v in verdicts]
    final = verdicts[-1]
    assert final.action is VerdictAction.CONTINUE
    errors = _check(final, "error-rate")
    assert errors.value is not None and errors.value < 0.05
    latency = _check(final, "p99-latency")
    assert latency.value is not None and 0 < latency.value < 2.0
    size = _check(final, "sample-size")
    assert size.value is not None and size.value >= MIN_REQUESTS
    baseline_rate = _check(final, "request-rate", "baseline").value
    assert baseline_rate is not None and baseline_rate > 0, "the baseline is measured beside it"


async def test_an_unreachable_prometheus_is_insufficient_data_never_a_pass(
    good_shop: None, blind_watcher: Service, nats_client: NatsClient, namespace: str
) -> None:
    (final,) = await _analyse(blind_watcher, nats_client, namespace, "v2-good", hold_seconds=0)

    assert (final.result, final.action, final.final) == (
        VerdictResult.INSUFFICIENT_DATA,
        VerdictAction.PAUSE,
        True,
    )
    assert "prometheus is not answering" in final.reason
    assert all(check.value is None and check.passed is not True for check in final.checks)
