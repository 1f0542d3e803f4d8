"""Scale, measured: hundreds to a thousand releases at once on the local cluster.

Each run puts N small targets (a Deployment of ``--pods`` pods and a ReleasePolicy each) in a
namespace of its own, starts the four services (``--replicas`` each) on streams of their own,
and requests N releases at once: a share of them (``--bad-share``) of a version that fails
20 % of its requests. It then waits for every release to end and reports:

- correctness: every good release succeeded, every bad one was rolled back, none left open;
- transition lag: from an event to the planner's answer to it (the next command or terminal
  event of the release that the planner published), p50 and p99; the planner's decisions are
  pure, so this is queueing and bus time, ours alone;
- delivery lag: from an event's envelope time to this bench receiving it from JetStream;
- failing verdict to 100 % on stable: the rollback's ``seconds_to_restore`` (the trigger to
  stable whole and Ready), p50 and p99;
- step put in place: ``ApplyPhase`` to ``PhaseReached`` (the executor and the control plane:
  KWOK's controller manager and scheduler handle every pod), p50 and p99;
- each service's peak RSS (the largest replica) and CPU (seconds, and cores on average).

- peak in flight: the most releases between their request and their end at any moment
  (requests are sent at ``--request-rate`` per second, as a fleet's deploys arrive, not in
  one instant: a thousand requests in the same millisecond measure the admission queue);
- the API server's requests per second by verb and resource over the run (its own metrics):
  where the control plane's time goes, ours and its controllers'.

Traffic: the judgement needs requests per version and track. This is a bench of the control
loop, not of traffic, so the requests are counted, not made: an exporter here serves
``http_requests_total`` for every target's stable, baseline and canary at 20 requests per
second each (20 % of them 5xx for a bad canary), scraped by the stack's Prometheus every
second like any registered target. The metrics-watcher's queries, Prometheus and the whole
event flow are real.

    .venv/bin/python bench/scale.py [--releases 200 1000] [--replicas 1 2] [--pods 2]
        [--request-rate 20] [--hold 6]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from kubernetes import client, config
from nats.aio.client import Client as NatsClient
from nats.js.api import DeliverPolicy
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from canaryflow.demo import shop
from canaryflow.demo.launcher import (
    SERVICES,
    ServiceLauncher,
    StackEndpoints,
    delete_jetstream_state,
    free_port,
)
from canaryflow.runtime.settings import nats_servers
from canaryflow_contracts import MESSAGE_ID_HEADER, Envelope, Subjects
from canaryflow_contracts.events import (
    TERMINAL_EVENTS,
    ApplyPhase,
    PhaseReached,
    ReleaseRequested,
    ReleaseRolledBack,
    ReleaseSucceeded,
    RollbackCompleted,
    TargetRef,
    VersionSpec,
    parse_event,
)

REPO = Path(__file__).resolve().parents[1]
PLANNER = "canaryflow/planner"
RATE = 20.0  # requests per second per track and target
BAD_ERROR_RATE = 0.2
WEIGHT = 50
CREATE_CONCURRENCY = 16
SAMPLE_SECONDS = 1.0


# --------------------------------------------------------------------------- counted traffic


@dataclass(eq=False)  # the registry keys collectors by identity
class CountedTraffic(Collector):
    """``http_requests_total`` per target, version and track, growing with time."""

    namespace: str
    targets: list[str]
    bad: set[str]
    started: float = field(default_factory=time.monotonic)

    def collect(self) -> Iterator[CounterMetricFamily]:
        requests = CounterMetricFamily(
            "http_requests",
            "Requests served (counted, not made: bench/scale.py)",
            labels=["namespace", "service", "version", "track", "code"],
        )
        served = RATE * (time.monotonic() - self.started)
        for target in self.targets:
            for version, track in (("v1", "stable"), ("v1", "baseline"), ("v2", "canary")):
                failing = BAD_ERROR_RATE if track == "canary" and target in self.bad else 0.0
                labels = [self.namespace, target, version, track]
                requests.add_metric([*labels, "200"], served * (1 - failing))
                requests.add_metric([*labels, "500"], served * failing)
        yield requests


def register_exporter(endpoints: StackEndpoints, name: str, port: int) -> Path:
    if endpoints.prometheus_targets is None:
        raise SystemExit("bench/scale: the stack has no Prometheus targets directory")
    path = endpoints.prometheus_targets / f"{name}.json"
    path.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"], "labels": {"job": name}}]))
    return path


# --------------------------------------------------------------------------- targets


def policy(target: str, hold_seconds: float) -> dict[str, Any]:
    """One step at 50 %, judged by the canary's error rate alone (no baseline comparison)."""
    spec = shop.quick_policy(
        target, weights=(WEIGHT,), hold_seconds=hold_seconds, compare=False, min_requests=20
    )
    spec["analysis"]["metrics"] = [
        {"name": "error-rate", "template": "error-rate", "max": 0.05},
    ]
    # Four ticks per hold (5 s apart at least; Flagger's default interval is a minute): each
    # tick of each analysis is four queries, and one Prometheus on the bench's 2 cores
    # answers a few hundred a second at most.
    spec["analysis"]["intervalSeconds"] = max(5, round(hold_seconds / 4))
    # Pods are the control plane's work: it may take minutes for a thousand targets, and
    # what is measured here is ours. The step's own time is reported separately.
    spec["deadlines"] = {"podReadySeconds": 900, "pauseSeconds": 60}
    return spec


def create_target(
    api: client.ApiClient, namespace: str, name: str, pods: int, hold_seconds: float
) -> None:
    labels = {"app": name}
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name=name, labels=labels),
            spec=client.V1DeploymentSpec(
                replicas=pods,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(
                        containers=[client.V1Container(name=name, image=shop.image("v1", name))]
                    ),
                ),
            ),
        ),
    )
    shop.apply_policy(api, namespace, policy(name, hold_seconds), name=name)


async def in_batches(count: int, work: Any) -> None:
    semaphore = asyncio.Semaphore(CREATE_CONCURRENCY)

    async def one(index: int) -> None:
        async with semaphore:
            await asyncio.to_thread(work, index)

    await asyncio.gather(*(one(index) for index in range(count)))


async def all_ready(api: client.ApiClient, namespace: str, count: int, pods: int) -> float:
    started = time.monotonic()
    apps = client.AppsV1Api(api)
    while True:
        listed = await asyncio.to_thread(apps.list_namespaced_deployment, namespace)
        ready = sum(1 for d in listed.items if (d.status.ready_replicas or 0) >= pods)
        if ready >= count:
            return time.monotonic() - started
        await asyncio.sleep(2)


# --------------------------------------------------------------------------- resources


@dataclass
class Usage:
    peak_rss: dict[int, int] = field(default_factory=dict)  # pid -> bytes
    cpu: dict[int, float] = field(default_factory=dict)  # pid -> seconds


def sample_usage(launcher: ServiceLauncher, usage: Usage) -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    for replica in launcher.running:
        pid = replica.process.pid
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            usage.cpu[pid] = (int(fields[11]) + int(fields[12])) / ticks
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                    usage.peak_rss[pid] = max(usage.peak_rss.get(pid, 0), rss)


async def watch_usage(launcher: ServiceLauncher, usage: Usage) -> None:
    while True:
        sample_usage(launcher, usage)
        await asyncio.sleep(SAMPLE_SECONDS)


# --------------------------------------------------------------------------- the API server


def apiserver_requests(api: client.ApiClient) -> Counter[tuple[str, str]]:
    """The API server's ``apiserver_request_total`` so far, by (verb, resource)."""
    response = api.call_api(*api.param_serialize("GET", "/metrics", auth_settings=["BearerToken"]))
    response.read()
    counts: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(response.data.decode()):
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            if sample.name == "apiserver_request_total":
                labels = sample.labels
                counts[(labels.get("verb", ""), labels.get("resource", ""))] += int(sample.value)
    return counts


def busiest(
    before: Counter[tuple[str, str]], after: Counter[tuple[str, str]], seconds: float
) -> str:
    made = after - before
    total = sum(made.values())
    top = ", ".join(
        f"{verb} {resource} {n / seconds:.0f}" for (verb, resource), n in made.most_common(6)
    )
    return f"{total / seconds:.0f} requests/s ({top})"


def peak_in_flight(seen: dict[str, list[Seen]]) -> int:
    """The most releases between their request and their terminal event at any moment."""
    changes: list[tuple[float, int]] = []
    for events in seen.values():
        times = [s.envelope.time.timestamp() for s in events]
        ends = [
            s.envelope.time.timestamp()
            for s in events
            if isinstance(s.envelope.data, TERMINAL_EVENTS)
        ]
        if times and ends:
            changes += [(min(times), 1), (min(ends), -1)]
    peak = current = 0
    for _, change in sorted(changes):
        current += change
        peak = max(peak, current)
    return peak


# --------------------------------------------------------------------------- one run


@dataclass
class Seen:
    envelope: Envelope[Any]
    received: float


@dataclass
class RunResult:
    releases: int
    replicas: int
    seconds: float
    wrong: list[str]
    transition: list[float]
    delivery: list[float]
    restore: list[float]
    step: list[float]
    transition_by_input: dict[str, list[float]]
    rss_mib: dict[str, float]
    cpu_seconds: dict[str, float]
    pods_ready_seconds: float
    peak_in_flight: int
    apiserver: str
    handling: str = ""


async def collect(
    nc: NatsClient, subjects: Subjects, seen: dict[str, list[Seen]], ended: set[str]
) -> None:
    js = nc.jetstream()
    subscription = await js.subscribe(
        f"{subjects.prefix}.>",
        ordered_consumer=True,
        stream=subjects.events_stream.name,
        deliver_policy=DeliverPolicy.ALL,
    )
    async for msg in subscription.messages:
        received = time.time()
        try:
            envelope = parse_event(msg.data)
        except ValueError:
            continue
        seen.setdefault(envelope.subject, []).append(Seen(envelope, received))
        if isinstance(envelope.data, TERMINAL_EVENTS):
            ended.add(envelope.subject)


def handling_by_handler(launcher: ServiceLauncher) -> str:
    """Each handler's messages, mean handling time and redeliveries, every replica together
    (each replica's own /metrics): where a service's time went, and how often JetStream
    handed a message out again because its ack came too late."""
    handled: dict[tuple[str, str], float] = {}
    seconds: dict[tuple[str, str], float] = {}
    again: dict[tuple[str, str], float] = {}
    for replica in launcher.running:
        url = f"http://127.0.0.1:{replica.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
        except OSError:
            continue
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.labels.get("service", ""), sample.labels.get("handler", ""))
                totals = {
                    "canaryflow_event_handling_seconds_count": handled,
                    "canaryflow_event_handling_seconds_sum": seconds,
                    "canaryflow_redeliveries_total": again,
                }.get(sample.name)
                if totals is not None:
                    totals[key] = totals.get(key, 0.0) + sample.value
    return "; ".join(
        f"{service}/{handler} {handled[(service, handler)]:.0f} "
        f"(mean {seconds.get((service, handler), 0.0) / handled[(service, handler)]:.3f} s, "
        f"{again.get((service, handler), 0.0):.0f} redelivered)"
        for service, handler in sorted(handled)
        if handled[(service, handler)]
    )


def lags(
    seen: dict[str, list[Seen]], by_input: dict[str, list[float]]
) -> tuple[list[float], list[float], list[float]]:
    """Transition lags (planner answers; also by the type of event answered, into
    ``by_input``), delivery lags, and steps put in place."""
    transition: list[float] = []
    delivery: list[float] = []
    step: list[float] = []
    for events in seen.values():
        ordered = sorted(events, key=lambda s: s.envelope.time)
        last_input: Envelope[Any] | None = None
        applied: Envelope[Any] | None = None
        for item in ordered:
            envelope = item.envelope
            delivery.append(item.received - envelope.time.timestamp())
            if envelope.source == PLANNER:
                if last_input is not None:
                    lag = (envelope.time - last_input.time).total_seconds()
                    transition.append(lag)
                    by_input.setdefault(type(last_input.data).__name__, []).append(lag)
                    last_input = None
            else:
                last_input = envelope
            if isinstance(envelope.data, ApplyPhase):
                applied = envelope
            elif isinstance(envelope.data, PhaseReached) and applied is not None:
                step.append((envelope.time - applied.time).total_seconds())
                applied = None
    return transition, delivery, step


async def run(
    endpoints: StackEndpoints,
    api: client.ApiClient,
    nc: NatsClient,
    *,
    count: int,
    replicas: int,
    pods: int,
    bad_share: float,
    timeout: float,
    request_rate: float,
    hold_seconds: float,
) -> RunResult:
    tag = uuid.uuid4().hex[:8]
    namespace = f"scale-{tag}"
    prefix = f"scale_{tag}"
    subjects = Subjects(prefix)
    targets = [f"s{index:04d}" for index in range(count)]
    bad = {target for index, target in enumerate(targets) if index % round(1 / bad_share) == 0}
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    exporter_port = free_port()
    registry = CollectorRegistry()
    registry.register(CountedTraffic(namespace, targets, bad))
    server, _ = start_http_server(exporter_port, addr="127.0.0.1", registry=registry)
    exporter_file = register_exporter(endpoints, f"bench-scale-{tag}", exporter_port)
    launcher = ServiceLauncher(
        endpoints,
        prefix=prefix,
        log_dir=REPO / ".stack" / "logs" / f"scale-{tag}",
        replicas=replicas,
    )
    usage = Usage()
    tasks: list[asyncio.Task[None]] = []
    try:
        print(f"   creating {count} targets of {pods} pod(s) in {namespace}", flush=True)
        await in_batches(
            count, lambda i: create_target(api, namespace, targets[i], pods, hold_seconds)
        )
        pods_ready = await all_ready(api, namespace, count, pods)
        print(f"   every target Ready in {pods_ready:.1f} s; starting the services", flush=True)
        await asyncio.to_thread(launcher.start)
        seen: dict[str, list[Seen]] = {}
        ended: set[str] = set()
        tasks.append(asyncio.create_task(collect(nc, subjects, seen, ended)))
        tasks.append(asyncio.create_task(watch_usage(launcher, usage)))
        expected: dict[str, type[Any]] = {}
        js = nc.jetstream()
        requests_before = await asyncio.to_thread(apiserver_requests, api)
        started = time.monotonic()
        for index, target in enumerate(targets):
            if request_rate > 0:  # the fleet's deploys arrive over time, at the rate asked
                await asyncio.sleep(max(0.0, started + index / request_rate - time.monotonic()))
            release_id = f"{target}-{tag}"
            expected[release_id] = ReleaseRolledBack if target in bad else ReleaseSucceeded
            envelope = Envelope.wrap(
                ReleaseRequested(
                    target=TargetRef(namespace=namespace, name=target),
                    version=VersionSpec(image=shop.image("v2", target)),
                    requested_by="bench/scale",
                ),
                release_id=release_id,
                source="bench/scale",
            )
            await js.publish(
                subjects.of(ReleaseRequested, release_id),
                envelope.model_dump_json().encode(),
                headers={MESSAGE_ID_HEADER: envelope.id},
            )
        print(f"   {count} releases requested; waiting for every one to end", flush=True)
        last_report = time.monotonic()
        while len(ended) < count and time.monotonic() - started < timeout:
            await asyncio.sleep(1)
            if time.monotonic() - last_report >= 30:
                last_report = time.monotonic()
                elapsed = last_report - started
                print(f"   {elapsed:5.0f} s: {len(ended)} of {count} ended", flush=True)
        seconds = time.monotonic() - started
        sample_usage(launcher, usage)
        handling = await asyncio.to_thread(handling_by_handler, launcher)
        apiserver = busiest(
            requests_before, await asyncio.to_thread(apiserver_requests, api), seconds
        )
        wrong: list[str] = []
        for release_id, wanted in expected.items():
            terminals = [
                s for s in seen.get(release_id, []) if isinstance(s.envelope.data, TERMINAL_EVENTS)
            ]
            kinds = [type(s.envelope.data).__name__ for s in terminals]
            if kinds != [wanted.__name__]:
                wrong.append(f"{release_id}: wanted {wanted.__name__}, got {kinds or 'no end'}")
        by_input: dict[str, list[float]] = {}
        transition, delivery, step = lags(seen, by_input)
        restore = [
            s.envelope.data.seconds_to_restore
            for events in seen.values()
            for s in events
            if isinstance(s.envelope.data, RollbackCompleted)
        ]
        rss: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for replica in launcher.running:
            pid = replica.process.pid
            rss[replica.name] = max(rss.get(replica.name, 0.0), usage.peak_rss.get(pid, 0) / 2**20)
            cpu[replica.name] = cpu.get(replica.name, 0.0) + usage.cpu.get(pid, 0.0)
        return RunResult(
            count,
            replicas,
            seconds,
            wrong,
            transition,
            delivery,
            restore,
            step,
            by_input,
            rss,
            cpu,
            pods_ready,
            peak_in_flight(seen),
            apiserver,
            handling,
        )
    finally:
        for task in tasks:
            task.cancel()
        launcher.stop()
        server.shutdown()
        exporter_file.unlink(missing_ok=True)
        with contextlib.suppress(Exception):
            core.delete_namespace(namespace)
        with contextlib.suppress(Exception):
            await delete_jetstream_state(nc, prefix)


# --------------------------------------------------------------------------- the table


def quantiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f} / {values[0]:.3f}"
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return f"{statistics.median(values):.3f} / {cuts[98]:.3f}"


def table(results: list[RunResult]) -> str:
    lines = [
        "| releases | peak in flight | replicas | all ended in | wrong "
        "| transition lag p50/p99 s "
        "| delivery lag p50/p99 s | failing verdict -> stable p50/p99 s "
        "| step in place p50/p99 s | peak RSS MiB (largest replica) | CPU s (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rss = ", ".join(f"{name} {r.rss_mib.get(name, 0):.0f}" for name in SERVICES)
        used = {name: r.cpu_seconds.get(name, 0.0) for name in SERVICES}
        cpu = ", ".join(f"{n} {s:.0f} ({s / r.seconds:.2f})" for n, s in used.items())
        lines.append(
            f"| {r.releases} | {r.peak_in_flight} | {r.replicas} | {r.seconds:.0f} s "
            f"| {len(r.wrong)} "
            f"| {quantiles(r.transition)} | {quantiles(r.delivery)} | {quantiles(r.restore)} "
            f"| {quantiles(r.step)} | {rss} | {cpu} |"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    stack_dir = Path(os.environ.get("CANARYFLOW_STACK_DIR", REPO / ".stack"))
    env_json = stack_dir / "env.json"
    if not env_json.exists():
        print(f"bench/scale: no stack at {stack_dir} (env.json missing)", file=sys.stderr)
        return 1
    endpoints = StackEndpoints.from_env_json(env_json)
    api = config.new_client_from_config(config_file=endpoints.kubeconfig)
    shop.install_crd(api)
    nc = await nats.connect(
        nats_servers(endpoints.nats_url), **endpoints.nats_access().client_options()
    )
    results: list[RunResult] = []
    try:
        for replicas in args.replicas:
            for count in args.releases:
                print(f"== {count} releases at once, {replicas} replica(s) per service", flush=True)
                result = await run(
                    endpoints,
                    api,
                    nc,
                    count=count,
                    replicas=replicas,
                    pods=args.pods,
                    bad_share=args.bad_share,
                    timeout=args.timeout,
                    request_rate=args.request_rate,
                    hold_seconds=args.hold,
                )
                results.append(result)
                for problem in result.wrong[:10]:
                    print(f"   WRONG {problem}", flush=True)
                print(table([result]), flush=True)
                print(f"   API server: {result.apiserver}", flush=True)
                print(f"   handled, by service and handler: {result.handling}", flush=True)
                for kind, values in sorted(result.transition_by_input.items()):
                    print(
                        f"   planner answering {kind}: p50/p99 {quantiles(values)} s, "
                        f"{len(values)} answers",
                        flush=True,
                    )
    finally:
        await nc.drain()
        api.close()
    print("\n== bench/scale summary")
    print(table(results))
    return 1 if any(r.wrong for r in results) else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--releases", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--pods", type=int, default=2, help="stable pods per target")
    parser.add_argument("--bad-share", type=float, default=0.25, help="share of bad versions")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for a run to end")
    parser.add_argument(
        "--request-rate",
        type=float,
        default=20.0,
        help="release requests per second (0: every request at once)",
    )
    parser.add_argument(
        "--hold", type=float, default=6.0, help="seconds the one step is judged for"
    )
    return parser


if __name__ == "__main__":
    sys.exit(asyncio.run(main(_parser().parse_args())))
