"""Users for every Service that asks for them, straight to its Ready pods, as kube-proxy sends.

Why: a canary released with the replica ratio (no gateway) gets the share of users its Ready
pods have behind the Service, and a demo or a test needs users there without writing a load
generator of its own. A Service labelled ``canaryflow.io/users: "true"`` gets users arriving
at ``canaryflow.io/users-per-second`` (a Poisson process), each a real HTTP client with its own
cookie jar (``users.Users``) that picks one Ready endpoint of the Service from its
EndpointSlices, as a kube-proxy connection does, and walks the shop there: landing page,
``canaryflow.io/users-pages`` product pages (0 by default: one visit, one request), cart and
purchase when convinced. What each version did is then in the pods' own /metrics, which
Prometheus scrapes; this process exports only what users saw (``/metrics``, ``/tally``).

Why polling: like the pods' server, it must survive an API server restarted under it; a list
every ``--refresh`` seconds recovers by itself, and a failed list keeps the last endpoints.
Runs inside the stack's network namespace: the pods' addresses exist nowhere else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from canaryflow.dataplane import process
from canaryflow.dataplane.users import Behaviour, Tally, Users
from canaryflow.runtime.traffic.services import SERVICE_NAME_LABEL, endpoint_ready

log = logging.getLogger("canaryflow.dataplane.load")

USERS_LABEL = "canaryflow.io/users"
RATE_ANNOTATION = "canaryflow.io/users-per-second"
PAGES_ANNOTATION = "canaryflow.io/users-pages"
DEFAULT_RATE = 5.0
MAX_RATE = 500.0
MAX_ACTIVE = 400
"""Users in flight per Service at most: a slow version must not make the machine swap."""


@dataclass(frozen=True)
class Wanted:
    """What one labelled Service asks for."""

    namespace: str
    name: str
    rate: float
    pages: int

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def _number(raw: str | None, default: float, low: float, high: float) -> tuple[float, str | None]:
    if raw is None:
        return default, None
    try:
        value = float(raw)
    except ValueError:
        return default, f"not a number: {raw!r}"
    if not low <= value <= high:
        return default, f"outside [{low:g}, {high:g}]: {raw!r}"
    return value, None


def wanted(service: Any) -> tuple[Wanted, list[str]]:
    """The users a Service asks for, and what was wrong with its annotations (defaults used)."""
    meta = service.metadata
    annotations: Mapping[str, str] = meta.annotations or {}
    rate, rate_problem = _number(annotations.get(RATE_ANNOTATION), DEFAULT_RATE, 0, MAX_RATE)
    pages, pages_problem = _number(annotations.get(PAGES_ANNOTATION), 0, 0, 20)
    problems = [
        f"{name}: {problem}"
        for name, problem in ((RATE_ANNOTATION, rate_problem), (PAGES_ANNOTATION, pages_problem))
        if problem
    ]
    return Wanted(meta.namespace, meta.name, rate, int(pages)), problems


def ready_endpoints(slices: Iterable[Any]) -> list[str]:
    """``http://address:port`` of every ready endpoint (``endpoint_ready``) in a Service's
    EndpointSlices."""
    found: set[str] = set()
    for endpoint_slice in slices:
        ports = [p.port for p in (endpoint_slice.ports or []) if p.port and p.protocol == "TCP"]
        if not ports:
            continue
        for endpoint in endpoint_slice.endpoints or []:
            if not endpoint_ready(endpoint):
                continue
            for address in endpoint.addresses or []:
                found.add(f"http://{address}:{ports[0]}")
    return sorted(found)


@dataclass
class Crowd:
    """The users of one Service: its wish, its endpoints now, its arrivals loop."""

    wish: Wanted
    rng: random.Random
    endpoints: list[str] = field(default_factory=list)
    users: Users | None = None
    task: asyncio.Task[None] | None = None

    def pick(self) -> str | None:
        return self.rng.choice(self.endpoints) if self.endpoints else None

    async def arrive(self) -> None:
        """Users arrive at the wished rate, each to one endpoint picked on arrival."""
        sessions: set[asyncio.Task[None]] = set()
        try:
            while True:
                users = self.users
                if users is None or self.wish.rate <= 0:
                    await asyncio.sleep(0.5)
                    continue
                if users.active < MAX_ACTIVE:
                    task = asyncio.create_task(users.session())
                    sessions.add(task)
                    task.add_done_callback(sessions.discard)
                await asyncio.sleep(self.rng.expovariate(self.wish.rate))
        finally:
            for task in sessions:
                task.cancel()
            await asyncio.gather(*sessions, return_exceptions=True)


class Load:
    """Keeps one crowd of users per labelled Service in line with the cluster."""

    def __init__(
        self, core: Any, discovery: Any, rng: random.Random, timeout_s: float = 5.0
    ) -> None:
        self._core = core
        self._discovery = discovery
        self._rng = rng
        self._timeout_s = timeout_s
        self.crowds: dict[str, Crowd] = {}
        self.synced = False
        self._warned: set[str] = set()

    async def refresh(self) -> None:
        services = await asyncio.to_thread(
            self._core.list_service_for_all_namespaces,
            label_selector=f"{USERS_LABEL}=true",
            _request_timeout=self._timeout_s,
        )
        seen: set[str] = set()
        for service in services.items:
            wish, problems = wanted(service)
            for problem in problems:
                if f"{wish.key} {problem}" not in self._warned:
                    self._warned.add(f"{wish.key} {problem}")
                    log.warning("%s: %s (default used)", wish.key, problem)
            seen.add(wish.key)
            slices = await asyncio.to_thread(
                self._discovery.list_namespaced_endpoint_slice,
                wish.namespace,
                label_selector=f"{SERVICE_NAME_LABEL}={wish.name}",
                _request_timeout=self._timeout_s,
            )
            self._update(wish, ready_endpoints(slices.items))
        for key in sorted(set(self.crowds) - seen):
            await self._stop(key)
        self.synced = True

    def _update(self, wish: Wanted, endpoints: list[str]) -> None:
        crowd = self.crowds.get(wish.key)
        if crowd is None:
            crowd = Crowd(wish, random.Random(self._rng.random()))
            self.crowds[wish.key] = crowd
            log.info("users for %s: %g a second, %d pages", wish.key, wish.rate, wish.pages)
        if crowd.users is None or crowd.wish.pages != wish.pages:
            behaviour = Behaviour(arrivals_per_s=max(wish.rate, 0.001), pages=wish.pages)
            users = Users(crowd.pick, None, behaviour, random.Random(crowd.rng.random()))
            if crowd.users is not None:
                users.tally = crowd.users.tally
            crowd.users = users
        if crowd.wish != wish:
            log.info("users for %s now %g a second, %d pages", wish.key, wish.rate, wish.pages)
        crowd.wish = wish
        if endpoints != crowd.endpoints:
            log.info("%s: %d ready endpoints", wish.key, len(endpoints))
        crowd.endpoints = endpoints
        if crowd.task is None:
            crowd.task = asyncio.create_task(crowd.arrive())

    async def _stop(self, key: str) -> None:
        crowd = self.crowds.pop(key)
        if crowd.task is not None:
            crowd.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await crowd.task
        log.info("users for %s stopped", key)

    async def close(self) -> None:
        for key in list(self.crowds):
            await self._stop(key)

    def tallies(self) -> dict[str, Tally]:
        return {key: c.users.tally for key, c in self.crowds.items() if c.users is not None}


class _Collector(Collector):
    """What users saw, per Service, as Prometheus counters (read from the tallies)."""

    def __init__(self, load: Load) -> None:
        self._load = load

    def collect(self) -> Iterable[Any]:
        labels = ["namespace", "service", "version"]
        sessions = CounterMetricFamily(
            "canaryflow_users_sessions",
            "User sessions by the version they began on.",
            labels=labels,
        )
        requests = CounterMetricFamily(
            "canaryflow_users_requests",
            "Requests by the version that answered and the status (0: no answer).",
            labels=[*labels, "code"],
        )
        unrouted = CounterMetricFamily(
            "canaryflow_users_unrouted",
            "Users who found no Ready endpoint.",
            labels=["namespace", "service"],
        )
        mixed = CounterMetricFamily(
            "canaryflow_users_mixed_sessions",
            "Sessions that saw two versions or more (sticky routing broken for them).",
            labels=["namespace", "service"],
        )
        active = GaugeMetricFamily(
            "canaryflow_users_active", "Users in flight.", labels=["namespace", "service"]
        )
        for key, crowd in sorted(self._load.crowds.items()):
            namespace, name = key.split("/", 1)
            if crowd.users is None:
                continue
            tally = crowd.users.tally
            for version, count in sorted(tally.sessions.items()):
                sessions.add_metric([namespace, name, version], count)
            for (version, code), count in sorted(tally.requests.items()):
                requests.add_metric([namespace, name, version, str(code)], count)
            unrouted.add_metric([namespace, name], tally.unrouted)
            mixed.add_metric([namespace, name], tally.mixed)
            active.add_metric([namespace, name], crowd.users.active)
        return [sessions, requests, unrouted, mixed, active]


def _own_app(load: Load, registry: CollectorRegistry) -> web.Application:
    async def tally(request: web.Request) -> web.Response:
        """Per Service: users per second wished, Ready endpoints, sessions by version."""
        body = {
            key: {
                "users_per_second": crowd.wish.rate,
                "endpoints": len(crowd.endpoints),
                "sessions": dict(crowd.users.tally.sessions) if crowd.users else {},
                "errors": crowd.users.tally.errors() if crowd.users else 0,
                "unrouted": crowd.users.tally.unrouted if crowd.users else 0,
            }
            for key, crowd in sorted(load.crowds.items())
        }
        return web.json_response(body)

    app = process.own_app(lambda: load.synced, registry, "Services")
    app.router.add_get("/tally", tally)
    return app


async def run(args: argparse.Namespace) -> int:
    from kubernetes import client

    from canaryflow.runtime.kube import api_client

    api = api_client(args.kubeconfig)
    load = Load(client.CoreV1Api(api), client.DiscoveryV1Api(api), random.Random(args.seed))
    registry = CollectorRegistry()
    registry.register(_Collector(load))
    return await process.serve(
        _own_app(load, registry),
        args,
        refresh=load.refresh,
        close=load.close,
        what="Services",
        log=log,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = process.parse(
        argv,
        prog="python -m canaryflow.dataplane.load",
        description="Users for every Service labelled canaryflow.io/users=true, straight to its "
        "Ready pods (inside the stack's namespace).",
        listen="127.0.0.1:19467",
    )
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
