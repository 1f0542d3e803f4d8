"""What the demo shows of real traffic: users behind the gateway, and the gateway's own figures.

Why both sides: users say what they got (the version in each answer, whether a session ever
saw two versions, whether a request failed); the gateway (Traefik, scraped by Prometheus) says
what it routed: its requests by status code for the shop's route. A rollback then shows from
both sides: the canary's users land on stable, and the requests that failed meanwhile (the
gateway's own 502s when a pod went away under it) are counted, not hidden.

The shop's Service is routed by an IngressRoute straight to its Ready endpoints with a sticky
cookie: each user stays on the pod, and so the version, they first got, and the split is the
replica ratio (the default router) as the gateway applies it.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
from kubernetes import client

from canaryflow.dataplane.objects import create_traefik, ingress_route
from canaryflow.dataplane.users import NO_VERSION, Behaviour, Tally, Users

COOKIE = "shop_pod"
_IP = re.compile(r"//([^:/]+)")


def traefik_services(namespace: str, route: str) -> str:
    """A PromQL regex for Traefik's name of the service an IngressRoute defines inline (a
    Kubernetes Service with a sticky cookie): ``<namespace>-<route>-<hash>@kubernetescrd``."""
    return f"{namespace}-{route}-[^@]+@kubernetescrd"


@dataclass
class Window:
    """What users behind the gateway saw between two looks."""

    sessions: Counter[str] = field(default_factory=Counter)
    mixed: int = 0
    failed: int = 0
    """Requests the gateway answered itself (no pod: 502/503/504) or not at all."""
    requests: int = 0

    @classmethod
    def between(cls, before: Tally, after: Tally) -> Window:
        sessions = Counter(after.sessions)
        sessions.subtract(before.sessions)
        requests = Counter(after.requests)
        requests.subtract(before.requests)
        failed = sum(
            n for (v, code), n in requests.items() if v == NO_VERSION and code in (0, 502, 503, 504)
        )
        return cls(
            sessions=+sessions,
            mixed=after.mixed - before.mixed,
            failed=failed,
            requests=sum(requests.values()),
        )

    def line(self) -> str:
        total = sum(self.sessions.values())
        shares = ", ".join(
            f"{v} {n} ({n / total:.0%})" for v, n in sorted(self.sessions.items()) if total
        )
        return (
            f"{total} new sessions [{shares or 'none'}], {self.mixed} saw two versions, "
            f"{self.failed} of {self.requests} requests failed at the gateway"
        )


def snapshot(tally: Tally) -> Tally:
    """A copy of what users saw so far, to subtract from a later one."""
    return Tally(
        sessions=Counter(tally.sessions), requests=Counter(tally.requests), mixed=tally.mixed
    )


class GatewayView:
    """Users through Traefik to the shop's Service, and Traefik's figures from Prometheus."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        gateway_url: str,
        prometheus_url: str,
        users_per_second: float,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.host = f"web.{namespace}.demo"
        self.prometheus_url = prometheus_url.rstrip("/")
        behaviour = Behaviour(arrivals_per_s=users_per_second, pages=2, think_s=0.3, timeout_s=5)
        self.users = Users(gateway_url, self.host, behaviour, random.Random(7))
        self._stop = asyncio.Event()
        self._crowd: asyncio.Task[Tally] | None = None

    def route(self) -> None:
        """The IngressRoute: the shop's Service, every user pinned to a pod by a cookie."""
        create_traefik(
            self.api, self.namespace, ingress_route("web", self.host, "web", "Service", COOKIE)
        )

    def start(self) -> None:
        self._crowd = asyncio.create_task(self.users.run(stop=self._stop))

    async def stop(self) -> None:
        self._stop.set()
        if self._crowd is not None:
            await self._crowd

    def snapshot(self) -> Tally:
        return snapshot(self.users.tally)

    async def _query(self, promql: str) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=3, trust_env=False) as http:
            response = await http.get(
                f"{self.prometheus_url}/api/v1/query", params={"query": promql}
            )
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()["data"]["result"]
        return result

    async def gateway_line(self, seconds: float) -> str:
        """Traefik's view: the route's requests by status code over the last ``seconds``."""
        service = traefik_services(self.namespace, "web")
        try:
            codes = await self._query(
                f'sum by (code) (increase(traefik_service_requests_total{{service=~"{service}"}}'
                f"[{max(int(seconds), 2)}s]))"
            )
        except (httpx.HTTPError, KeyError, ValueError) as error:
            return f"(gateway figures unavailable: {error})"
        by_code = {s["metric"].get("code", "?"): float(s["value"][1]) for s in codes}
        total = sum(by_code.values())
        counted = ", ".join(f"{c}: {n:.0f}" for c, n in sorted(by_code.items())) or "none"
        failed = sum(n for c, n in by_code.items() if c.startswith("5"))
        share = f", {failed / total:.1%} 5xx" if total else ""
        return f"Traefik counted {total:.0f} requests [{counted}]{share}"

    async def report_every(self, seconds: float) -> None:
        """Print both views every ``seconds`` until cancelled."""
        before = self.snapshot()
        while True:
            await asyncio.sleep(seconds)
            now = self.snapshot()
            print(
                f"   users via gateway, last {seconds:.0f} s: {Window.between(before, now).line()}"
            )
            print(f"   gateway: {await self.gateway_line(seconds)}", flush=True)
            before = now
