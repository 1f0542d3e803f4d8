"""The metrics-watcher on the real stack: real traffic, real Prometheus, real verdicts.

Given a Service whose pods answer real users (the stack's data plane), with stable, baseline and
canary pods (the shape the executor builds: ``<name>-canary`` and ``<name>-baseline``
Deployments whose pods carry ``canaryflow.io/track: canary`` or ``baseline``), and a
ReleasePolicy for it; when the planner's RequestAnalysis arrives on NATS; then the watcher,
running in-process against Prometheus, publishes verdicts whose evidence is what the pods
counted: a canary configured with 30 % errors fails with an error-rate near 0.3, a healthy
canary passes.

From the gateway's side: real users through Traefik to the stable, baseline and canary
Services, Prometheus scraping Traefik, and a policy that names only the gateway templates: the
canary's 5xx, as Traefik counted them for its backend Service, fail it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client
from nats.aio.client import Client as NatsClient
from tests.integration.release_support import StreamEvents, put_state
from tests.support import PrometheusQuery, StackEnv, async_wait_until, wait_until

from canaryflow.dataplane.objects import (
    behaviour_configmap,
    create_traefik,
    ingress_route,
    shop_deployment,
    track_service,
    weighted_sticky,
)
from canaryflow.dataplane.users import Behaviour, Users
from canaryflow.demo import shop
from canaryflow.demo.chaos import freeze, thaw
from canaryflow.metrics_watcher.app import SERVICE_NAME, build_service
from canaryflow.metrics_watcher.providers.prometheus import PrometheusProvider
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
from canaryflow_stack import stack as stack_manager
from canaryflow_stack.config import Settings as StackSettings
from canaryflow_stack.procs import PidRecord

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


def _canary(tag: str, track: str = "canary") -> client.V1Deployment:
    """What the executor builds: stable's pod template (a declared port, scraped) plus the
    track, one replica (the canary, or the live baseline of the stable version beside it)."""
    return shop_deployment(f"{APP}-{track}", APP, tag, 1, track)


def _shop(
    kube: client.ApiClient, prometheus: PrometheusQuery, namespace: str, canary_tag: str
) -> None:
    """Stable and canary pods behind a Service the stack sends users to, traffic reaching the
    canary."""
    shop.set_behaviour(kube, namespace, {"v2-bad": {"error_rate": 0.3}})
    shop.deploy(kube, namespace, name=APP, tag=STABLE_TAG, replicas=3, rps=RPS)
    client.AppsV1Api(kube).create_namespaced_deployment(namespace, _canary(canary_tag))
    client.AppsV1Api(kube).create_namespaced_deployment(namespace, _canary(STABLE_TAG, "baseline"))
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
        **stack.nats_settings(SERVICE_NAME),
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
    # Written as the planner does: the metrics-watcher's identity may only read release state.
    await put_state(
        StreamEvents(nats_client, subjects),
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
        ),
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


def _failed(verdicts: list[AnalysisVerdict]) -> AnalysisVerdict:
    """The final verdict, which must be a failure asking for a rollback."""
    final = verdicts[-1]
    assert (final.result, final.action, final.final) == (
        VerdictResult.FAIL,
        VerdictAction.ROLLBACK,
        True,
    ), final.reason
    return final


def _check(verdict: AnalysisVerdict, metric: str, track: str = "canary") -> Any:
    return next(c for c in verdict.checks if c.metric == metric and c.track == track)


async def test_a_canary_with_30_percent_errors_fails_at_once(
    bad_shop: None, watcher: Service, nats_client: NatsClient, namespace: str
) -> None:
    verdicts = await _analyse(watcher, nats_client, namespace, "v2-bad")

    final = _failed(verdicts)
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


# The gateway's side: real users through Traefik to stable, baseline and canary Services.
GATEWAY_POLICY: dict[str, Any] = {
    **POLICY,
    "analysis": {
        "intervalSeconds": INTERVAL_SECONDS,
        "windowSeconds": WINDOW_SECONDS,
        "minRequests": MIN_REQUESTS,
        "metrics": [
            {"name": "error-rate", "template": "gateway-error-rate", "max": 0.1},
            {"name": "p99-latency", "template": "gateway-p99-latency", "max": 2.0},
        ],
        "compare": [{"name": "errors", "template": "gateway-errors"}],
    },
}
FAST = {"median": 5, "p99": 20}
GATEWAY_WEIGHTS = {"stable": 50, "baseline": 25, "canary": 25}


@pytest.fixture
async def users_through_traefik(
    crd: None,
    kube: client.ApiClient,
    prometheus: PrometheusQuery,
    namespace: str,
    stack: StackEnv,
) -> AsyncIterator[Users]:
    """Stable (v1), baseline (v1) and a canary with 30 % errors behind one Traefik route, each
    track its own Service (``shop-<track>``), and real users browsing through the gateway."""
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    core.create_namespaced_config_map(
        namespace,
        behaviour_configmap(
            {
                STABLE_TAG: {"error_rate": 0.0, "latency_ms": FAST},
                "v2-bad": {"error_rate": 0.3, "latency_ms": FAST},
            }
        ),
    )
    tags = {"stable": STABLE_TAG, "baseline": STABLE_TAG, "canary": "v2-bad"}
    for track, tag in tags.items():
        replicas = 2 if track == "stable" else 1
        apps.create_namespaced_deployment(
            namespace, shop_deployment(f"{APP}-{track}", APP, tag, replicas, track)
        )
        core.create_namespaced_service(namespace, track_service(f"{APP}-{track}", APP, track))
    host = f"{APP}.{namespace}.test"
    weights = {f"{APP}-{track}": weight for track, weight in GATEWAY_WEIGHTS.items()}
    create_traefik(kube, namespace, weighted_sticky(f"{APP}-split", weights, "shop_v"))
    create_traefik(kube, namespace, ingress_route(APP, host, f"{APP}-split"))
    shop.apply_policy(kube, namespace, GATEWAY_POLICY, name="shop-policy")

    users = Users(
        stack.gateway_url,
        host,
        Behaviour(arrivals_per_s=15.0, pages=2, think_s=0.05, timeout_s=5.0),
        random.Random(7),
    )
    running = asyncio.create_task(users.run(seconds=120))
    # The first tick must have data: wait until Prometheus has scraped the gateway's counts of
    # the canary's backend (errors included) over the analysis window.
    canary = f'service=~"{namespace}-{APP}-canary-.+@kubernetescrd"'
    served = f"sum(increase(traefik_service_requests_total{{{canary}}}[{WINDOW_SECONDS}s]))"
    try:
        await async_wait_until(
            lambda: _at_least(prometheus, served, 3 * MIN_REQUESTS),
            timeout=90,
            message=f"{3 * MIN_REQUESTS} canary requests counted by the gateway ({served})",
        )
        yield users
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def _at_least(prometheus: PrometheusQuery, expr: str, count: float) -> bool | None:
    samples = await asyncio.to_thread(prometheus.query, expr)
    return bool(samples and samples[0].value >= count) or None


@pytest.mark.usefixtures("local_cluster")
async def test_a_canary_judged_at_the_gateway_fails_on_the_errors_traefik_answered(
    users_through_traefik: Users,
    watcher: Service,
    nats_client: NatsClient,
    namespace: str,
    prometheus: PrometheusQuery,
) -> None:
    verdicts = await _analyse(watcher, nats_client, namespace, "v2-bad")

    final = _failed(verdicts)
    errors = _check(final, "error-rate")
    assert errors.passed is False
    assert errors.value == pytest.approx(0.3, abs=0.12)
    assert "traefik_service_requests_total" in errors.query
    assert f"{namespace}-{APP}-canary-" in errors.query
    size = _check(final, "sample-size")
    assert size.value is not None and size.value >= MIN_REQUESTS
    assert "traefik_service_requests_total" in size.query, "counted at the gateway too"
    baseline = _check(final, "error-rate", "baseline")
    assert baseline.value is not None and baseline.value < 0.05
    assert f"{namespace}-{APP}-baseline-" in baseline.query
    latency = _check(final, "p99-latency")
    assert latency.value is not None and 0 < latency.value < 2.0

    # What users saw agrees: the canary's version answered 5xx, stable's never did.
    tally = users_through_traefik.tally
    failed = {version: 0 for version in (STABLE_TAG, "v2-bad")}
    for (version, code), count in tally.requests.items():
        if code >= 500 and version in failed:
            failed[version] += count
    assert failed["v2-bad"] > 0 and failed[STABLE_TAG] == 0, failed
    # Traefik's latency histogram has the stack's finer buckets, not the 0.1/0.3/1.2/5 default.
    buckets = f'traefik_service_request_duration_seconds_bucket{{service=~"{namespace}-.*"}}'
    les = prometheus.by_label(f"sum by (le) ({buckets})", "le")
    assert {"0.005", "0.025", "0.05"} <= set(les), sorted(les)
    print(
        f"gateway: canary error-rate {errors.value:.3f} over {size.value:.0f} requests, "
        f"baseline {baseline.value:.3f}; canary p99 {latency.value:.3f} s; users saw {failed}"
    )


async def test_prometheus_says_how_long_it_collected_nothing_within_a_window(
    stack: StackEnv, stack_settings: StackSettings
) -> None:
    """The hole a frozen Prometheus leaves in a window, as the metrics-watcher asks for it
    (``collection_gap``): about one scrape interval when healthy, the freeze when it was
    frozen (SIGSTOP, as the fault campaign does; the stack scrapes every second)."""
    prometheus = PrometheusProvider(stack.prometheus_url, timeout_seconds=10)
    try:

        async def healthy() -> float | None:
            gap = await prometheus.collection_gap(10)
            return gap if gap is not None and gap < 3 else None

        # (a window may still reach back to the stack's own start of Prometheus)
        await async_wait_until(healthy, timeout=30, message="a window without a hole")
        pid = PidRecord.load(stack_manager.pidfile(stack_settings, "prometheus"))
        assert pid is not None
        await freeze(pid.pid, 6)

        after = await prometheus.collection_gap(10)
        assert after is not None and 5 <= after <= 10, after
        # A window that no longer reaches back to the freeze has no hole in it.
        await asyncio.sleep(3)
        assert (await prometheus.collection_gap(2) or 0) < 3
    finally:
        thaw()
        await prometheus.aclose()
