"""The gateway's split, measured with real users: share error per weight, and stickiness.

Why a bench and not only a test: a test asserts one weight within 3 points; this reports how
close Traefik's weighted sticky routing comes at each step of a release (10, 30, 50 %), over
thousands of new sessions each, and whether any returning user ever changed version across
the weight changes. Run inside the stack's network namespace (``make bench`` does):

    python -m canaryflow_stack exec -- .venv/bin/python bench/gateway_split.py [--sessions N]

It makes a namespace ``bench-gateway-<random>`` with a stable (2 pods) and a canary (1 pod)
shop, a Service per track, a weighted sticky TraefikService and an IngressRoute, and deletes
the namespace afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
import uuid
from typing import Any

import aiohttp
import httpx
from kubernetes import client
from kubernetes import config as kconfig

from canaryflow.dataplane.objects import (
    behaviour_configmap,
    create_traefik,
    ingress_route,
    ready_pods,
    set_weights,
    shop_deployment,
    track_service,
    weighted_sticky,
)
from canaryflow.dataplane.shop import VERSION_HEADER
from canaryflow.dataplane.users import Behaviour, Users

WEIGHTS = (10, 30, 50)
SETTLE_S = 1.0
"""After a weight change: Traefik applied one in 0.03-0.18 s here (providersThrottleDuration
is 100 ms); a bench may wait where a test must not."""


def _env() -> dict[str, str]:
    path = os.path.join(os.environ.get("CANARYFLOW_STACK_DIR", ".stack"), "env.json")
    with open(path) as f:
        env: dict[str, str] = json.load(f)
    return env


def _setup(kube: Any, namespace: str, host: str) -> None:
    core, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    fast = {"error_rate": 0.0, "latency_ms": {"median": 2, "p99": 5}}
    deadline = time.monotonic() + 30
    while True:  # pods are refused until the namespace's default ServiceAccount exists
        try:
            core.read_namespaced_service_account("default", namespace)
            break
        except client.ApiException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    core.create_namespaced_config_map(namespace, behaviour_configmap({"v1": fast, "v2": fast}))
    apps.create_namespaced_deployment(namespace, shop_deployment("web", "web", "v1", 2, "stable"))
    apps.create_namespaced_deployment(
        namespace, shop_deployment("web-canary", "web", "v2", 1, "canary")
    )
    core.create_namespaced_service(namespace, track_service("web-stable", "web", "stable"))
    core.create_namespaced_service(namespace, track_service("web-canary", "web", "canary"))
    create_traefik(
        kube, namespace, weighted_sticky("web-split", {"web-stable": 100, "web-canary": 0}, "v")
    )
    create_traefik(kube, namespace, ingress_route("web", host, "web-split"))
    while len(ready_pods(kube, namespace, "app=web")) < 3:
        if time.monotonic() > deadline:
            raise TimeoutError("the shop's 3 pods were not Ready within 30 s")
        time.sleep(0.2)


def _wait_routed(gateway: str, host: str) -> None:
    deadline = time.monotonic() + 30
    with httpx.Client(trust_env=False, timeout=5) as http:
        while time.monotonic() < deadline:
            try:
                if http.get(gateway, headers={"Host": host}).headers.get(VERSION_HEADER):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"Traefik did not route {host} within 30 s")


async def _returning(
    gateway: str, host: str, jars: list[aiohttp.ClientSession], first: list[str]
) -> int:
    """One request by each returning user; how many got another version than their first.

    The first call records each user's version (``first``, in the users' order)."""

    async def visit(jar: aiohttp.ClientSession) -> str:
        async with jar.get(gateway + "/", headers={"Host": host}) as response:
            await response.read()
            return response.headers.get(VERSION_HEADER, "none")

    versions = await asyncio.gather(*(visit(jar) for jar in jars))
    if not first:
        first.extend(versions)
        return 0
    return sum(now != then for now, then in zip(versions, first, strict=True))


async def _run(args: argparse.Namespace) -> None:
    env = _env()
    kube = kconfig.new_client_from_config(config_file=env["KUBECONFIG"])
    gateway = env["GATEWAY_URL"]
    namespace = f"bench-gateway-{uuid.uuid4().hex[:6]}"
    host = f"web.{namespace}.test"
    _setup(kube, namespace, host)
    try:
        _wait_routed(gateway, host)
        jars = [
            aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), trust_env=False)
            for _ in range(args.returning)
        ]
        first: list[str] = []
        moved = 0
        print(f"{'weight':>6} {'sessions':>8} {'canary share':>12} {'error (pts)':>11} "
              f"{'mixed':>5} {'returning moved':>15} {'seconds':>7}")  # fmt: skip
        try:
            for step, weight in enumerate(WEIGHTS):
                set_weights(kube, namespace, "web-split", {"web-stable": 100 - weight,
                                                            "web-canary": weight})  # fmt: skip
                await asyncio.sleep(SETTLE_S)
                if step == 0:
                    await _returning(gateway, host, jars, first)  # they arrive at 10 %
                started = time.monotonic()
                users = Users(
                    gateway,
                    host,
                    Behaviour(arrivals_per_s=args.rate, pages=2, think_s=0.01),
                    random.Random(step),
                )
                tally = await users.run(sessions=args.sessions)
                moved = await _returning(gateway, host, jars, first)
                share = tally.share("v2")
                print(
                    f"{weight:>5}% {tally.total_sessions:>8} {share:>12.4f} "
                    f"{100 * (share - weight / 100):>+11.2f} {tally.mixed:>5} {moved:>15} "
                    f"{time.monotonic() - started:>7.1f}"
                )
        finally:
            await asyncio.gather(*(jar.close() for jar in jars))
        print(
            f"returning users: {len(jars)}, first on canary: {first.count('v2')}, "
            f"on another version than their first after {len(WEIGHTS)} weights: {moved}"
        )
    finally:
        client.CoreV1Api(kube).delete_namespace(namespace, propagation_policy="Background")
        kube.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2000, help="new sessions per weight")
    parser.add_argument("--rate", type=float, default=250.0, help="users arriving per second")
    parser.add_argument("--returning", type=int, default=300, help="users kept across steps")
    asyncio.run(_run(parser.parse_args()))


if __name__ == "__main__":
    main()
