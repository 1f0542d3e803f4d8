"""Events per second per service, with tracing on and off: what tracing costs.

Each service runs in-process with its real wiring (durable pull consumers, manual acks,
the consumer span the bus makes for each message, JSON logs, the KV store) on the stack's
real NATS, under a fresh subject prefix, and handles a backlog of the events it consumes
most: the planner twice, as admitting a release request is its cheapest work and an interim
analysis verdict (one per analysis tick, routine: quiet, so no planner span) what it handles
most. The Kubernetes API is a small
in-memory fake serving objects as JSON (Deployments Ready at once), so the executor's and the
rollback service's figures are their own cost and not the API server's; every write still
goes through the same code and is a span. The metrics-watcher asks the stack's real
Prometheus (the series do not exist, so each analysis ends with too little data), with its
policies fixed.

Tracing on: spans exported over OTLP to the stack's Jaeger with the SDK's batch processor
(what the services do). Tracing off: OTEL_SDK_DISABLED=true. Each measurement is its own
process, pinned to one CPU; on and off run back to back in every round, in alternating order,
and the overhead reported is the median of the rounds' paired on/off differences, with a
95 % confidence interval for that median.

    .venv/bin/python bench/tracing_overhead.py [--events 300] [--rounds 11] [--service planner]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

REPO = Path(__file__).resolve().parents[1]
SERVICES = ("planner", "executor", "metrics-watcher", "rollback")


@dataclass(frozen=True)
class Workload:
    """One row of the report: a service handling a backlog of one kind of event."""

    service: str
    event: str
    # Of --events: an expensive event needs fewer to make a run, a cheap one more (a run of
    # under a second is at the mercy of whatever else the shared machine does meanwhile).
    events_share: float = 1.0


WORKLOADS = {
    # The planner handles ~350 requests or ~900 verdicts a second: 3x the events.
    "planner": Workload("planner", "release request", events_share=3),
    "planner-verdict": Workload("planner", "AnalysisVerdict", events_share=3),
    "executor": Workload("executor", "ApplyPhase"),
    # An analysis asks Prometheus a dozen queries (~40 ms of CPU).
    "metrics-watcher": Workload("metrics-watcher", "RequestAnalysis", events_share=0.5),
    "rollback": Workload("rollback", "RollbackRequested"),
}
MAX_OVERHEAD_PERCENT = 10.0
# A traced run leaves Jaeger (on the same two CPUs) ingesting its last spans for a moment;
# the next run starts when that is done, so no run pays for the one before it.
SETTLE_SECONDS = 3.0


# --------------------------------------------------------------------------- driver


def _stack_env() -> dict[str, str]:
    path = Path(os.environ.get("CANARYFLOW_STACK_DIR") or REPO / ".stack") / "env.json"
    if not path.exists():
        sys.exit(f"no running stack ({path} is missing): run `make stack-up` first")
    env: dict[str, str] = json.loads(path.read_text())
    return env


@dataclass(frozen=True)
class Measurement:
    events_per_second: float
    cpu_ms_per_event: float


def _measure(workload: str, tracing: bool, events: int, stack: dict[str, str]) -> Measurement:
    service = WORKLOADS[workload].service
    count = max(int(events * WORKLOADS[workload].events_share), 20)
    env = {
        **os.environ,
        "NATS_URL": stack["NATS_URL"],
        "NATS_TLS_CA": stack.get("NATS_TLS_CA", ""),
        "NATS_NKEY_SEED": stack.get("NATS_NKEY_SEED", ""),
        "PROMETHEUS_URL": stack["PROMETHEUS_URL"],
        "OTEL_SERVICE_NAME": f"canaryflow-bench-{service}",
        "CANARYFLOW_LOG_LEVEL": "INFO",
        "PYTHONHASHSEED": "0",  # the same dict and set layouts in every run
    }
    for name in ("OTEL_SDK_DISABLED", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_EXPORTER"):
        env.pop(name, None)
    if tracing:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = stack["OTEL_EXPORTER_OTLP_ENDPOINT"]
    else:
        env["OTEL_SDK_DISABLED"] = "true"
    with tempfile.TemporaryFile() as logs:  # the service's JSON logs: written, as in production
        child = subprocess.run(
            [sys.executable, __file__, "--child", workload, "--events", str(count)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=logs,
            timeout=600,
            check=False,
        )
        if child.returncode != 0:
            logs.seek(0)
            tail = logs.read().decode(errors="replace").splitlines()[-15:]
            mode = "on" if tracing else "off"
            sys.exit(f"{workload} (tracing {mode}) failed:\n" + "\n".join(tail))
    result = json.loads(child.stdout.decode().strip().splitlines()[-1])
    return Measurement(float(result["events_per_second"]), float(result["cpu_ms_per_event"]))


def drive(events: int, rounds: int, services: tuple[str, ...] = SERVICES) -> int:
    stack = _stack_env()
    workloads = [name for name, w in WORKLOADS.items() if w.service in services]
    runs: dict[tuple[str, bool], list[Measurement]] = {}
    for round_ in range(rounds):
        for workload in workloads:
            order = (True, False) if round_ % 2 == 0 else (False, True)
            for tracing in order:
                time.sleep(SETTLE_SECONDS)
                found = _measure(workload, tracing, events, stack)
                runs.setdefault((workload, tracing), []).append(found)
                print(
                    f"  round {round_ + 1}: {workload:<16} tracing {'on ' if tracing else 'off'}"
                    f" {found.events_per_second:8.1f} events/s"
                    f" {found.cpu_ms_per_event:7.3f} ms CPU/event",
                    flush=True,
                )
    print()
    scaled = ", ".join(
        f"{name}: {int(events * w.events_share)}"
        for name, w in WORKLOADS.items()
        if w.events_share != 1 and w.service in services
    )
    print(
        f"{rounds} round(s) of {events} events each ({scaled}); each round runs on and off back to "
        "back, and the overhead is the median of the rounds' paired on/off differences, with a "
        "95 % confidence interval for that median (Hettmansperger-Sheather)"
    )
    print(
        f"{'service (event)':<34} {'events/s off':>12} {'on':>7} {'overhead':>9} {'95 % CI':>15}"
        f" {'CPU ms/event off':>17} {'on':>7} {'overhead':>9}"
    )
    worst_median, worst_upper = 0.0, 0.0
    for workload in workloads:
        off, on = runs[(workload, False)], runs[(workload, True)]
        throughput = [
            (a.events_per_second - b.events_per_second) / a.events_per_second * 100
            for a, b in zip(off, on, strict=True)
        ]
        cpu = [
            (b.cpu_ms_per_event - a.cpu_ms_per_event) / a.cpu_ms_per_event * 100
            for a, b in zip(off, on, strict=True)
        ]
        overhead, (lower, upper) = statistics.median(throughput), _median_interval(throughput)
        worst_median, worst_upper = max(worst_median, overhead), max(worst_upper, upper)
        print(
            f"{WORKLOADS[workload].service + ' (' + WORKLOADS[workload].event + ')':<34}"
            f" {statistics.median(m.events_per_second for m in off):12.1f}"
            f" {statistics.median(m.events_per_second for m in on):7.1f} {overhead:8.1f}%"
            f" {f'{lower:.1f} to {upper:.1f}%':>15}"
            f" {statistics.median(m.cpu_ms_per_event for m in off):17.3f}"
            f" {statistics.median(m.cpu_ms_per_event for m in on):7.3f}"
            f" {statistics.median(cpu):8.1f}%"
        )
    budget = f"the {MAX_OVERHEAD_PERCENT:g}% budget"
    if worst_upper < MAX_OVERHEAD_PERCENT:
        verdict = f"within {budget}, every upper confidence bound included"
    elif worst_median < MAX_OVERHEAD_PERCENT:
        verdict = f"medians within {budget}, but not shown at 95 % confidence: run more rounds"
    else:
        verdict = f"ABOVE {budget}"
    print(f"largest median overhead {worst_median:.1f}% (largest upper bound {worst_upper:.1f}%):")
    print(f"  {verdict}")
    return 0


def _median_interval(values: list[float]) -> tuple[float, float]:
    """A 95 % confidence interval for the median, with no assumption about the distribution.

    Single runs on a shared machine move by 10-30 %, so a median alone can land on either side
    of the budget; the interval says whether the rounds actually settle it.
    """
    if len(values) < 6:  # too few rounds for the interval: the whole range, honestly wide
        return min(values), max(values)
    from scipy.stats.mstats import median_cihs

    lower, upper = median_cihs(values, alpha=0.05)
    return float(lower), float(upper)


# --------------------------------------------------------------------------- child: one run


@dataclass
class Run:
    """One service, its backlog, and the handler whose count says how far it got."""

    service: Any
    handler: str
    publish_backlog: Callable[[], Awaitable[None]]


async def child(name: str, events: int) -> None:
    from canaryflow.runtime.settings import Settings

    with fake_api_server() as kubeconfig:
        _pin_to_one_cpu()
        settings = Settings(
            service=WORKLOADS[name].service,
            nats_url=os.environ["NATS_URL"],
            nats_tls_ca=os.environ.get("NATS_TLS_CA"),
            nats_nkey_seed=os.environ.get("NATS_NKEY_SEED"),
            prefix=f"bench_{uuid.uuid4().hex[:10]}",
            kubeconfig=kubeconfig,
            prometheus_url=os.environ["PROMETHEUS_URL"],
            # The planner's safety net reads every release: not event handling, and a pass
            # landing in one run and not the next would be most of the difference measured
            # (the first pass comes one period after the start: none in a run).
            reconcile_seconds=3600,
        )
        await _run(name, settings, events)


def _pin_to_one_cpu() -> None:
    """Run the service on one CPU, the last; its fake API server and the stack use the rest.

    Left to the scheduler, the service moves between the two CPUs it shares with NATS, Jaeger
    and the API server, and single runs spread by 10-30 %; pinned, by about 7 %.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[-1]})


async def _run(name: str, settings: Any, events: int) -> None:
    from nats.aio.client import Client as NatsClient
    from prometheus_client import REGISTRY

    from canaryflow.runtime import observability

    # What the service's entry point sets up: JSON logs and the tracer provider.
    tracer_provider = observability.configure_process(settings.service)
    nc = NatsClient()
    await nc.connect(settings.nats_servers, **settings.nats_access.client_options())
    run = await _prepare(name, settings, nc, events)
    # The backlog is in the stream before the service starts: what is measured is handling.
    await run.publish_backlog()
    await run.service.start()
    try:
        labels = {"service": settings.service, "handler": run.handler}

        def handled() -> float:
            return REGISTRY.get_sample_value("canaryflow_event_handling_seconds_count", labels) or 0

        started, first = await _reach(handled, 1, name)
        cpu_started = _cpu_seconds()
        durable = settings.subjects.consumer(settings.service, run.handler)
        finished = await _all_acked(nc, settings.subjects.events_stream.name, durable, events)
        seconds = finished - started
        cpu = _cpu_seconds() - cpu_started
    finally:
        await run.service.stop()
        tracer_provider.shutdown()  # flushes the spans (not timed)
        await _cleanup(nc, settings)
        await nc.close()
    handled_events = events - first
    print(
        json.dumps(
            {
                "service": name,
                "events": events,
                "events_per_second": handled_events / seconds,
                "cpu_ms_per_event": cpu * 1000 / handled_events,
            }
        )
    )


def _cpu_seconds() -> float:
    """CPU time of this process, every thread (the span exporter's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _reach(count: Callable[[], float], target: int, name: str) -> tuple[float, float]:
    """When ``count()`` first reached ``target`` (polled every 2 ms), and its value then."""
    deadline = time.perf_counter() + 300
    while (value := count()) < target:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{name}: {value:.0f} of {target} handled")
        await asyncio.sleep(0.002)
    return time.perf_counter(), value


async def _all_acked(nc: Any, stream: str, durable: str, events: int) -> float:
    """When the consumer had every event delivered and acknowledged (polled every 10 ms)."""
    deadline = time.perf_counter() + 300
    while True:
        info = await nc.jetstream().consumer_info(stream, durable)
        settled = info.num_pending == 0 and info.num_ack_pending == 0
        if settled and info.ack_floor.consumer_seq >= events:
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{durable}: not every event acknowledged: {info}")
        await asyncio.sleep(0.01)


async def _cleanup(nc: Any, settings: Any) -> None:
    """Best effort: the prefix is never used again, so what is left only takes space."""
    js = nc.jetstream()
    subjects = settings.subjects
    for stream in (subjects.events_stream.name, subjects.deadletter_stream.name):
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)
    with contextlib.suppress(Exception):
        await js.delete_key_value(subjects.releases_bucket)


async def _prepare(name: str, settings: Any, nc: Any, events: int) -> Run:
    from canaryflow.runtime.bus import ensure_streams
    from canaryflow.runtime.store import ReleaseStore

    js = nc.jetstream()
    await ensure_streams(js, settings.subjects)
    store = ReleaseStore(await js.key_value(settings.subjects.releases_bucket))
    releases = [f"bench-{i}" for i in range(events)]
    # Upstream services send their trace context; a release request comes without one (the
    # planner roots the release's trace).
    traced = os.environ.get("OTEL_SDK_DISABLED", "").lower() != "true" and name != "planner"
    publish = _publisher(js, settings.subjects, traced=traced)
    builders = {
        "planner": _planner,
        "planner-verdict": _planner_verdict,
        "executor": _executor,
        "metrics-watcher": _metrics_watcher,
        "rollback": _rollback,
    }
    return await builders[name](settings, store, releases, publish)


Publish = Callable[[Any, str], Awaitable[None]]


def _publisher(js: Any, subjects: Any, *, traced: bool) -> Publish:
    """Publish as the upstream service would: with its trace context when tracing is on."""
    from canaryflow_contracts import MESSAGE_ID_HEADER, Envelope

    async def publish(data: Any, release_id: str) -> None:
        envelope = Envelope.wrap(data, release_id=release_id, source="bench")
        headers = {MESSAGE_ID_HEADER: envelope.id}
        if traced:
            trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
            headers["traceparent"] = f"00-{trace_id}-{span_id}-01"
        body = envelope.model_dump_json().encode()
        await js.publish(subjects.of(type(data), release_id), body, headers=headers)

    return publish


def _state(release_id: str, status: Any, hold_seconds: float = 0) -> Any:
    from canaryflow_contracts.events import PlannedStep, TargetRef, VersionSpec
    from canaryflow_contracts.state import ReleaseState

    now = datetime.now(UTC)
    return ReleaseState(
        release_id=release_id,
        target=TargetRef(namespace=release_id, name="web"),
        version=VersionSpec(image="registry.local/web:v2"),
        stable_image="registry.local/web:v1",
        policy="web",
        requested_by="bench",
        steps=[PlannedStep(index=0, weight=10, hold_seconds=hold_seconds)],
        status=status,
        phase_started_at=now,
        ready_deadline=now + timedelta(minutes=10),
        created_at=now,
        updated_at=now,
    )


async def _planner(settings: Any, store: Any, releases: list[str], publish: Publish) -> Run:
    from canaryflow.demo import shop
    from canaryflow.planner.app import build_service
    from canaryflow.planner.validation import KubeClusterReader
    from canaryflow.runtime import kube
    from canaryflow_contracts import policy
    from canaryflow_contracts.events import ReleaseRequested, TargetRef, VersionSpec

    api = kube.api_client(settings.kubeconfig)
    for rid in releases:
        kube.create_deployment(api, _deployment(rid, "web", 10, {"app": "web"}))
        body = {
            "apiVersion": f"{policy.GROUP}/{policy.VERSION}",
            "kind": policy.KIND,
            "metadata": {"name": "web", "namespace": rid},
            "spec": shop.quick_policy(),
        }
        path = f"/apis/{policy.GROUP}/{policy.VERSION}/namespaces/{rid}/{policy.PLURAL}"
        kube._request(api, "POST", path, body=body)

    async def backlog() -> None:
        for rid in releases:
            request = ReleaseRequested(
                target=TargetRef(namespace=rid, name="web"),
                version=VersionSpec(image="registry.local/web:v2"),
                requested_by="bench",
            )
            await publish(request, rid)

    cluster = KubeClusterReader(settings.kubeconfig)
    return Run(build_service(settings, cluster), "requested", backlog)


async def _planner_verdict(settings: Any, store: Any, releases: list[str], publish: Publish) -> Run:
    """Each release analysing its first step and told, mid-hold, that every check passes."""
    from canaryflow.planner.app import build_service
    from canaryflow_contracts.events import (
        AnalysisVerdict,
        MetricCheck,
        VerdictAction,
        VerdictResult,
    )
    from canaryflow_contracts.state import ReleaseStatus

    def check(metric: str, value: float, threshold: float | None, **extra: Any) -> MetricCheck:
        return MetricCheck(
            metric=metric,
            track="canary",
            query=f'{metric}{{version="v2"}}',
            value=value,
            threshold=threshold,
            comparison="<=" if threshold is not None else "n/a",
            sample_size=240,
            passed=True,
            **extra,
        )

    # The quick policy's four checks: two absolute guards, two comparisons with the baseline.
    checks = [
        check("error-rate", 0.004, 0.05),
        check("p99-latency", 0.21, 0.5),
        check("errors", 0.004, None, method="msprt-rate", baseline_value=0.005, p_value=0.8),
        check("latency", 0.12, None, method="msprt-quantiles", baseline_value=0.12, p_value=0.7),
    ]

    def verdict(state: Any) -> AnalysisVerdict:
        return AnalysisVerdict(
            target=state.target,
            step=state.current_step,
            result=VerdictResult.PASS,
            action=VerdictAction.CONTINUE,
            final=False,
            reason="every check passed",
            checks=checks,
        )

    backlog = await _backlog(store, releases, ReleaseStatus.ANALYSING, verdict, publish)
    return Run(build_service(settings), "verdict", backlog)


async def _executor(settings: Any, store: Any, releases: list[str], publish: Publish) -> Run:
    from kubernetes import client

    from canaryflow.demo import shop
    from canaryflow.executor.app import build_service
    from canaryflow.runtime import kube
    from canaryflow_contracts import policy
    from canaryflow_contracts.events import ApplyPhase
    from canaryflow_contracts.state import ReleaseStatus

    api = kube.api_client(settings.kubeconfig)
    policies = client.CustomObjectsApi(api)
    for rid in releases:
        kube.create_deployment(api, _deployment(rid, "web", 10, {"app": "web"}))
        # The executor writes only targets a ReleasePolicy governs.
        body = {"metadata": {"name": "web", "namespace": rid}, "spec": shop.quick_policy()}
        policies.create_namespaced_custom_object(
            policy.GROUP, policy.VERSION, rid, policy.PLURAL, body
        )

    def command(state: Any) -> ApplyPhase:
        return ApplyPhase(
            target=state.target,
            version=state.version,
            step=state.current_step,
            ready_deadline=state.ready_deadline,
        )

    backlog = await _backlog(store, releases, ReleaseStatus.APPLYING, command, publish)
    return Run(build_service(settings, api=api), "apply", backlog)


async def _backlog(
    store: Any,
    releases: list[str],
    status: Any,
    command: Callable[[Any], Any],
    publish: Publish,
) -> Callable[[], Awaitable[None]]:
    """Store each release in ``status``; the returned call publishes one command for each,
    exactly the one its stored state asks for (the executor and rollback obey no other)."""
    states = [_state(rid, status) for rid in releases]
    for state in states:
        await store.create(state)

    async def backlog() -> None:
        for state in states:
            await publish(command(state), state.release_id)

    return backlog


async def _metrics_watcher(settings: Any, store: Any, releases: list[str], publish: Publish) -> Run:
    from canaryflow.demo import shop
    from canaryflow.metrics_watcher.app import build_service
    from canaryflow_contracts.events import RequestAnalysis
    from canaryflow_contracts.policy import ReleasePolicySpec
    from canaryflow_contracts.state import ReleaseStatus

    policy = ReleasePolicySpec.model_validate(shop.quick_policy())

    class Policies:
        async def get(self, namespace: str, name: str) -> ReleasePolicySpec:
            return policy

    def command(state: Any) -> RequestAnalysis:
        return RequestAnalysis(
            target=state.target,
            step=state.current_step,
            canary_version="v2",
            stable_version="v1",
            policy="web",
        )

    backlog = await _backlog(store, releases, ReleaseStatus.ANALYSING, command, publish)
    # The stack's Prometheus answers the queries: asking it is most of an analysis's work.
    service = build_service(settings, policies=Policies())
    return Run(service, "analysis", backlog)


async def _rollback(settings: Any, store: Any, releases: list[str], publish: Publish) -> Run:
    from canaryflow.rollback.app import build_service
    from canaryflow.runtime import conventions, kube
    from canaryflow_contracts.events import RollbackRequested
    from canaryflow_contracts.state import ReleaseStatus

    api = kube.api_client(settings.kubeconfig)
    for rid in releases:
        # Stable one pod short with its restore point, and a canary: a step 1 to undo.
        stable = _deployment(rid, "web", 9, {"app": "web"})
        point = conventions.RestorePoint(rid, 10, copy.deepcopy(stable["spec"]["template"]))
        stable["metadata"]["annotations"] = point.annotations()
        kube.create_deployment(api, stable)
        canary = _deployment(
            rid, "web-canary", 1, {"app": "web", conventions.TRACK_LABEL: "canary"}
        )
        canary["metadata"]["labels"] = {conventions.RELEASE_LABEL: rid}
        kube.create_deployment(api, canary)

    def command(state: Any) -> RollbackRequested:
        return RollbackRequested(target=state.target, reason="bench", requested_by="bench")

    backlog = await _backlog(store, releases, ReleaseStatus.ROLLING_BACK, command, publish)
    return Run(build_service(settings, api=api), "requested", backlog)


# --------------------------------------------------------------------------- a fake API server


def _deployment(namespace: str, name: str, replicas: int, labels: dict[str, str]) -> Any:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {"containers": [{"name": "web", "image": "registry.local/web:v1"}]},
            },
        },
    }


class FakeKubernetes:
    """Namespaced objects as an API server serves them, in memory; Deployments Ready at once.

    GET of an object or of a collection (equality and existence label selectors), POST, PUT
    and merge-PATCH with resourceVersion checks, DELETE with a uid precondition: what the
    services' Kubernetes code uses. It runs in its own process (``serve_fake_api``), so its
    work is not counted as the service's, as a real API server's would not be.
    """

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._version = 0
        self._lock = threading.Lock()

    def put(self, body: dict[str, Any], resource: str = "deployments") -> dict[str, Any]:
        metadata = body["metadata"]
        key = (resource, metadata["namespace"], metadata["name"])
        old = self.objects.get(key)
        self._version += 1
        metadata["resourceVersion"] = str(self._version)
        metadata["uid"] = old["metadata"]["uid"] if old else uuid.uuid4().hex
        metadata["generation"] = (old["metadata"]["generation"] + 1) if old else 1
        if resource == "deployments":
            replicas = body["spec"].get("replicas", 1)
            body["status"] = {
                "observedGeneration": metadata["generation"],
                "replicas": replicas,
                "readyReplicas": replicas,
                "updatedReplicas": replicas,
                "availableReplicas": replicas,
            }
        self.objects[key] = body
        return body

    def request(
        self, method: str, path: str, query: dict[str, str], payload: Any
    ) -> tuple[int, dict[str, Any]]:
        parts = path.strip("/").split("/")
        if "namespaces" not in parts or len(parts) < parts.index("namespaces") + 3:
            return 404, {"kind": "Status", "code": 404}
        at = parts.index("namespaces")
        where = (parts[at + 2], parts[at + 1])
        name = parts[at + 3] if len(parts) > at + 3 else None
        with self._lock:
            status, body = self._handle(method, where, name, payload, query)
        if status >= 300 and not body:
            body = {"kind": "Status", "code": status}
        return status, body

    def _handle(
        self,
        method: str,
        where: tuple[str, str],
        name: str | None,
        payload: Any,
        query: dict[str, str],
    ) -> tuple[int, dict[str, Any]]:
        resource, namespace = where
        if method == "GET" and name is None:
            selector = query.get("labelSelector", "")
            items = [
                copy.deepcopy(body)
                for (kind, ns, _), body in self.objects.items()
                if kind == resource
                and ns == namespace
                and _selected(selector, body["metadata"].get("labels") or {})
            ]
            return 200, {"items": items}
        if method == "POST":
            if (resource, namespace, payload["metadata"]["name"]) in self.objects:
                return 409, {}
            return 201, self.put(copy.deepcopy(payload), resource)
        current = self.objects.get((resource, namespace, name or ""))
        if current is None:
            return 404, {}
        if method == "GET":
            return 200, copy.deepcopy(current)
        if method == "DELETE":
            uid = ((payload or {}).get("preconditions") or {}).get("uid")
            if uid and uid != current["metadata"]["uid"]:
                return 409, {}
            del self.objects[(resource, namespace, name or "")]
            return 200, {}
        expected = (payload.get("metadata") or {}).get("resourceVersion")
        if expected and expected != current["metadata"]["resourceVersion"]:
            return 409, {}
        body = payload if method == "PUT" else _merge(copy.deepcopy(current), payload)
        return 200, self.put(copy.deepcopy(body), resource)


def serve_fake_api(port: int) -> None:
    """The fake API server over HTTP on 127.0.0.1:``port``, until killed."""
    fake = FakeKubernetes()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body are two writes: without this, Nagle and the client's delayed ACK
        # hold every answer ~40 ms.
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            payload = json.loads(self.rfile.read(length)) if length else None
            query = dict(parse_qsl(url.query))
            status, body = fake.request(self.command, url.path, query, payload)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: thousands of requests a run."""

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


@contextlib.contextmanager
def fake_api_server() -> Iterator[str]:
    """A fake API server process; yields a kubeconfig file that points at it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, __file__, "--fake-api", str(port)])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with tempfile.NamedTemporaryFile("w", suffix=".kubeconfig", delete=False) as kubeconfig:
            kubeconfig.write(_KUBECONFIG.format(port=port))
        yield kubeconfig.name
    finally:
        server.kill()
        server.wait()
        with contextlib.suppress(NameError, OSError):
            os.unlink(kubeconfig.name)


_KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: fake, user: {{}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]
current-context: fake
"""


def _selected(selector: str, labels: dict[str, str]) -> bool:
    """Equality and existence label selectors (``a=b``, ``a!=b``, ``a``, ``!a``)."""
    for term in filter(None, (part.strip() for part in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = _merge(target.get(key), value)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300, help="events per measurement")
    parser.add_argument("--rounds", type=int, default=11, help="measurements per service and mode")
    parser.add_argument(
        "--service", action="append", choices=SERVICES, help="only these (repeatable)"
    )
    parser.add_argument("--child", choices=WORKLOADS, help=argparse.SUPPRESS)
    parser.add_argument("--fake-api", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fake_api:
        serve_fake_api(args.fake_api)
        return
    if args.child:
        asyncio.run(child(args.child, args.events))
        return
    sys.exit(drive(args.events, args.rounds, tuple(args.service or SERVICES)))


if __name__ == "__main__":
    main()
