"""The real data plane: pods answer HTTP at their 10.244 addresses, Prometheus finds and scrapes
them like a cluster's pods, Traefik splits users between versions and keeps each on one.

These run inside the stack's network namespace (tests/conftest.py enters it): the pods'
addresses exist nowhere else. Requests go to the pods and the gateway as real HTTP.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import aiohttp
import httpx
import pytest
from kubernetes import client
from tests.support import PrometheusQuery, StackEnv, async_wait_until, wait_until
from tests.support.wait import WaitTimeout

from canaryflow.dataplane.objects import (
    APP_PORT,
    behaviour_configmap,
    create_traefik,
    ingress_route,
    ready_pods,
    shop_deployment,
    track_service,
    users_service,
    weighted_sticky,
)
from canaryflow.dataplane.users import Behaviour, Users
from canaryflow.runtime.traffic import router_for
from canaryflow_contracts.events import TargetRef
from canaryflow_contracts.policy import Traffic

pytestmark = pytest.mark.stack
FAST = {"median": 2, "p99": 5}
"""Latency (ms) that keeps thousands of sessions quick."""


@pytest.fixture
def http() -> Any:
    with httpx.Client(timeout=5.0, trust_env=False) as session:
        yield session


def _wait_ready(kube: client.ApiClient, namespace: str, selector: str, count: int) -> list[Any]:
    def ready() -> list[Any] | None:
        pods = ready_pods(kube, namespace, selector)
        return pods if len(pods) == count else None

    return wait_until(
        ready,
        timeout=60,
        message=f"{count} Ready pods with addresses for {selector}",
    )


def _answers(http: httpx.Client, ip: str, path: str = "/") -> httpx.Response | None:
    try:
        return http.get(f"http://{ip}:{APP_PORT}{path}")
    except httpx.TransportError:
        return None


@pytest.mark.usefixtures("local_cluster")
def test_each_ready_pod_answers_at_its_address_until_it_goes(
    kube: client.ApiClient, namespace: str, http: httpx.Client
) -> None:
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    apps.create_namespaced_deployment(namespace, shop_deployment("web", "web", "v1", 2, "stable"))
    pods = _wait_ready(kube, namespace, "app=web", 2)

    for pod in pods:
        response = wait_until(
            partial(_answers, http, pod.status.pod_ip),
            timeout=15,
            message=f"pod {pod.metadata.name} to answer at {pod.status.pod_ip}:{APP_PORT}",
        )
        assert response.status_code == 200
        assert response.headers["X-Version"] == "v1"
        assert response.headers["X-Pod"] == pod.metadata.name
        assert pod.status.pod_ip.startswith("10.244.")

    gone = pods[0]
    core.delete_namespaced_pod(gone.metadata.name, namespace, grace_period_seconds=0)
    # The ReplicaSet replaces it; the address may be reused at once (KWOK does): whatever
    # answers there now must be the new pod, never the deleted one.
    wait_until(
        lambda: (
            (r := _answers(http, gone.status.pod_ip)) is None
            or r.headers["X-Pod"] != gone.metadata.name
        ),
        timeout=15,
        message=f"the deleted pod {gone.metadata.name} to stop answering",
    )
    now_ready = _wait_ready(kube, namespace, "app=web", 2)
    replacement = next(p for p in now_ready if p.metadata.uid != pods[1].metadata.uid)
    assert replacement.metadata.uid != gone.metadata.uid
    response = wait_until(
        lambda: _answers(http, replacement.status.pod_ip),
        timeout=15,
        message=f"the replacement pod {replacement.metadata.name} to answer",
    )
    assert response.headers["X-Pod"] == replacement.metadata.name


@pytest.mark.usefixtures("local_cluster")
def test_a_version_behaves_as_configured_and_prometheus_scrapes_it_by_service_track_version(
    kube: client.ApiClient, namespace: str, http: httpx.Client, prometheus: PrometheusQuery
) -> None:
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    core.create_namespaced_config_map(
        namespace, behaviour_configmap({"v2": {"error_rate": 1.0, "latency_ms": FAST}})
    )
    apps.create_namespaced_deployment(namespace, shop_deployment("web", "web", "v2", 1, "canary"))
    (pod,) = _wait_ready(kube, namespace, "app=web", 1)
    ip = pod.status.pod_ip
    # /healthz is not counted among the app's requests: the 20 below are all there are.
    wait_until(
        partial(_answers, http, ip, "/healthz"), timeout=15, message=f"the pod to answer at {ip}"
    )

    codes = [http.get(f"http://{ip}:{APP_PORT}/").status_code for _ in range(20)]
    assert codes == [500] * 20

    selector = f'namespace="{namespace}",service="web",track="canary",version="v2"'
    expr = f'sum(http_requests_total{{{selector},handler="home",code="500"}})'

    def scraped() -> float | None:
        samples = prometheus.query(expr)
        return samples[0].value if samples and samples[0].value >= 20 else None

    total = wait_until(scraped, timeout=20, message=f"Prometheus to scrape the pod's 500s ({expr})")
    assert total == 20  # exactly what was sent: nothing else reached the pod
    labels = prometheus.query(f"http_requests_total{{{selector},handler='home',code='500'}}")[0]
    assert labels.labels["job"] == "kubernetes-pods"
    assert labels.labels["pod"] == pod.metadata.name
    assert labels.labels["instance"] == f"{ip}:{APP_PORT}"


def _split_setup(
    kube: client.ApiClient,
    namespace: str,
    weights: tuple[int, int],
    host: str,
    *,
    stable_pods: int = 2,
    split: str = "web-split",
    baseline: bool = False,
) -> None:
    """Stable and a 1-pod canary (and, as a weighted router runs one, a 1-pod baseline of the
    stable version) behind their track Services, weighted by a sticky TraefikService."""
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    healthy = {"error_rate": 0.0, "latency_ms": FAST}
    core.create_namespaced_config_map(
        namespace, behaviour_configmap({"v1": healthy, "v2": healthy})
    )
    apps.create_namespaced_deployment(
        namespace, shop_deployment("web", "web", "v1", stable_pods, "stable")
    )
    apps.create_namespaced_deployment(
        namespace, shop_deployment("web-canary", "web", "v2", 1, "canary")
    )
    core.create_namespaced_service(namespace, track_service("web-stable", "web", "stable"))
    core.create_namespaced_service(namespace, track_service("web-canary", "web", "canary"))
    stable, canary = weights
    services = {"web-stable": stable, "web-canary": canary}
    if baseline:
        apps.create_namespaced_deployment(
            namespace, shop_deployment("web-baseline", "web", "v1", 1, "baseline")
        )
        core.create_namespaced_service(namespace, track_service("web-baseline", "web", "baseline"))
        services["web-baseline"] = 0
    create_traefik(kube, namespace, weighted_sticky(split, services, "web_v"))
    create_traefik(kube, namespace, ingress_route("web", host, split))
    _wait_ready(kube, namespace, "app=web", stable_pods + (2 if baseline else 1))


def _versions_of_new_sessions(gateway: str, host: str, count: int) -> set[str | None]:
    seen = set()
    for _ in range(count):  # a new client each time: no sticky cookie, a new session
        with httpx.Client(trust_env=False, timeout=5) as probe:
            seen.add(probe.get(gateway, headers={"Host": host}).headers.get("X-Version"))
    return seen


@pytest.mark.usefixtures("local_cluster")
async def test_traefik_splits_new_sessions_by_weight_and_no_user_sees_two_versions(
    kube: client.ApiClient, namespace: str, stack: StackEnv, prometheus: PrometheusQuery
) -> None:
    host = f"web.{namespace}.test"
    _split_setup(kube, namespace, (90, 10), host)

    probes = 0

    def routed() -> bool:
        """Both versions answer through the gateway (Traefik has both backends' endpoints)."""
        nonlocal probes
        probes += 20
        return {"v1", "v2"} <= _versions_of_new_sessions(stack.gateway_url, host, 20)

    wait_until(routed, timeout=30, message=f"Traefik to route {host}")

    users = Users(
        stack.gateway_url,
        host,
        Behaviour(arrivals_per_s=250.0, pages=2, think_s=0.01),
        random.Random(11),
    )
    started = time.monotonic()
    tally = await users.run(sessions=2000)
    elapsed = time.monotonic() - started

    assert tally.total_sessions == 2000, f"{tally.failed_sessions} unanswered: {tally.requests}"
    assert tally.mixed == 0, "a user saw two versions in one session"
    assert tally.errors() == 0, dict(tally.requests)
    canary_share = tally.share("v2")
    assert abs(canary_share - 0.10) <= 0.03, f"canary got {canary_share:.3f} of new sessions"
    print(f"2000 sessions in {elapsed:.1f} s: canary share {canary_share:.4f}, mixed 0")

    # The gateway's own metrics, scraped by Prometheus, count the leaf services' requests.
    expr = f'sum by (service) (traefik_service_requests_total{{service=~"{namespace}-web-.*"}})'

    stable, canary = (f"{namespace}-web-{track}-80@kubernetescrd" for track in ("stable", "canary"))
    seen = {v: 0 for v in ("v1", "v2")}
    for (version, _), count in tally.requests.items():
        seen[version] = seen.get(version, 0) + count

    def counted() -> dict[str, float] | None:
        """Once every request users saw has been scraped (both backends at least as many)."""
        samples = prometheus.by_label(expr, "service")
        if samples.get(stable, 0) >= seen["v1"] and samples.get(canary, 0) >= seen["v2"]:
            return samples
        return None

    by_service = wait_until(
        counted, timeout=20, message="Prometheus to scrape Traefik's per-service requests"
    )
    assert set(by_service) == {stable, canary}
    # What the gateway counted per backend is what users saw per version, plus at most the
    # requests that waited for the route above.
    assert by_service[stable] - seen["v1"] <= probes
    assert by_service[canary] - seen["v2"] <= probes


@pytest.mark.usefixtures("local_cluster")
async def test_the_traefik_router_canaries_one_pod_at_5_percent_and_takes_pinned_users_back(
    kube: client.ApiClient, namespace: str, stack: StackEnv
) -> None:
    """Given a 1-pod target, the router's weight gives its 1-pod canary 5 % of new sessions
    (and its baseline as many); on finalize (weights 0) users pinned to the canary move to
    stable, and then the canary's pods go, without a single failed request."""
    host = f"web.{namespace}.test"
    _split_setup(kube, namespace, (100, 0), host, stable_pods=1, split="web", baseline=True)
    target = TargetRef(namespace=namespace, name="web")
    router = router_for(Traffic(router="traefik"), kube)
    assert (router.replicas(1, 5).canary, router.replicas(1, 5).baseline) == (1, 1)

    await router.set_routes(target, 5)
    wait_until(
        lambda: {"v1", "v2"} <= _versions_of_new_sessions(stack.gateway_url, host, 40),
        timeout=30,
        message="Traefik to send new sessions to the canary at 5 %",
    )
    users = Users(
        stack.gateway_url, host, Behaviour(arrivals_per_s=250.0, pages=0), random.Random(5)
    )
    tally = await users.run(sessions=2000)
    assert tally.total_sessions == 2000 and tally.mixed == 0 and tally.errors() == 0
    assert abs(tally.share("v2") - 0.05) <= 0.03, f"canary got {tally.share('v2'):.3f}"

    # Returning users, pinned by their cookie; some of them to the canary.
    jars = [
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), trust_env=False)
        for _ in range(200)
    ]
    codes: list[int] = []

    async def visit_all() -> list[str]:
        async def visit(jar: aiohttp.ClientSession) -> str:
            async with jar.get(stack.gateway_url + "/", headers={"Host": host}) as response:
                await response.read()
                codes.append(response.status)
                return response.headers.get("X-Version", "none")

        return list(await asyncio.gather(*(visit(jar) for jar in jars)))

    try:
        first = await visit_all()
        assert "v2" in first, "with 200 users at 5 %, some are pinned to the canary"

        await router.finalize(target)
        await async_wait_until(
            lambda: _all_stable(visit_all),
            timeout=15,
            message="every returning user, canary-pinned ones included, on stable",
        )
        client.AppsV1Api(kube).patch_namespaced_deployment_scale(
            "web-canary", namespace, {"spec": {"replicas": 0}}
        )
        wait_until(
            lambda: not ready_pods(kube, namespace, "canaryflow.io/track=canary") or None,
            timeout=30,
            message="the canary's pods to go",
        )
        assert set(await visit_all()) == {"v1"}
    finally:
        await asyncio.gather(*(jar.close() for jar in jars))
    assert set(codes) == {200}, f"requests that failed: {[c for c in codes if c != 200]}"


async def _all_stable(visit_all: Callable[[], Awaitable[list[str]]]) -> bool | None:
    return set(await visit_all()) == {"v1"} or None


@pytest.mark.usefixtures("local_cluster")
def test_the_stack_s_users_reach_a_service_s_versions_in_proportion_to_ready_pods(
    kube: client.ApiClient, namespace: str, prometheus: PrometheusQuery
) -> None:
    """A Service that asks for users gets them from the stack, each straight to one Ready pod
    (as kube-proxy sends): the pods' own counts, scraped by Prometheus, split like the pods."""
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    healthy = {"error_rate": 0.0, "latency_ms": FAST}
    core.create_namespaced_config_map(
        namespace, behaviour_configmap({"v1": healthy, "v2": healthy})
    )
    apps.create_namespaced_deployment(namespace, shop_deployment("web", "web", "v1", 9, "stable"))
    apps.create_namespaced_deployment(
        namespace, shop_deployment("web-canary", "web", "v2", 1, "canary")
    )
    _wait_ready(kube, namespace, "app=web", 10)
    core.create_namespaced_service(namespace, users_service("web", "web", 60))

    selector = f'namespace="{namespace}",service="web",handler="home"'
    counts = f"sum by (version, track) (http_requests_total{{{selector}}})"
    seen: list[dict[str, float]] = []

    def enough() -> dict[str, float] | None:
        samples = prometheus.query(counts)
        by_version = {s.labels["version"]: s.value for s in samples}
        seen.append(by_version)
        if set(by_version) != {"v1", "v2"} or sum(by_version.values()) < 800:
            return None
        assert {s.labels["version"]: s.labels["track"] for s in samples} == {
            "v1": "stable",
            "v2": "canary",
        }
        return by_version

    try:
        by_version = wait_until(enough, timeout=60, message="800 visits in Prometheus")
    except WaitTimeout as exc:
        pytest.fail(f"{exc}; last counts by version: {seen[-3:]}")
    share = by_version["v2"] / sum(by_version.values())
    print(f"users straight to the pods: {by_version}, canary share {share:.3f} (1 pod of 10)")
    assert share == pytest.approx(0.10, abs=0.04)
    # What users saw is exported too: sessions by version, none failed for want of a pod.
    sessions = f'sum by (version) (canaryflow_users_sessions_total{{namespace="{namespace}"}})'
    saw = wait_until(
        lambda: (found := prometheus.by_label(sessions, "version")) and found,
        timeout=20,
        message="the users' own sessions in Prometheus",
    )
    assert set(saw) == {"v1", "v2"}, saw
    unrouted = f'sum(canaryflow_users_unrouted_total{{namespace="{namespace}"}})'
    assert [s.value for s in prometheus.query(unrouted)] == [0]
