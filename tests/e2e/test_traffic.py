"""Releases through the gateway with real users: shares, sticky sessions, header matches and
rollbacks, measured by the HTTP clients that went through Traefik.

Given a shop whose pods answer HTTP (each response says its version in ``X-Version``), an
IngressRoute for its host and a ReleasePolicy naming the router, when a system requests a
release on NATS, then the executor routes new sessions by the step's weight, users stay on
the version they got, a header-matched user always reaches the canary, and a failing
verdict puts every user back on stable before the canary's pods go, with no request lost.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from kubernetes import client

from canaryflow.dataplane.objects import (
    IMAGE,
    behaviour_configmap,
    create_traefik,
    ingress_route,
    shop_deployment,
    track_service,
    weighted_sticky,
)
from canaryflow.dataplane.shop import VERSION_HEADER
from canaryflow.dataplane.users import NO_VERSION, Behaviour, Response, Users
from canaryflow.demo import shop
from canaryflow_contracts import Envelope, EventData
from canaryflow_contracts.events import (
    AnalysisVerdict,
    PhaseReached,
    ReleaseRolledBack,
    ReleaseSucceeded,
    RequestPromotion,
    VerdictAction,
)
from tests.e2e.conftest import Releases
from tests.support import StackEnv, async_wait_until

pytestmark = [pytest.mark.stack, pytest.mark.usefixtures("local_cluster")]

FAST = {"median": 3, "p99": 10}
BEHAVIOURS = {
    "v1": {"error_rate": 0.0, "latency_ms": FAST},
    "v2": {"error_rate": 0.0, "latency_ms": FAST},
    "v2-bad": {"error_rate": 0.2, "latency_ms": FAST},
}
COOKIE = "shop_v"
CANARY_HEADER = {"X-Canary": "always"}
SESSIONS_PER_STEP = 700
"""New sessions measured at each step: 2,100 over 10/30/50 %."""
BROWSING = Behaviour(arrivals_per_s=25, pages=5, think_s=0.1, timeout_s=5)
"""Users who keep browsing while a release runs: sessions of ~7 clicks over ~1 s."""
ONE_CLICK = Behaviour(arrivals_per_s=300, pages=0, timeout_s=5)
"""New sessions only: the landing page (and a cart and purchase for some)."""


def _shop(kube: client.ApiClient, namespace: str, replicas: int, router: str, **policy: Any) -> str:
    """The shop behind the gateway under a quick policy naming ``router``; returns its host."""
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    host = f"web.{namespace}.test"
    core.create_namespaced_config_map(namespace, behaviour_configmap(BEHAVIOURS))
    apps.create_namespaced_deployment(
        namespace, shop_deployment("web", "web", "v1", replicas, "stable")
    )
    # The target's own Service, every track's pods: the replica ratio routes through it, the
    # weighted routers copy its ports.
    core.create_namespaced_service(namespace, track_service("web", "web", None))
    spec = shop.quick_policy(compare=False, min_requests=20, **policy)
    spec["traffic"] = {"router": router}
    if router == "traefik":
        # As a person sets it up: the route goes through a TraefikService named like the
        # target, which the router takes over during a release and gives back after it.
        create_traefik(kube, namespace, weighted_sticky("web", {"web": 1}, COOKIE))
        create_traefik(kube, namespace, ingress_route("web", host, "web"))
        spec["traffic"] |= {
            "sticky": {"cookieName": COOKIE},
            "match": [{"headers": [{"name": "X-Canary", "exact": "always"}]}],
        }
    else:
        create_traefik(kube, namespace, ingress_route("web", host, "web", kind="Service"))
    shop.apply_policy(kube, namespace, spec)
    return host


async def _released(
    kube: client.ApiClient,
    namespace: str,
    releases: Releases,
    url: str,
    *,
    tag: str,
    replicas: int,
    router: str,
    **policy: Any,
) -> tuple[str, str]:
    """Given the shop served through the gateway, a release of ``tag`` is requested; returns
    the shop's host and the release's id."""
    host = _shop(kube, namespace, replicas, router, **policy)
    await _serving(url, host)
    return host, await releases.request(namespace, f"{IMAGE}:{tag}")


async def _fresh(
    url: str, host: str, count: int, headers: dict[str, str] | None = None
) -> Counter[str]:
    """Versions seen by ``count`` new clients (no cookie), one request each."""
    seen: Counter[str] = Counter()
    async with aiohttp.ClientSession(
        headers={"Host": host, **(headers or {})}, trust_env=False
    ) as http:
        for _ in range(count):
            http.cookie_jar.clear()
            async with http.get(url + "/") as response:
                await response.read()
                seen[response.headers.get(VERSION_HEADER, NO_VERSION)] += 1
    return seen


async def _serving(url: str, host: str, version: str = "v1") -> None:
    """Wait until the gateway sends every new request for ``host`` to ``version`` (before the
    release: it answers 404 until it has loaded the route)."""

    async def only() -> bool | None:
        return True if await _fresh(url, host, 20) == {version: 20} else None

    await async_wait_until(only, timeout=20, message=f"the gateway to route {host} to {version}")


@asynccontextmanager
async def _browsing(url: str, host: str, seed: int) -> AsyncIterator[Users]:
    """Users arriving and browsing for as long as the block runs, every response recorded."""
    users = Users(url, host, BROWSING, random.Random(seed), record=True)
    stop = asyncio.Event()
    running = asyncio.create_task(users.run(stop=stop))
    try:
        yield users
    finally:
        stop.set()
        await running


def _mixed(responses: list[Response], until: float) -> list[Response]:
    """The responses of sessions that got two versions from requests sent before ``until``."""
    versions: dict[int, set[str]] = {}
    for r in responses:
        if r.sent < until and r.version != NO_VERSION:
            versions.setdefault(r.session, set()).add(r.version)
    mixed = {session for session, seen in versions.items() if len(seen) > 1}
    return [r for r in responses if r.session in mixed and r.sent < until]


def _vanished(responses: list[Response]) -> list[Response]:
    """Requests no pod answered: the gateway's 404/502/503, a reset or a timeout."""
    return [r for r in responses if r.version == NO_VERSION]


def _when(responses: list[Response], events: list[Envelope[EventData]]) -> list[str]:
    """Each response, placed after the last event before it was sent (for failure messages)."""
    placed = []
    for r in responses[:20]:
        before = [e for e in events if e.time.timestamp() <= r.sent]
        after = f"{before[-1].type.removeprefix('io.canaryflow.')}" if before else "start"
        offset = r.sent - before[-1].time.timestamp() if before else 0.0
        placed.append(f"{r.session}: {r.version} {r.status} {offset:+.2f} s after {after}")
    return placed


def _at_step(index: int) -> Callable[[Envelope[EventData]], bool]:
    return lambda e: isinstance(e.data, PhaseReached) and e.data.step.index == index


def _services(kube: client.ApiClient, namespace: str) -> set[str]:
    services = client.CoreV1Api(kube).list_namespaced_service(namespace).items
    return {s.metadata.name for s in services}


async def _no_canary_pods(kube: client.ApiClient, namespace: str) -> bool | None:
    pods = await asyncio.to_thread(
        client.CoreV1Api(kube).list_namespaced_pod,
        namespace,
        label_selector="canaryflow.io/track=canary",
    )
    return True if not pods.items else None


async def _visit(url: str, host: str, jars: list[aiohttp.ClientSession]) -> list[str]:
    """One request from each returning user (a jar keeps its cookies between visits)."""

    async def visit(jar: aiohttp.ClientSession) -> str:
        async with jar.get(url + "/", headers={"Host": host}) as response:
            await response.read()
            return response.headers.get(VERSION_HEADER, NO_VERSION)

    return list(await asyncio.gather(*(visit(jar) for jar in jars)))


async def test_traefik_release_splits_new_sessions_keeps_users_sticky_and_serves_matched_users(
    kube: client.ApiClient, namespace: str, releases: Releases, stack: StackEnv
) -> None:
    url = stack.gateway_url
    host, release_id = await _released(
        kube, namespace, releases, url, tag="v2", replicas=4, router="traefik", hold_seconds=10
    )

    shares: dict[int, float] = {}
    returning = [
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), trust_env=False)
        for _ in range(200)
    ]
    visits: list[list[str]] = []
    matched: Counter[str] = Counter()
    try:
        async with _browsing(url, host, seed=1) as browsing:
            for index in range(3):
                reached = await releases.events(
                    release_id, until=(PhaseReached,), timeout=90, stop=_at_step(index)
                )
                weight = reached[-1].data.step.weight  # type: ignore[attr-defined]
                users = Users(url, host, ONE_CLICK, random.Random(index))
                tally = await users.run(sessions=SESSIONS_PER_STEP)
                assert tally.mixed == 0 and tally.errors() == 0, dict(tally.requests)
                assert tally.total_sessions == SESSIONS_PER_STEP
                shares[weight] = tally.share("v2")
                visits.append(await _visit(url, host, returning))
                matched += await _fresh(url, host, 20, CANARY_HEADER)
            events = await releases.events(release_id, timeout=120)
    finally:
        await asyncio.gather(*(jar.close() for jar in returning))

    assert isinstance(events[-1].data, ReleaseSucceeded), [e.type for e in events]
    promoting = next(e for e in events if isinstance(e.data, RequestPromotion))
    moved = sum(len(set(versions)) > 1 for versions in zip(*visits, strict=True))
    mixed = _mixed(browsing.responses, until=promoting.time.timestamp())
    print(
        f"shares of new sessions by weight: { {w: round(s, 4) for w, s in shares.items()} } "
        f"({SESSIONS_PER_STEP} each); returning users who changed version across the step "
        f"changes: {moved} of {len(returning)}; header-matched: {dict(matched)}; browsing: "
        f"{browsing.tally.total_sessions} sessions, {len(browsing.responses)} requests, "
        f"{len({r.session for r in mixed})} saw two versions before promotion, "
        f"{len(_vanished(browsing.responses))} unanswered"
    )
    for weight, share in shares.items():
        assert abs(share - weight / 100) <= 0.03, f"at {weight} % the canary got {share:.3f}"
    # Returning users pinned at 10 % keep their version at 30 % and 50 %: nobody moved.
    assert set(visits[0]) == {"v1", "v2"}
    assert moved == 0, f"{moved} of {len(returning)} returning users changed version"
    assert matched == Counter({"v2": 60}), "a header-matched request missed the canary"
    assert mixed == [], _when(mixed, events)
    assert _vanished(browsing.responses) == [], _when(_vanished(browsing.responses), events)
    # The per-track Services are gone with the release; the target's own Service remains,
    # and the TraefikService it routed through is given back.
    assert _services(kube, namespace) == {"web"}
    await _serving(url, host, "v2")


async def test_a_bad_version_is_rolled_back_through_traefik_with_no_request_lost(
    kube: client.ApiClient, namespace: str, releases: Releases, stack: StackEnv
) -> None:
    url = stack.gateway_url
    host, release_id = await _released(
        kube, namespace, releases, url, tag="v2-bad", replicas=4, router="traefik", hold_seconds=20
    )

    async with _browsing(url, host, seed=2) as browsing:
        events = await releases.events(release_id, timeout=120)
        # Users keep coming until the canary's pods are gone for sure.
        await async_wait_until(
            lambda: _no_canary_pods(kube, namespace), timeout=30, message="the canary's pods to go"
        )
    matched_after = await _fresh(url, host, 10, CANARY_HEADER)

    assert isinstance(events[-1].data, ReleaseRolledBack), [e.type for e in events]
    verdict_at = next(
        e
        for e in events
        if isinstance(e.data, AnalysisVerdict) and e.data.action is VerdictAction.ROLLBACK
    ).time.timestamp()
    seen = browsing.responses
    canary = [r for r in seen if r.version == "v2-bad"]
    assert canary, "the bad version served nobody: nothing was judged from real traffic"
    last = max(r.sent for r in canary)
    pinned = {r.session for r in canary if r.sent <= last}
    # Sessions that were on the canary and went on after the last request that reached it:
    # moved to stable by the rollback, mid-session.
    moved = {r.session for r in seen if r.session in pinned and r.sent > last}
    moved_requests = [r for r in seen if r.session in moved and r.sent > last]
    print(
        f"{len(seen)} requests in {browsing.tally.total_sessions} sessions; canary answered "
        f"{len(canary)}; last request to reach it sent {last - verdict_at:+.3f} s from the "
        f"failing verdict; {len(moved)} sessions on the canary moved to stable mid-session, "
        f"their {len(moved_requests)} later requests answered by "
        f"{dict(Counter((r.version, r.status) for r in moved_requests))}; requests no pod "
        f"answered: {len(_vanished(seen))}"
    )
    # From the failing verdict, traffic is off the canary within the rollback's own latency
    # (bus, the rollback service, the API server, Traefik's reload), then none reaches it.
    assert last - verdict_at < 2.0
    assert moved, "no user was on the canary when it was rolled back: stickiness untested"
    assert {r.version for r in moved_requests} == {"v1"}
    assert {r.status for r in moved_requests} == {200}
    assert _vanished(seen) == [], _when(_vanished(seen), events)
    mixed = _mixed(seen, until=verdict_at)
    assert mixed == [], _when(mixed, events)
    assert matched_after == Counter({"v1": 10}), "the header match outlived the release"
    assert _services(kube, namespace) == {"web"}


async def test_a_one_pod_target_is_canaried_at_5_percent_by_traefik(
    kube: client.ApiClient, namespace: str, releases: Releases, stack: StackEnv
) -> None:
    host, release_id = await _released(
        kube,
        namespace,
        releases,
        stack.gateway_url,
        tag="v2",
        replicas=1,
        router="traefik",
        weights=(5,),
        hold_seconds=8,
    )

    # Users keep browsing throughout: the analysis judges the canary on its 5 %.
    async with _browsing(stack.gateway_url, host, seed=3) as browsing:
        reached = await releases.events(release_id, until=(PhaseReached,), timeout=90)
        users = Users(stack.gateway_url, host, ONE_CLICK, random.Random(3))
        tally = await users.run(sessions=1000)
        events = await releases.events(release_id, timeout=120)

    step = reached[-1].data
    assert isinstance(step, PhaseReached)
    share = tally.share("v2")
    print(f"1-pod target at 5 %: the canary got {share:.3f} of 1000 new sessions")
    assert (step.step.weight, step.canary_ready, step.stable_ready) == (5, 1, 1)
    assert abs(share - 0.05) <= 0.03 and tally.errors() == 0 and tally.mixed == 0
    assert _vanished(browsing.responses) == [], _when(_vanished(browsing.responses), events)
    assert isinstance(events[-1].data, ReleaseSucceeded), [e.type for e in events]


@pytest.mark.parametrize(
    ("tag", "outcome"), [("v2", ReleaseSucceeded), ("v2-bad", ReleaseRolledBack)]
)
async def test_the_replica_ratio_releases_and_rolls_back_with_real_requests(
    kube: client.ApiClient,
    namespace: str,
    releases: Releases,
    stack: StackEnv,
    *,
    tag: str,
    outcome: type,
) -> None:
    url = stack.gateway_url
    host, release_id = await _released(
        kube,
        namespace,
        releases,
        url,
        tag=tag,
        replicas=10,
        router="replica-ratio",
        weights=(10, 30),
        hold_seconds=8,
    )

    async with _browsing(url, host, seed=4) as browsing:
        reached = await releases.events(release_id, until=(PhaseReached,), timeout=90)
        # Every request is routed on its own over the Ready pods: the canary's share of
        # requests is its share of pods (1 of 10, besides a baseline pod on stable), give or
        # take the browsing users' requests interleaved with these (4 points: 3.3 sigma).
        step = await _fresh(url, host, 600)
        events = await releases.events(release_id, timeout=120)
        await async_wait_until(
            lambda: _no_canary_pods(kube, namespace), timeout=30, message="the canary to go"
        )
    final = tag if outcome is ReleaseSucceeded else "v1"
    await _serving(url, host, final)

    assert isinstance(events[-1].data, outcome), [e.type for e in events]
    weight = reached[-1].data.step.weight  # type: ignore[attr-defined]
    share = step[tag] / step.total()
    vanished = _vanished(browsing.responses)
    print(
        f"replica ratio, {tag}: {share:.3f} of requests on the canary at {weight} %; "
        f"responses by version {dict(Counter(r.version for r in browsing.responses))}; "
        f"{len(vanished)} unanswered"
    )
    assert abs(share - weight / 100) <= 0.04
    assert vanished == [], _when(vanished, events)
    assert _services(kube, namespace) == {"web"}
