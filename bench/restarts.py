"""Restarts, measured: what a SIGKILL of a service costs a release, in seconds users notice.

1. Restore time with the rollback service killed at a failing verdict: a release of a
   version failing 20 % of requests, the rollback replica that took the verdict killed the
   moment it logs that it is restoring (it has written stable back and holds the message,
   unacknowledged), and the time from the verdict's envelope time to all traffic on stable
   at full size (Ready pods behind the Service sampled every 50 ms). With one replica the
   killed one is started again at once (a supervisor's restart); with two, the other
   carries on. p50 and max over ``--runs`` runs.
2. The delay a metrics-watcher restart adds to a step: a good release with one 8 s step,
   the replica judging it killed at its first passing tick; the final verdict's time minus
   the end of the hold, against runs without a kill.
3. The cost of the keep-alive that makes both fast: one in-progress ack (a publish) every
   third of the 1 s ack wait per message in hand; its client CPU time per beat.

Runs on the local stack (``CANARYFLOW_STACK_DIR``, else ``.stack`` here), on streams and in
namespaces of its own.

    .venv/bin/python bench/restarts.py [--runs 10] [--watcher-runs 5] [--replicas 1 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from kubernetes import client, config
from nats.aio.client import Client as NatsClient
from nats.js.api import StreamConfig

from canaryflow.cli.main import follow_release
from canaryflow.demo import faults, shop
from canaryflow.demo.launcher import (
    SERVICES,
    ServiceLauncher,
    StackEndpoints,
    delete_jetstream_state,
)
from canaryflow.runtime.bus import MIN_BEAT_SECONDS
from canaryflow.runtime.settings import Settings, nats_servers
from canaryflow_contracts import MESSAGE_ID_HEADER, Envelope, Subjects
from canaryflow_contracts.events import (
    AnalysisVerdict,
    ReleaseRequested,
    ReleaseRolledBack,
    ReleaseSucceeded,
    RequestAnalysis,
    TargetRef,
    VerdictAction,
    VersionSpec,
)

REPO = Path(__file__).resolve().parents[1]
SIZE = 10
HOLD_SECONDS = 8.0
SAME = {"error_rate": 0.005, "latency_ms": {"median": 40, "p99": 120}}
BEHAVIOURS = {"v1": SAME, "v2": SAME, "v2-bad": {**SAME, "error_rate": 0.2}}


@dataclass
class Bench:
    api: client.ApiClient
    nc: NatsClient
    launcher: ServiceLauncher
    namespace: str

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.launcher.prefix)

    async def release(self, tag: str) -> str:
        release_id = f"web-{uuid.uuid4().hex[:8]}"
        envelope = Envelope.wrap(
            ReleaseRequested(
                target=TargetRef(namespace=self.namespace, name="web"),
                version=VersionSpec(image=shop.image(tag)),
                requested_by="bench/restarts",
            ),
            release_id=release_id,
            source="bench/restarts",
        )
        await self.nc.jetstream().publish(
            self.subjects.of(ReleaseRequested, release_id),
            envelope.model_dump_json().encode(),
            headers={MESSAGE_ID_HEADER: envelope.id},
        )
        return release_id

    async def events(self, release_id: str) -> list[Envelope[Any]]:
        seen: list[Envelope[Any]] = []
        final = await follow_release(self.nc, self.subjects, release_id, seen.append, 180)
        if final is None:
            kinds = [e.type.removeprefix("io.canaryflow.") for e in seen]
            raise TimeoutError(f"release {release_id} did not end within 180 s: {kinds}")
        return seen

    async def settled(self) -> None:
        """The target back at full size with nothing else around it, before the next run."""
        deadline = time.monotonic() + 120
        seen: dict[str, int] = {}
        while time.monotonic() < deadline:
            seen = await asyncio.to_thread(
                faults.ready_pods_by_track, self.api, self.namespace, "app=web"
            )
            if seen == {"stable": SIZE}:
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{self.namespace}/web not back to {SIZE} stable pods: {seen}")

    def top_up(self) -> None:
        for name in SERVICES:
            missing = self.launcher.replicas - len(self.launcher.replicas_of(name))
            if missing > 0:
                self.launcher.start((name,), replicas=missing)


def summary(label: str, values: list[float]) -> str:
    if not values:
        return f"{label}: no runs"
    ordered = sorted(values)
    return (
        f"{label}: p50 {statistics.median(ordered):.2f} s, max {ordered[-1]:.2f} s, "
        f"min {ordered[0]:.2f} s over {len(ordered)} runs  "
        f"[{', '.join(f'{v:.2f}' for v in values)}]"
    )


async def restore_run(bench: Bench) -> tuple[float, float]:
    """(restore seconds, kill seconds after the verdict) of one killed rollback."""
    await bench.settled()
    watch = faults.LogWatch(bench.launcher)
    async with faults.traffic(bench.api, bench.namespace, "app=web") as samples:
        release_id = await bench.release("v2-bad")
        restoring = await watch.first("rollback", release_id, "restoring ")
        killed_at = await faults.kill(bench.launcher, restoring)
        events = await bench.events(release_id)
        await bench.settled()
    if not isinstance(events[-1].data, ReleaseRolledBack):
        raise AssertionError(f"{release_id} ended {events[-1].type}, not rolled back")
    verdict = next(
        e
        for e in events
        if isinstance(e.data, AnalysisVerdict) and e.data.action is VerdictAction.ROLLBACK
    )
    verdict_at = verdict.time.timestamp()
    return faults.back_on_stable_since(samples, SIZE) - verdict_at, killed_at - verdict_at


async def watcher_run(bench: Bench, tag: str, kill: bool) -> float:
    """Seconds from the end of the hold to the step's final verdict (a kill mid-hold or not)."""
    await bench.settled()
    watch = faults.LogWatch(bench.launcher)
    release_id = await bench.release(tag)
    if kill:
        judging = await watch.first("metrics_watcher", release_id, "verdict pass for step 0:")
        await faults.kill(bench.launcher, judging)
    events = await bench.events(release_id)
    if not isinstance(events[-1].data, ReleaseSucceeded):
        kinds = [e.type.removeprefix("io.canaryflow.") for e in events]
        raise AssertionError(f"{release_id} did not succeed: {kinds}")
    request = next(e for e in events if isinstance(e.data, RequestAnalysis))
    final = next(e for e in events if isinstance(e.data, AnalysisVerdict) and e.data.final)
    hold_end = request.time.timestamp() + request.data.step.hold_seconds
    return float(final.time.timestamp() - hold_end)


async def repeat(
    label: str, runs: int, one: Callable[[int], Awaitable[float]], bench: Bench
) -> list[float]:
    values = []
    for index in range(runs):
        value = await one(index)
        values.append(value)
        print(f"   {label} run {index + 1}: {value:.2f} s", flush=True)
        bench.top_up()
    return values


async def with_fleet(
    endpoints: StackEndpoints,
    api: client.ApiClient,
    nc: NatsClient,
    *,
    replicas: int,
    policy: dict[str, Any],
    body: Callable[[Bench], Awaitable[None]],
) -> None:
    prefix = f"bench_{uuid.uuid4().hex[:8]}"
    namespace = f"bench-restarts-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    launcher = ServiceLauncher(
        endpoints,
        prefix=prefix,
        log_dir=Path(os.environ.get("CANARYFLOW_STACK_DIR", REPO / ".stack"))
        / "logs"
        / f"bench-{prefix}",
        replicas=replicas,
    )
    try:
        shop.deploy(api, namespace)
        shop.set_behaviour(api, namespace, BEHAVIOURS)
        shop.apply_policy(api, namespace, policy)
        launcher.start()
        await body(Bench(api, nc, launcher, namespace))
    finally:
        launcher.stop()
        core.delete_namespace(namespace)
        await delete_jetstream_state(nc, prefix)


async def keep_alive_cost(nc: NatsClient, beats: int = 3000) -> float:
    """Client CPU seconds per in-progress ack, on a message held from a real stream."""
    js = nc.jetstream()
    name = f"BENCH_BEATS_{uuid.uuid4().hex[:8].upper()}"
    subject = f"bench.beats.{name.lower()}"
    await js.add_stream(StreamConfig(name=name, subjects=[subject]))
    try:
        await js.publish(subject, b"held")
        subscription = await js.pull_subscribe(subject, durable="beats", stream=name)
        (msg,) = await subscription.fetch(1, timeout=5)
        await nc.flush()
        started = time.process_time()
        for _ in range(beats):
            await msg.in_progress()
        await nc.flush()
        cpu = (time.process_time() - started) / beats
        await msg.ack()
    finally:
        await js.delete_stream(name)
    return cpu


def stack_env(bench: str) -> Path | None:
    """The running stack's env.json (``CANARYFLOW_STACK_DIR``, else ``.stack`` here), or None
    after saying there is none."""
    stack_dir = Path(os.environ.get("CANARYFLOW_STACK_DIR", REPO / ".stack"))
    env_json = stack_dir / "env.json"
    if not env_json.exists():
        print(f"bench/{bench}: no stack at {stack_dir} (env.json missing)", file=sys.stderr)
        return None
    return env_json


async def main(args: argparse.Namespace) -> int:
    env_json = stack_env("restarts")
    if env_json is None:
        return 1
    endpoints = StackEndpoints.from_env_json(env_json)
    api = config.new_client_from_config(config_file=endpoints.kubeconfig)
    shop.install_crd(api)
    nc = await nats.connect(
        nats_servers(endpoints.nats_url), **endpoints.nats_access().client_options()
    )
    lines: list[str] = []
    try:
        ack_wait = Settings("bench").ack_wait_seconds
        beat = max(ack_wait / 3, MIN_BEAT_SECONDS)
        cpu = await keep_alive_cost(nc)
        lines.append(
            f"keep-alive: ack wait {ack_wait:g} s, a beat every {beat:.2f} s per message in "
            f"hand, {cpu * 1e6:.0f} us client CPU per beat = {cpu / beat * 100:.3f} % of a "
            f"core per analysis or rollback in flight"
        )
        print(lines[-1], flush=True)
        quick = shop.quick_policy(weights=(10,), hold_seconds=HOLD_SECONDS)
        for replicas in args.replicas:

            async def restores(bench: Bench, replicas: int = replicas) -> None:
                async def one(_: int) -> float:
                    restored, killed = await restore_run(bench)
                    print(f"   (killed {killed:.2f} s after the verdict)", flush=True)
                    return restored

                values = await repeat(f"restore, {replicas} replica(s)", args.runs, one, bench)
                lines.append(
                    summary(
                        f"restore (failing verdict -> all traffic on {SIZE} stable pods), "
                        f"rollback killed at the verdict, {replicas} replica(s)",
                        values,
                    )
                )
                print(lines[-1], flush=True)

            await with_fleet(endpoints, api, nc, replicas=replicas, policy=quick, body=restores)

            async def watcher(bench: Bench, replicas: int = replicas) -> None:
                tags = ("v2", "v1")  # each promotion makes the other one the new version

                async def plain(index: int) -> float:
                    return await watcher_run(bench, tags[index % 2], kill=False)

                async def killed(index: int) -> float:
                    return await watcher_run(bench, tags[(index + args.watcher_runs) % 2], True)

                without = await repeat("verdict delay, no kill", args.watcher_runs, plain, bench)
                with_kill = await repeat("verdict delay, killed", args.watcher_runs, killed, bench)
                for label, values in (("no kill", without), ("killed mid-hold", with_kill)):
                    lines.append(
                        summary(
                            f"final verdict after the end of an 8 s hold, metrics-watcher "
                            f"{label}, {replicas} replica(s)",
                            values,
                        )
                    )
                    print(lines[-1], flush=True)

            await with_fleet(endpoints, api, nc, replicas=replicas, policy=quick, body=watcher)
    finally:
        await nc.drain()
    print("\n== bench/restarts summary")
    for line in lines:
        print(line)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="killed rollbacks per fleet size")
    parser.add_argument("--watcher-runs", type=int, default=5, help="runs with and without")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    return parser


if __name__ == "__main__":
    sys.exit(asyncio.run(main(_parser().parse_args())))
