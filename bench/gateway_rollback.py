"""Rollback through the gateway, measured: from a failing verdict to the last request that
reached the canary, as users behind Traefik saw it.

Why users behind the gateway: "the canary was scaled down" is the cluster's view; what matters
is when the last real request stopped landing on the bad version. Real users (their own cookie
jars, 3 pages each) come through Traefik, which routes the sample shop's Service ``web`` (every
Ready pod of every track) with a sticky cookie, so each user stays on the pod, and version, it
first got. The four services run as processes (``canaryflow.demo.launcher``); each run
releases a version failing 20 % of requests with the replica ratio (the default router) and
takes the time of the metrics-watcher's failing verdict (its envelope time) and the send time of
the last request that the canary answered through the gateway. Also counted per run: gateway
answers that no pod gave (502/503/504, or no answer), the requests that failed because a
backend went away.

    python -m canaryflow_stack exec -- .venv/bin/python bench/gateway_rollback.py [--runs 20]

Reuses the release and fleet helpers of ``bench/restarts.py`` (same folder).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path

import nats
from kubernetes import config
from restarts import HOLD_SECONDS, Bench, stack_env, with_fleet

from canaryflow.dataplane.objects import create_traefik, ingress_route
from canaryflow.dataplane.users import Behaviour, Users
from canaryflow.demo import shop
from canaryflow.demo.gateway import COOKIE, Window, snapshot
from canaryflow.demo.launcher import StackEndpoints
from canaryflow.runtime.settings import nats_servers
from canaryflow_contracts.events import AnalysisVerdict, ReleaseRolledBack, VerdictAction

BAD = "v2-bad"
WINDOW_SECONDS = 10  # the quick policy's analysis window


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of at least one value."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


async def one_rollback(bench: Bench, users: Users) -> tuple[float, int, int]:
    """(seconds from the failing verdict to the last request the canary answered, gateway
    failures, sessions that began on the canary) of one release rolled back."""
    await bench.settled()
    # The last run's canary must be out of the analysis window, or the next verdict comes from
    # its numbers before the new canary has served anyone.
    await asyncio.sleep(WINDOW_SECONDS + 2)
    before = snapshot(users.tally)
    release_id = await bench.release(BAD)
    events = await bench.events(release_id)
    if not isinstance(events[-1].data, ReleaseRolledBack):
        raise AssertionError(f"{release_id} ended {events[-1].type}, not rolled back")
    verdict = next(
        e
        for e in events
        if isinstance(e.data, AnalysisVerdict) and e.data.action is VerdictAction.ROLLBACK
    )
    await bench.settled()  # the canary's pods are gone: no request can reach it after this
    await asyncio.sleep(1.0)  # users in flight finish what they were sending
    during = Window.between(before, users.tally)
    canary_sessions = during.sessions[BAD]
    if canary_sessions == 0:
        raise AssertionError(f"{release_id}: no user reached the canary through the gateway")
    last = max(r.sent for r in users.responses if r.version == BAD)
    return last - verdict.time.timestamp(), during.failed, canary_sessions


async def main(args: argparse.Namespace) -> int:
    env_json = stack_env("gateway_rollback")
    if env_json is None:
        return 1
    endpoints = StackEndpoints.from_env_json(env_json)
    gateway = gateway_url(env_json)
    api = config.new_client_from_config(config_file=endpoints.kubeconfig)
    shop.install_crd(api)
    nc = await nats.connect(
        nats_servers(endpoints.nats_url), **endpoints.nats_access().client_options()
    )
    lags: list[float] = []
    failures: list[int] = []

    async def body(bench: Bench) -> None:
        host = f"web.{bench.namespace}.test"
        # The judgement's traffic comes through the gateway too: no users straight to pods.
        shop.deploy(api, bench.namespace, rps=0)
        create_traefik(api, bench.namespace, ingress_route("web", host, "web", "Service", COOKIE))
        behaviour = Behaviour(arrivals_per_s=args.users, pages=3, think_s=0.2, timeout_s=5)
        users = Users(gateway, host, behaviour, random.Random(11), record=True)
        stop = asyncio.Event()
        crowd = asyncio.create_task(users.run(stop=stop))
        try:
            for index in range(args.runs):
                started = time.monotonic()
                lag, failed, answers = await one_rollback(bench, users)
                lags.append(lag)
                failures.append(failed)
                print(
                    f"   run {index + 1}: last canary request {lag:+.2f} s after the failing "
                    f"verdict; {answers} sessions on the canary, {failed} gateway failures "
                    f"({time.monotonic() - started:.0f} s)",
                    flush=True,
                )
                bench.top_up()
        finally:
            stop.set()
            await crowd
        tally = users.tally
        print(
            f"   users through the gateway: {tally.total_sessions} sessions "
            f"{dict(tally.sessions)}, {tally.mixed} saw two versions, "
            f"{tally.errors()} requests not answered 2xx/4xx by a pod",
            flush=True,
        )

    try:
        policy = shop.quick_policy(weights=(10,), hold_seconds=HOLD_SECONDS)
        await with_fleet(endpoints, api, nc, replicas=1, policy=policy, body=body)
    finally:
        await nc.drain()
    print("\n== bench/gateway_rollback summary")
    if lags:
        print(
            f"failing verdict -> last request the canary answered through Traefik "
            f"(replica-ratio router, {args.users:g} users/s): "
            f"p50 {statistics.median(lags):.2f} s, p99 {percentile(lags, 99):.2f} s, "
            f"max {max(lags):.2f} s over {len(lags)} rollbacks"
        )
        print(
            f"gateway failures (502/503/504 or no answer) per rollback: "
            f"total {sum(failures)}, max {max(failures)}, runs with any "
            f"{sum(1 for f in failures if f)} of {len(failures)}"
        )
    return 0


def gateway_url(env_json: Path) -> str:
    url = json.loads(env_json.read_text()).get("GATEWAY_URL", "")
    if not url:
        raise SystemExit("bench/gateway_rollback: the stack has no gateway (GATEWAY_URL)")
    return str(url)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="rollbacks (at least 20 for a p99)")
    parser.add_argument("--users", type=float, default=40, help="new users a second")
    return parser


if __name__ == "__main__":
    sys.exit(asyncio.run(main(_parser().parse_args())))
