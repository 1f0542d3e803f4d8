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
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
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
    ApplyPhase,
    PhaseReached,
    ReleaseRolledBack,
    ReleaseSucceeded,
    RequestPromotion,
    RollbackRequested,
    VerdictAction,
)
from tests.e2e.conftest import Releases
from tests.support import StackEnv, async_wait_until
from tests.support.wait import WaitTimeout

pytestmark = [pytest.mark.stack, pytest.mark.usefixtures("local_cluster")]

FAST = {"median": 3, "p99": 10}
BEHAVIOURS = {
    "v1": {"error_rate": 0.0, "latency_ms": FAST},
    "v2": {"error_rate": 0.0, "latency_ms": FAST},
    "v2-bad": {"error_rate": 0.2, "latency_ms": FAST},
}
COOKIE = "shop_v"
CANARY_HEADER = {"X-Canary": "always"}
SESSIONS = 2000
"""New sessions measured over the steps at least (the issue's 2,000)."""
SESSIONS_PER_STEP = 400
"""And at each step: Traefik's weighted round robin is deterministic, so a few hundred tell a
share to within a point; this process's users arrive at 20-50 a second on a loaded machine."""
SPLIT_HOLD_SECONDS = 25
"""Long enough for 400 new sessions a step inside its window on a loaded 2-core machine,
where the users of this process arrive at 20-50 a second rather than 100 (485 in a 25 s
step at a load average of 14)."""
STEP_HOLD_SECONDS = 15
GATEWAY_SETTLE_SECONDS = 2.0
"""Requests sent this soon after a step was reached are left out of its measurement: the
executor reports a step once the routing objects (or the pods) are in place, and Traefik
applies them at its next reload (100 ms throttle; about a second seen on a loaded machine)."""
BROWSING = Behaviour(arrivals_per_s=25, pages=5, think_s=0.1, timeout_s=5)
"""Users who keep browsing while a release runs: sessions of ~7 clicks over ~1 s."""
LINGERING = Behaviour(arrivals_per_s=25, pages=30, think_s=0.2, timeout_s=5)
"""Users on the site for ~6 s each: at a 10 % canary share about 15 of them are on the canary
at any moment, so a rollback surely finds some mid-session (with ~1 s sessions it found
none in about one run of five)."""
ARRIVING = Behaviour(arrivals_per_s=100, pages=0, timeout_s=5)
"""New sessions all along: the landing page (and a cart and purchase for some)."""


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
    spec = shop.quick_policy(**{"min_requests": 20, **policy})
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

    seen: list[Counter[str]] = []

    async def only() -> bool | None:
        seen.append(await _fresh(url, host, 20))
        return True if seen[-1] == {version: 20} else None

    try:
        await async_wait_until(only, timeout=60, message=f"the gateway to route {host}")
    except WaitTimeout as error:
        last = seen[-1] if seen else None
        raise WaitTimeout(f"{error}; 20 new users got {last}, not only {version}") from None


@asynccontextmanager
async def _crowd(url: str, host: str, behaviour: Behaviour, seed: int) -> AsyncIterator[Users]:
    """Users arriving for as long as the block runs, every response recorded."""
    users = Users(url, host, behaviour, random.Random(seed), record=True)
    stop = asyncio.Event()
    running = asyncio.create_task(users.run(stop=stop))
    try:
        yield users
    finally:
        stop.set()
        await running


@dataclass(frozen=True)
class Window:
    """When a step's weight surely held at the gateway: from ``GATEWAY_SETTLE_SECONDS`` after
    the step was reached to the first command after it that moves traffic."""

    weight: int
    start: float
    end: float

    def holds(self, sent: float) -> bool:
        return self.start <= sent < self.end


def _moves_traffic(event: Envelope[EventData]) -> bool:
    data = event.data
    if isinstance(data, AnalysisVerdict):
        return data.action is VerdictAction.ROLLBACK
    return isinstance(data, ApplyPhase | RequestPromotion | RollbackRequested)


def _windows(events: list[Envelope[EventData]]) -> list[Window]:
    """One window per step reached, in order."""
    windows: list[Window] = []
    reached: set[int] = set()
    for index, event in enumerate(events):
        if not isinstance(event.data, PhaseReached) or event.data.step.index in reached:
            continue
        reached.add(event.data.step.index)
        end = next((e for e in events[index + 1 :] if _moves_traffic(e)), None)
        assert end is not None, f"nothing ended step {event.data.step.index}: {events[-1].type}"
        start = event.time.timestamp() + GATEWAY_SETTLE_SECONDS
        windows.append(Window(event.data.step.weight, start, end.time.timestamp()))
    return windows


def _new_sessions(responses: list[Response], window: Window) -> Counter[str]:
    """The version each session that began inside ``window`` got first."""
    first: dict[int, Response] = {}
    for r in responses:
        if r.session not in first or r.sent < first[r.session].sent:
            first[r.session] = r
    return Counter(r.version for r in first.values() if window.holds(r.sent))


def _requests(responses: list[Response], window: Window) -> Counter[str]:
    """The versions that answered the requests sent inside ``window``."""
    return Counter(r.version for r in responses if window.holds(r.sent))


async def _served(users: Users, version: str) -> None:
    """Wait until ``version`` has answered one of ``users`` (the gateway routes to it)."""

    async def answered() -> bool | None:
        return True if any(r.version == version for r in users.responses) else None

    await async_wait_until(answered, timeout=30, message=f"users to reach {version}")


@asynccontextmanager
async def _crowds(url: str, host: str, seed: int) -> AsyncIterator[tuple[Users, Users]]:
    """Browsing users and new sessions arriving, for as long as the block runs."""
    async with (
        _crowd(url, host, BROWSING, seed) as browsing,
        _crowd(url, host, ARRIVING, seed + 10) as arriving,
    ):
        yield browsing, arriving


def _mixed(responses: list[Response], until: float, since: float = 0.0) -> list[Response]:
    """The responses of sessions begun at ``since`` or later that got two versions from
    requests sent before ``until``.

    ``since``: the router's take-over (the first step reached). A session begun before it
    holds a cookie for the route's own Service, which the release replaces with per-track
    ones, so Traefik re-pins it once by the weights then in force (docs/traffic.md); from
    then on it keeps its version like any other."""
    versions: dict[int, set[str]] = {}
    began: dict[int, float] = {}
    for r in responses:
        began[r.session] = min(began.get(r.session, r.sent), r.sent)
        if r.sent < until and r.version != NO_VERSION:
            versions.setdefault(r.session, set()).add(r.version)
    mixed = {
        session for session, seen in versions.items() if len(seen) > 1 and began[session] >= since
    }
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
        kube,
        namespace,
        releases,
        url,
        tag="v2",
        replicas=4,
        router="traefik",
        hold_seconds=SPLIT_HOLD_SECONDS,
    )

    returning = [
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), trust_env=False)
        for _ in range(200)
    ]
    visits: list[list[str]] = []
    matched: Counter[str] = Counter()
    checked: list[float] = []
    try:
        async with _crowds(url, host, seed=1) as (browsing, arriving):
            for index in range(3):
                await releases.events(
                    release_id, until=(PhaseReached,), timeout=90, stop=_at_step(index)
                )
                if index == 0:
                    # Returning users first come once the gateway sends new ones to the canary.
                    await _served(arriving, "v2")
                visits.append(await _visit(url, host, returning))
                matched += await _fresh(url, host, 20, CANARY_HEADER)
                checked.append(time.time())
            events = await releases.events(release_id, timeout=120)
    finally:
        await asyncio.gather(*(jar.close() for jar in returning))

    assert isinstance(events[-1].data, ReleaseSucceeded), [e.type for e in events]
    windows = _windows(events)
    assert [w.weight for w in windows] == [10, 30, 50], windows
    late = [round(at - w.end, 2) for at, w in zip(checked, windows, strict=True) if at >= w.end]
    assert not late, f"the test's visits ran past their step's end by {late} s: hold longer"
    counted = {w.weight: _new_sessions(arriving.responses, w) for w in windows}
    shares = {weight: seen["v2"] / max(seen.total(), 1) for weight, seen in counted.items()}
    promoting_at = next(e for e in events if isinstance(e.data, RequestPromotion)).time.timestamp()
    taken_over = windows[0].start  # the first step reached: the router's objects in place
    moved = sum(len(set(versions)) > 1 for versions in zip(*visits, strict=True))
    # Session numbers are per crowd: each crowd's sessions are checked on their own.
    crowds = (browsing, arriving)
    mixed = [r for c in crowds for r in _mixed(c.responses, promoting_at, since=taken_over)]
    repinned = sum(
        len({r.session for r in _mixed(c.responses, promoting_at)})
        - len({r.session for r in _mixed(c.responses, promoting_at, since=taken_over)})
        for c in crowds
    )
    vanished = _vanished(browsing.responses + arriving.responses)
    print(
        f"shares of new sessions by weight: { {w: round(s, 4) for w, s in shares.items()} } "
        f"over { {weight: seen.total() for weight, seen in counted.items()} } sessions begun "
        f"inside each step; returning users who changed version across the step changes: "
        f"{moved} of {len(returning)}; header-matched: {dict(matched)}; browsing and "
        f"arriving: {browsing.tally.total_sessions + arriving.tally.total_sessions} sessions, "
        f"{len(browsing.responses) + len(arriving.responses)} requests, "
        f"{len({r.session for r in mixed})} begun after the take-over saw two versions before "
        f"promotion {_when(mixed, events)}; {repinned} begun before it were re-pinned; "
        f"{len(vanished)} unanswered"
    )
    assert sum(seen.total() for seen in counted.values()) >= SESSIONS, counted
    for window in windows:
        seen = counted[window.weight]
        assert seen.total() >= SESSIONS_PER_STEP, f"{seen.total()} new sessions at {window}"
        assert set(seen) <= {"v1", "v2"}, seen
        share = shares[window.weight]
        assert abs(share - window.weight / 100) <= 0.03, f"at {window} the canary got {share:.3f}"
    # Returning users pinned at 10 % keep their version at 30 % and 50 %: nobody moved.
    assert set(visits[0]) == {"v1", "v2"}
    assert moved == 0, f"{moved} of {len(returning)} returning users changed version"
    assert matched == Counter({"v2": 60}), "a header-matched request missed the canary"
    assert mixed == [], _when(mixed, events)
    assert vanished == [], _when(vanished, events)
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

    async with _crowd(url, host, LINGERING, seed=2) as browsing:
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
    mixed = _mixed(seen, until=verdict_at, since=_windows(events)[0].start)
    assert mixed == [], _when(mixed, events)
    assert matched_after == Counter({"v1": 10}), "the header match outlived the release"
    assert _services(kube, namespace) == {"web"}


async def test_a_one_pod_target_is_canaried_at_5_percent_by_traefik(
    kube: client.ApiClient, namespace: str, releases: Releases, stack: StackEnv
) -> None:
    url = stack.gateway_url
    host, release_id = await _released(
        kube,
        namespace,
        releases,
        url,
        tag="v2",
        replicas=1,
        router="traefik",
        weights=(5,),
        hold_seconds=STEP_HOLD_SECONDS,
    )

    # Users keep arriving and browsing throughout: the analysis judges the canary on its 5 %.
    async with _crowds(url, host, seed=3) as (browsing, arriving):
        events = await releases.events(release_id, timeout=120)

    assert isinstance(events[-1].data, ReleaseSucceeded), [e.type for e in events]
    step = next(e.data for e in events if isinstance(e.data, PhaseReached))
    (window,) = _windows(events)
    seen = _new_sessions(arriving.responses, window)
    share = seen["v2"] / max(seen.total(), 1)
    vanished = _vanished(browsing.responses + arriving.responses)
    print(
        f"1-pod target at 5 %: the canary got {share:.3f} of {seen.total()} new sessions "
        f"begun inside the step; {len(vanished)} unanswered"
    )
    assert (step.step.weight, step.canary_ready, step.stable_ready) == (5, 1, 1)
    assert seen.total() >= 500, f"{seen.total()} new sessions at {window}"
    assert set(seen) <= {"v1", "v2"}, seen
    assert abs(share - 0.05) <= 0.03
    assert _mixed(arriving.responses, until=window.end) == []
    assert vanished == [], _when(vanished, events)


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
        hold_seconds=10,
    )

    async with _crowds(url, host, seed=4) as (browsing, arriving):
        events = await releases.events(release_id, timeout=120)
        await async_wait_until(
            lambda: _no_canary_pods(kube, namespace), timeout=30, message="the canary to go"
        )
    final = tag if outcome is ReleaseSucceeded else "v1"
    await _serving(url, host, final)

    assert isinstance(events[-1].data, outcome), [e.type for e in events]
    # Every request is routed on its own over the Ready pods: the canary's share of requests
    # is its share of pods (1 of 10 at 10 %, besides a baseline pod on stable).
    window = _windows(events)[0]
    seen = _requests(browsing.responses + arriving.responses, window)
    share = seen[tag] / max(seen.total(), 1)
    vanished = _vanished(browsing.responses + arriving.responses)
    print(
        f"replica ratio, {tag}: {share:.3f} of {seen.total()} requests sent inside the step "
        f"on the canary at {window.weight} %; responses by version "
        f"{dict(Counter(r.version for r in browsing.responses + arriving.responses))}; "
        f"{len(vanished)} unanswered"
    )
    # A bad canary's step ends at its failing verdict, seconds after it began: Traefik's
    # round robin over the endpoints makes a hundred requests enough to tell 1 pod in 11.
    assert seen.total() >= 100, f"{seen.total()} requests at {window}"
    assert abs(share - window.weight / 100) <= 0.04, seen
    assert vanished == [], _when(vanished, events)
    assert _services(kube, namespace) == {"web"}
