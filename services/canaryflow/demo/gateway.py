"""What the demo shows of real traffic: users behind the gateway, and the gateway's own figures.

Why both sides: users say what they got (the version in each answer, whether a session ever
saw two versions, whether a request failed); the gateway (Traefik, scraped by Prometheus) says
what it routed: its requests and status codes for the shop's Service and which pods it
currently sends to (``traefik_service_server_up`` by server URL, mapped to each pod's version
and track). A rollback then shows from both sides: the canary's server leaves the gateway, and
no user's request fails meanwhile, or some do and the figures say how many.

The shop's Service is routed by an IngressRoute straight to its Ready endpoints with a sticky
cookie: each user stays on the pod, and so the version, they first got, and the split is the
replica ratio (the default router) as the gateway applies it.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from kubernetes import client

from canaryflow.dataplane.objects import SERVICE_PORT, create_traefik, ingress_route
from canaryflow.dataplane.users import NO_VERSION, Behaviour, Tally, Users
from canaryflow.runtime.kube import TRACK_LABEL
from canaryflow_contracts.identifiers import version_of

COOKIE = "shop_pod"
_IP = re.compile(r"//([^:/]+)")


def traefik_service(namespace: str, service: str, port: int = SERVICE_PORT) -> str:
    """Traefik's name for a Kubernetes Service routed by the CRD provider."""
    return f"{namespace}-{service}-{port}@kubernetescrd"


def backends(server_urls: Iterable[str], pods: Mapping[str, tuple[str, str]]) -> Counter[str]:
    """How many of the gateway's servers are on each ``version (track)``, from the servers'
    URLs and the pods' ``{ip: (version, track)}``; a server no pod has is ``unknown``."""
    found: Counter[str] = Counter()
    for url in server_urls:
        match = _IP.search(url)
        version, track = pods.get(match.group(1) if match else "", ("unknown", "?"))
        found[f"{version} ({track})"] += 1
    return found


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

    def _pods(self) -> dict[str, tuple[str, str]]:
        pods = client.CoreV1Api(self.api).list_namespaced_pod(
            self.namespace, label_selector="app=web"
        )
        return {
            p.status.pod_ip: (
                version_of(p.spec.containers[0].image or ""),
                (p.metadata.labels or {}).get(TRACK_LABEL, "stable"),
            )
            for p in pods.items
            if p.status.pod_ip
        }

    async def gateway_line(self, seconds: float) -> str:
        """Traefik's view: its servers by version, and its requests by code over ``seconds``."""
        service = traefik_service(self.namespace, "web")
        try:
            up = await self._query(f'traefik_service_server_up{{service="{service}"}} == 1')
            codes = await self._query(
                f'sum by (code) (increase(traefik_service_requests_total{{service="{service}"}}'
                f"[{max(int(seconds), 2)}s]))"
            )
            pods = await asyncio.to_thread(self._pods)
        except (httpx.HTTPError, KeyError, ValueError, client.ApiException) as error:
            return f"(gateway figures unavailable: {error})"
        servers = backends((s["metric"].get("url", "") for s in up), pods)
        by_code = {s["metric"].get("code", "?"): float(s["value"][1]) for s in codes}
        routed = ", ".join(f"{k}: {n}" for k, n in sorted(servers.items())) or "none"
        counted = ", ".join(f"{c}: {n:.0f}" for c, n in sorted(by_code.items())) or "none"
        return f"Traefik sends to [{routed}]; requests by code [{counted}]"

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
