"""A seeded fault campaign on the real local stack, judged from the outside.

Why here, next to ``faults`` and the launcher: the campaign kills the same service processes
the end-to-end tests and the restart benchmark start and kill, with the same helpers; living
in the package (not in ``bench/``) it is linted and type-checked like the services, and the
end-to-end test (tests/e2e/test_chaos.py) runs exactly the code ``make chaos`` runs.

One campaign starts the four services (two replicas each by default) on streams of their own.
Each run puts a few targets (the sample shop, small) in a fresh namespace and releases all of
them at once, good and bad versions mixed, half of them with a ConfigMap change, some with an
operator's pause and resume or an abort. Meanwhile, at random moments of the run's first
minute, it breaks something:

- ``kill-one``/``kill-two``/``kill-all``: SIGKILL one random replica, two at once, or every
  replica of one service; each comes back 0.5-3 s later, as a supervisor would restart it;
- ``nats-restart``: the stack's NATS server stopped and started again (``stack.restart``);
- ``nats-node-kill``: on a three-node JetStream cluster (``CANARYFLOW_NATS_NODES=3``), one
  random node SIGKILLed and started again 2-15 s later; R3 streams keep a quorum throughout;
- ``apiserver-stop``: the kube-apiserver frozen (SIGSTOP) for 5-30 s, then SIGCONT;
- ``prometheus-stop``: Prometheus frozen (SIGSTOP) for 10-60 s, then SIGCONT (no scrape, no
  answer to queries, connections hang: harder on the clients than a refused connection).

After the run it checks invariants from the outside only: the release's events in the
JetStream stream, the dead-letter stream, the Kubernetes API (objects now, and a watch kept
over the whole run for every Deployment and ConfigMap ever created), and the notifications a
webhook receiver here got. A violation is printed with the seeds that replay it.

    python -m canaryflow.demo.chaos [--seed N] [--runs 3] [--faults 8] [--releases 4 6]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
import re
import signal
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import nats
import nats.errors
from kubernetes import client, watch
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException
from nats.aio.client import Client as NatsClient
from nats.js.api import DeliverPolicy

from canaryflow.demo import shop
from canaryflow.demo.launcher import (
    SERVICES,
    LaunchError,
    ServiceLauncher,
    StackEndpoints,
    delete_jetstream_state,
)
from canaryflow.runtime import bundle
from canaryflow.runtime.bus import PUBLISH_RETRY_SECONDS, until_jetstream_answers
from canaryflow.runtime.settings import nats_servers
from canaryflow.runtime.signing import IDEMPOTENCY_HEADER
from canaryflow_contracts import MESSAGE_ID_HEADER, Envelope, EventData, Subjects
from canaryflow_contracts.events import (
    TERMINAL_EVENTS,
    AbortRelease,
    AnalysisVerdict,
    CommandRefused,
    ConfigMapChange,
    PauseRelease,
    PhaseFailed,
    PhaseReached,
    PromotionCompleted,
    ReleaseFailed,
    ReleasePlanned,
    ReleaseRequested,
    ReleaseRolledBack,
    ReleaseSucceeded,
    RequestPromotion,
    ResumeRelease,
    RollbackCompleted,
    TargetRef,
    VerdictResult,
    VersionSpec,
    parse_event,
)
from canaryflow_stack import stack as stack_manager
from canaryflow_stack.config import Settings as StackSettings
from canaryflow_stack.procs import PidRecord
from canaryflow_stack.servers import nats_node_name

log = logging.getLogger(__name__)

KILLS = ("kill-one", "kill-two", "kill-all")
OUTAGES = ("nats-restart", "nats-node-kill", "apiserver-stop", "prometheus-stop")
KINDS = KILLS + OUTAGES
WEIGHTS = {
    "kill-one": 30,
    "kill-two": 12,
    "kill-all": 10,
    "nats-restart": 14,
    "nats-node-kill": 14,
    "apiserver-stop": 16,
    "prometheus-stop": 18,
}
APISERVER_STOP_SECONDS = (5.0, 30.0)
PROMETHEUS_STOP_SECONDS = (10.0, 60.0)
NATS_NODE_DOWN_SECONDS = (2.0, 15.0)
TABLE_EVERY_RUNS = 5


RESTART_DELAY_SECONDS = (0.5, 3.0)

SIZE = 4  # pods of each target: small, so that several releases at once stay cheap
RPS = 100.0  # users per target (one request each): a 25 % canary sees ~25 requests a second
HOLD_SECONDS = 8.0
WINDOW_SECONDS = 10.0  # the quick policy's analysis window (what a verdict's queries cover)
OPERATOR = "chaos@campaign"
SAME = {"error_rate": 0.005, "latency_ms": {"median": 40, "p99": 120}}
BEHAVIOURS = {"v1": SAME, "v2": SAME, "v2-bad": {**SAME, "error_rate": 0.2}}
GOOD, BAD = "v2", "v2-bad"
TERMINAL_NAMES = {
    ReleaseSucceeded: "succeeded",
    ReleaseRolledBack: "rolled_back",
    ReleaseFailed: "failed",
}


# --------------------------------------------------------------------------- what happens


@dataclass
class Fault:
    kind: str
    started: float  # wall clock, comparable with the envelopes' times on this machine
    ended: float = 0.0  # when the part is back (an instant for kills: the kill itself)
    detail: str = ""
    recovery: float | None = None  # fault's end -> next transition of a release in flight
    in_flight: int = 0  # releases that had begun and not ended when the part came back


@dataclass
class Planned:
    release_id: str
    target: str
    tag: str
    config: bool  # the version also changes the target's ConfigMap (a versioned copy)
    command: str | None  # "pause-resume", "abort" or None
    commanded_at: float = 0.0  # when the first command went out (wall clock)


@dataclass
class RunReport:
    index: int
    seed: int
    releases: list[Planned]
    faults: list[Fault]
    outcomes: dict[str, str]
    violations: list[str]
    seconds: float
    notes: int = 0  # notifications the receiver got
    repeats: int = 0  # of which repeats it dropped by their Idempotency-Key
    causes: dict[str, str] = field(default_factory=dict)  # release id -> why it rolled back


@dataclass
class CampaignOptions:
    seed: int
    runs: int = 3
    faults: int = 8  # per run, at most
    releases: tuple[int, int] = (4, 6)  # per run, between
    replicas: int = 2
    inject_seconds: float = 60.0  # faults start within this long of a run's start
    # A release not ended by then is a violation. The longest legitimate life: a request whose
    # handlers keep being killed waits out the redelivery backoff (78 s, runtime/bus.py), two
    # steps held and extended once (32 s), a final insufficient verdict's pause (90 s, the
    # policy below), then the rollback: about 220 s, on a machine slowed by the faults.
    release_seconds: float = 300.0
    kinds: tuple[str, ...] = KINDS
    script: tuple[str, ...] = ()  # fixed kinds in order for the first faults of every run
    run_seeds: tuple[int, ...] = ()  # replay these runs exactly (overrides runs and seed)


def fitted_to(options: CampaignOptions, nats_nodes: int) -> CampaignOptions:
    """``options`` for a stack with ``nats_nodes`` NATS nodes: a node kill needs a cluster (on
    one node it is a restart), so it is left out of the default mix and refused by name."""
    if nats_nodes > 1:
        return options
    named = set(options.script) | (set(options.kinds) if options.kinds != KINDS else set())
    if "nats-node-kill" in named:
        raise ValueError("nats-node-kill needs a NATS cluster: CANARYFLOW_NATS_NODES=3")
    kinds = tuple(kind for kind in options.kinds if kind != "nats-node-kill")
    return dataclasses.replace(options, kinds=kinds)


# --------------------------------------------------------------------------- the outside view


class Receiver:
    """A notification webhook on 127.0.0.1 (in the stack's namespace), as a careful receiver
    is written: a repeat of a call it has seen (the same ``Idempotency-Key``) is counted in
    ``repeats`` and dropped; every other POST is kept in ``notes``, to be checked."""

    def __init__(self) -> None:
        self.notes: list[dict[str, Any]] = []
        self.repeats: list[dict[str, Any]] = []
        notes, repeats, seen = self.notes, self.repeats, set[str]()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                note = body.get("metadata", {}).get("event_payload", {})
                key = self.headers.get(IDEMPOTENCY_HEADER)
                if key is not None and key in seen:
                    repeats.append(note)
                else:
                    notes.append(note)
                    if key is not None:
                        seen.add(key)
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/notify"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)


class ObjectWatch:
    """Every Deployment and ConfigMap uid seen in a namespace during a run.

    A watch per kind, resumed from the last resourceVersion after every break (an API server
    frozen, a timeout), so an object created and deleted while nobody looked is still seen:
    the API server keeps its history for minutes. A name with two uids was created twice.
    """

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.uids: dict[tuple[str, str], set[str]] = {}
        self.gaps = 0  # the history was gone (410): creations in between may be missed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        self._threads = [
            threading.Thread(
                target=self._follow,
                args=(kind, lister, namespace),
                daemon=True,
            )
            for kind, lister in (
                ("Deployment", apps.list_namespaced_deployment),
                ("ConfigMap", core.list_namespaced_config_map),
            )
        ]
        for thread in self._threads:
            thread.start()

    def _record(self, kind: str, item: Any) -> None:
        with self._lock:
            self.uids.setdefault((kind, item.metadata.name), set()).add(item.metadata.uid)

    def _follow(self, kind: str, lister: Callable[..., Any], namespace: str) -> None:
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    listing = lister(namespace, _request_timeout=10)
                    for item in listing.items:
                        self._record(kind, item)
                    version = listing.metadata.resource_version
                stream = watch.Watch().stream(
                    lister,
                    namespace,
                    resource_version=version,
                    timeout_seconds=5,
                    _request_timeout=15,
                )
                for event in stream:
                    if event["type"] == "ERROR":
                        raise ApiException(status=event["raw_object"].get("code", 500))
                    self._record(kind, event["object"])
                    version = event["object"].metadata.resource_version
                    if self._stop.is_set():
                        break
            except ApiException as error:
                if error.status == 410:
                    self.gaps += 1
                    version = None
                else:
                    time.sleep(0.5)
            except Exception:  # a frozen API server breaks the stream any way
                time.sleep(0.5)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=20)

    def created_twice(self) -> list[str]:
        with self._lock:
            return [
                f"{kind} {name} created {len(uids)} times"
                for (kind, name), uids in sorted(self.uids.items())
                if len(uids) > 1
            ]


async def stream_messages(
    nc: NatsClient, stream: str, subject: str, start: float | None = None
) -> list[tuple[float, bytes]]:
    """(stored at, body) of every message on ``subject`` in ``stream``, from its start."""
    js = nc.jetstream()
    subscription = await js.subscribe(
        subject, stream=stream, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    found: list[tuple[float, bytes]] = []
    try:
        while True:
            try:
                msg = await subscription.next_msg(timeout=1.0)
            except (nats.errors.TimeoutError, TimeoutError):
                return found
            stored = msg.metadata.timestamp.timestamp() if msg.metadata.timestamp else 0.0
            if start is None or stored >= start:
                found.append((stored, msg.data))
    finally:
        await subscription.unsubscribe()


async def release_events(nc: NatsClient, subjects: Subjects, rid: str) -> list[Envelope[Any]]:
    messages = await stream_messages(nc, subjects.events_stream.name, subjects.release(rid))
    return [parse_event(body) for _, body in messages]


# --------------------------------------------------------------------------- breaking things


class Injector:
    """Breaks one part of the running system at a time (kills may overlap an outage)."""

    def __init__(self, launcher: ServiceLauncher, stack: StackSettings, rng: random.Random) -> None:
        self.launcher = launcher
        self.stack = stack
        self.rng = rng
        self.outage: asyncio.Task[None] | None = None
        self.restarts: list[asyncio.Task[None]] = []
        self._launch = asyncio.Lock()

    def _pid(self, server: str) -> int:
        record = PidRecord.load(stack_manager.pidfile(self.stack, server))
        if record is None:
            raise RuntimeError(f"the stack has no {server} running (no pid file)")
        return record.pid

    async def _supervise(self, name: str, count: int) -> None:
        """Start ``count`` replicas of ``name`` again after a supervisor's delay."""
        await asyncio.sleep(self.rng.uniform(*RESTART_DELAY_SECONDS))
        for attempt in range(1, 31):
            async with self._launch:
                try:
                    await asyncio.to_thread(self.launcher.start, (name,), 60, count)
                    return
                except LaunchError as error:
                    # A replica that could not connect (NATS restarting) exits: start again.
                    log.warning("restart of %s failed (attempt %d): %s", name, attempt, error)
                    for replica in list(self.launcher.replicas_of(name)):
                        if replica.process.poll() is not None:
                            self.launcher.running.remove(replica)
                    count = max(self.launcher.replicas - len(self.launcher.replicas_of(name)), 0)
                    if count == 0:
                        return
            await asyncio.sleep(2)
        raise RuntimeError(f"{name} could not be restarted")

    async def _kill(self, replicas: list[Any]) -> str:
        by_name: dict[str, int] = {}
        for replica in replicas:  # at once: a restart under way does not hold a kill back
            if replica in self.launcher.running:
                self.launcher.kill(replica)
                by_name[replica.name] = by_name.get(replica.name, 0) + 1
        for name, count in by_name.items():
            self.restarts.append(asyncio.create_task(self._supervise(name, count)))
        return ", ".join(f"{n} x{c}" for n, c in sorted(by_name.items()))

    async def inject(self, kind: str) -> Fault:
        fault = Fault(kind, time.time())
        running = [r for r in self.launcher.running if r.process.poll() is None]
        if kind == "kill-one":
            fault.detail = await self._kill([self.rng.choice(running)])
        elif kind == "kill-two":
            fault.detail = await self._kill(self.rng.sample(running, min(2, len(running))))
        elif kind == "kill-all":
            name = self.rng.choice(SERVICES)
            fault.detail = await self._kill([r for r in running if r.name == name])
        elif kind == "nats-restart":
            await asyncio.to_thread(stack_manager.restart, self.stack, "nats")
        elif kind == "nats-node-kill":
            if self.stack.nats_nodes < 2:
                raise ValueError("nats-node-kill needs a NATS cluster (CANARYFLOW_NATS_NODES=3)")
            node = nats_node_name(self.rng.randint(1, self.stack.nats_nodes))
            seconds = self.rng.uniform(*NATS_NODE_DOWN_SECONDS)
            os.kill(self._pid(node), signal.SIGKILL)
            fault.detail = f"{node} down {seconds:.1f} s"
            await asyncio.sleep(seconds)
            await asyncio.to_thread(stack_manager.restart, self.stack, node)
        elif kind in ("apiserver-stop", "prometheus-stop"):
            server = "kube-apiserver" if kind == "apiserver-stop" else "prometheus"
            bounds = APISERVER_STOP_SECONDS if kind == "apiserver-stop" else PROMETHEUS_STOP_SECONDS
            seconds = self.rng.uniform(*bounds)
            fault.detail = f"{seconds:.1f} s"
            await freeze(self._pid(server), seconds)
        else:
            raise ValueError(f"unknown fault kind {kind!r}")
        fault.ended = time.time()
        return fault

    async def settle(self) -> None:
        """Every killed replica back (the fleet whole) before the run is judged."""
        if self.outage is not None:
            await self.outage
        await asyncio.gather(*self.restarts)
        self.restarts.clear()
        for name in SERVICES:
            missing = self.launcher.replicas - len(self.launcher.replicas_of(name))
            if missing > 0:
                await asyncio.to_thread(self.launcher.start, (name,), 60, missing)


FROZEN: set[int] = set()  # pids stopped right now: woken up whatever ends the campaign


async def freeze(pid: int, seconds: float) -> None:
    """SIGSTOP ``pid`` for ``seconds``; SIGCONT always follows, even on cancellation."""
    os.kill(pid, signal.SIGSTOP)
    FROZEN.add(pid)
    try:
        await asyncio.sleep(seconds)
    finally:
        thaw()


def thaw() -> None:
    for pid in list(FROZEN):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        FROZEN.discard(pid)


# --------------------------------------------------------------------------- one run


@dataclass
class Campaign:
    api: client.ApiClient
    nc: NatsClient
    launcher: ServiceLauncher
    stack: StackSettings
    receiver: Receiver
    options: CampaignOptions
    deadletters_seen: int = 0
    reports: list[RunReport] = field(default_factory=list)

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.launcher.prefix)

    async def publish(self, data: EventData, rid: str) -> None:
        """Published as the services publish: again while a NATS node is down (same id, so a
        repeat the stream already stored is dropped)."""
        envelope = Envelope.wrap(data, release_id=rid, source="chaos")

        async def once() -> None:
            await self.nc.jetstream().publish(
                self.subjects.of(type(data), rid),
                envelope.model_dump_json().encode(),
                headers={MESSAGE_ID_HEADER: envelope.id},
            )

        await until_jetstream_answers(f"publish {envelope.type}", once, PUBLISH_RETRY_SECONDS)

    def _prepare(self, namespace: str, plans: list[Planned]) -> None:
        core = client.CoreV1Api(self.api)
        core.create_namespace(
            client.V1Namespace(
                metadata=client.V1ObjectMeta(name=namespace, labels={"canaryflow.io/chaos": "1"})
            )
        )
        deadline = time.monotonic() + 30
        while True:  # pods are refused until the default ServiceAccount exists
            try:
                core.read_namespaced_service_account("default", namespace)
                break
            except ApiException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        shop.set_behaviour(self.api, namespace, BEHAVIOURS)
        for plan in plans:
            shop.deploy(self.api, namespace, name=plan.target, replicas=SIZE, rps=RPS)
            if plan.config:
                use_config_map(self.api, namespace, plan.target)
            spec = shop.quick_policy(
                plan.target, weights=(25, 50), hold_seconds=HOLD_SECONDS, pod_ready_seconds=90
            )
            spec["deadlines"]["pauseSeconds"] = 90
            spec["notify"] = [{"url": self.receiver.url}]
            spec["operators"] = [{"subject": OPERATOR, "actions": ["pause", "resume", "abort"]}]
            shop.apply_policy(self.api, namespace, spec, name=plan.target)
        wait_whole(self.api, namespace, [p.target for p in plans], timeout=60)

    async def request(self, namespace: str, plan: Planned) -> None:
        changes = (
            [ConfigMapChange(name=config_name(plan.target), data={"LAYOUT": "compact"})]
            if plan.config
            else []
        )
        await self.publish(
            ReleaseRequested(
                target=TargetRef(namespace=namespace, name=plan.target),
                version=VersionSpec(image=shop.image(plan.tag, plan.target), config_maps=changes),
                requested_by="chaos",
            ),
            plan.release_id,
        )

    async def command(self, plan: Planned, rng: random.Random) -> None:
        await asyncio.sleep(rng.uniform(4, 20))
        plan.commanded_at = time.time()
        if plan.command == "abort":
            await self.publish(AbortRelease(actor=OPERATOR, reason="chaos"), plan.release_id)
            return
        await self.publish(PauseRelease(actor=OPERATOR, reason="chaos"), plan.release_id)
        await asyncio.sleep(rng.uniform(2, 10))
        await self.publish(ResumeRelease(actor=OPERATOR, reason="chaos"), plan.release_id)

    async def run(self, index: int, seed: int) -> RunReport:
        rng = random.Random(seed)
        options = self.options
        started = time.time()
        namespace = f"chaos-{seed % 10**8}-{uuid.uuid4().hex[:4]}"
        count = rng.randint(*options.releases)
        plans = []
        for number in range(count):
            command = rng.choices([None, "pause-resume", "abort"], [6, 2, 1])[0]
            plans.append(
                Planned(
                    release_id=f"t{number}-{uuid.uuid4().hex[:8]}",
                    target=f"t{number}",
                    tag=rng.choice([GOOD, GOOD, BAD]),
                    config=rng.random() < 0.5,
                    command=command,
                )
            )
        print(
            f"-- run {index + 1}: seed {seed}, namespace {namespace}, releases "
            + ", ".join(
                f"{p.target}:{p.tag}{'+config' if p.config else ''}"
                f"{'+' + p.command if p.command else ''}"
                for p in plans
            ),
            flush=True,
        )
        await asyncio.to_thread(self._prepare, namespace, plans)
        objects = ObjectWatch(self.api, namespace)
        notes_before = len(self.receiver.notes)
        repeats_before = len(self.receiver.repeats)
        injector = Injector(self.launcher, self.stack, rng)
        faults: list[Fault] = []
        run_start = time.time()
        for plan in plans:
            await self.request(namespace, plan)
        commands = [asyncio.create_task(self.command(plan, rng)) for plan in plans if plan.command]
        follow = asyncio.create_task(self._ends(plans, run_start + options.release_seconds))
        try:
            await self._inject(injector, rng, faults, run_start, follow)
            await injector.settle()
            await follow  # every release ended, or the time is up (then: a violation)
            await asyncio.gather(*commands)
            await asyncio.sleep(3)  # a second terminal event, if any, has time to appear
            report = await self._judge(
                index=index,
                seed=seed,
                plans=plans,
                faults=faults,
                namespace=namespace,
                objects=objects,
                notes_before=notes_before,
                repeats_before=repeats_before,
            )
        finally:
            thaw()
            objects.close()
            for task in commands:
                task.cancel()
            follow.cancel()
            with contextlib.suppress(ApiException):
                client.CoreV1Api(self.api).delete_namespace(
                    namespace, propagation_policy="Background"
                )
        report.seconds = time.time() - started
        self.reports.append(report)
        return report

    async def _inject(
        self,
        injector: Injector,
        rng: random.Random,
        faults: list[Fault],
        run_start: float,
        follow: asyncio.Task[dict[str, Envelope[Any] | None]],
    ) -> None:
        options = self.options
        kinds = list(options.kinds)
        pending: list[asyncio.Task[Fault]] = []
        for number in range(options.faults):
            await asyncio.sleep(rng.uniform(2.0, 9.0))
            # Scripted faults are all injected (a test names them), even once every release
            # has ended: a kill then checks that nothing redelivered is done a second time.
            scripted = number < len(options.script)
            if not scripted and (follow.done() or time.time() - run_start > options.inject_seconds):
                break
            outage_on = any(not t.done() and t.get_name() in OUTAGES for t in pending)
            if number < len(options.script):
                kind = options.script[number]
                if kind in OUTAGES and outage_on:
                    await asyncio.wait([t for t in pending if t.get_name() in OUTAGES])
            else:
                allowed = [k for k in kinds if not (outage_on and k in OUTAGES)]
                kind = rng.choices(allowed, [WEIGHTS[k] for k in allowed])[0]
            print(f"   +{time.time() - run_start:5.1f} s  {kind}", flush=True)
            pending.append(asyncio.create_task(injector.inject(kind), name=kind))
        for task in pending:
            fault = await task
            faults.append(fault)
            if fault.detail:
                print(f"   {fault.kind}: {fault.detail}", flush=True)

    async def _ends(self, plans: list[Planned], deadline: float) -> dict[str, Envelope[Any] | None]:
        """Each release's first terminal event, waiting until ``deadline`` at most."""
        ends: dict[str, Envelope[Any] | None] = {p.release_id: None for p in plans}
        while time.time() < deadline and any(v is None for v in ends.values()):
            for rid, end in ends.items():
                if end is None:
                    with contextlib.suppress(Exception):  # NATS may be restarting right now
                        events = await release_events(self.nc, self.subjects, rid)
                        ends[rid] = next(
                            (e for e in events if isinstance(e.data, TERMINAL_EVENTS)), None
                        )
            await asyncio.sleep(2)
        return ends

    async def _judge(
        self,
        *,
        index: int,
        seed: int,
        plans: list[Planned],
        faults: list[Fault],
        namespace: str,
        objects: ObjectWatch,
        notes_before: int,
        repeats_before: int,
    ) -> RunReport:
        violations: list[str] = []
        outcomes: dict[str, str] = {}
        causes: dict[str, str] = {}
        events = {
            p.release_id: await release_events(self.nc, self.subjects, p.release_id) for p in plans
        }
        await asyncio.to_thread(
            wait_whole, self.api, namespace, [p.target for p in plans], 45, False
        )
        for plan in plans:
            seen = events[plan.release_id]
            problems = check_release(self.api, namespace, plan, seen)
            problems += prometheus_problems(
                seen, [f for f in faults if f.kind == "prometheus-stop"]
            )
            violations += [f"{plan.release_id} ({plan.tag}): {p}" for p in problems]
            terminal = next((e for e in seen if isinstance(e.data, TERMINAL_EVENTS)), None)
            outcomes[plan.release_id] = outcome_name(terminal)
            if terminal is not None and isinstance(terminal.data, ReleaseRolledBack):
                causes[plan.release_id] = rollback_cause(terminal.data.summary)
        violations += objects.created_twice()
        notes = self.receiver.notes[notes_before:]
        violations += duplicate_notes(notes)
        violations += await self._deadletters()
        measure_recovery(faults, events)
        if objects.gaps:
            print(f"   (the object watch lost history {objects.gaps} time(s))", flush=True)
        repeats = len(self.receiver.repeats) - repeats_before
        report = RunReport(
            index, seed, plans, faults, outcomes, violations, 0.0, len(notes), repeats, causes
        )
        summary = ", ".join(f"{p.target}:{p.tag}={outcomes[p.release_id]}" for p in plans)
        print(
            f"   outcomes: {summary}; {len(notes)} notification(s)"
            + (f", {repeats} repeat(s) dropped by their Idempotency-Key" if repeats else ""),
            flush=True,
        )
        for violation in violations:
            print(f"   VIOLATION (run seed {seed}): {violation}", flush=True)
        return report

    async def _deadletters(self) -> list[str]:
        """Every dead letter since the last look is unexplained: nothing here is malformed."""
        messages = await stream_messages(
            self.nc, self.subjects.deadletter_stream.name, f"{self.launcher.prefix}.deadletter.>"
        )
        new = messages[self.deadletters_seen :]
        self.deadletters_seen = len(messages)
        problems = []
        for _, body in new:
            try:
                letter = parse_event(body)
                data = letter.data
                problems.append(
                    f"dead letter from {data.consumer} for {data.original_subject} after "
                    f"{data.deliveries} deliveries: {data.error[:300]}"
                )
            except Exception as error:  # still a dead letter, still unexplained
                problems.append(f"unreadable dead letter ({error}): {body[:200]!r}")
        return problems


# --------------------------------------------------------------------------- invariants


def rollback_cause(summary: str) -> str:
    """The kind of reason a ReleaseRolledBack's summary gives (``rolled back: <why>; ...``):
    a good version rolled back must be explained by the faults or the commands of its run."""
    why = summary.removeprefix("rolled back: ")
    for pattern, cause in (
        (r"aborted by", "operator abort"),
        (r"paused for longer than", "paused past its deadline"),
        (r"step \d+: fail:", "analysis failed"),
        (r"step \d+ failed:", "step failed"),
    ):
        if re.match(pattern, why):
            return cause
    return why.split(";")[0][:60]


def outcome_name(terminal: Envelope[Any] | None) -> str:
    if terminal is None:
        return "no end"
    return TERMINAL_NAMES.get(type(terminal.data), type(terminal.data).__name__)


def config_name(target: str) -> str:
    return f"{target}-config"


def use_config_map(api: client.ApiClient, namespace: str, target: str) -> None:
    """The target reads ConfigMap ``<target>-config`` through envFrom."""
    name = config_name(target)
    client.CoreV1Api(api).create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data={"LAYOUT": "classic"}),
    )
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [{"name": target, "envFrom": [{"configMapRef": {"name": name}}]}]
                }
            }
        }
    }
    client.AppsV1Api(api).patch_namespaced_deployment(target, namespace, patch)


def wait_whole(
    api: client.ApiClient, namespace: str, targets: list[str], timeout: float, strict: bool = True
) -> None:
    """Each target's Deployment rolled out at its full size (raises only when ``strict``)."""
    apps = client.AppsV1Api(api)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            whole = all(
                (d.status.updated_replicas, d.status.ready_replicas, d.status.replicas)
                == (SIZE, SIZE, SIZE)
                and d.status.observed_generation == d.metadata.generation
                for d in (apps.read_namespaced_deployment(t, namespace) for t in targets)
            )
        except ApiException:
            whole = False
        if whole:
            return
        time.sleep(0.5)
    if strict:
        raise TimeoutError(f"targets in {namespace} not rolled out within {timeout:.0f} s")


def abort_came_too_early(events: list[Envelope[Any]]) -> bool:
    """Every abort was refused as for an unknown release, sent before the planner had planned
    it (a planner killed or slowed right after the request): the operator was told so, and
    the release went on, as a command is obeyed only for a live release that asks for it."""
    planned = next((e for e in events if isinstance(e.data, ReleasePlanned)), None)
    aborts = [e for e in events if isinstance(e.data, AbortRelease)]
    refused = {
        e.data.command_id
        for e in events
        if isinstance(e.data, CommandRefused) and e.data.checks == ["unknown-release"]
    }
    return bool(aborts) and all(
        abort.id in refused and (planned is None or abort.time < planned.time) for abort in aborts
    )


def check_release(
    api: client.ApiClient, namespace: str, plan: Planned, events: list[Envelope[Any]]
) -> list[str]:
    """The release's invariants, from its events and the cluster as it is now."""
    problems: list[str] = []
    terminals = [e for e in events if isinstance(e.data, TERMINAL_EVENTS)]
    kinds = [type(e.data).__name__ for e in terminals]
    if len(terminals) != 1:
        last = [e.type.removeprefix("io.canaryflow.") for e in events[-6:]]
        problems.append(f"{len(terminals)} terminal events {kinds} (last events: {last})")
    succeeded = bool(terminals) and isinstance(terminals[0].data, ReleaseSucceeded)
    if terminals and isinstance(terminals[0].data, ReleaseFailed):
        problems.append(
            f"ended failed: {terminals[0].data.summary}; leftovers {terminals[0].data.leftovers}"
        )
    elif terminals and not isinstance(terminals[0].data, ReleaseSucceeded | ReleaseRolledBack):
        problems.append(f"ended {kinds[0]}")
    if succeeded and plan.tag == BAD:
        problems.append("a bad version was promoted")
    if succeeded and plan.command == "abort" and not abort_came_too_early(events):
        promoting = next((e for e in events if isinstance(e.data, RequestPromotion)), None)
        if promoting is None or plan.commanded_at < promoting.time.timestamp():
            problems.append("succeeded although aborted before any promotion")
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    stable = apps.read_namespaced_deployment(plan.target, namespace)
    container = stable.spec.template.spec.containers[0]
    new_image = shop.image(plan.tag, plan.target)
    if (container.image == new_image) != succeeded:
        problems.append(f"stable runs {container.image} after the release {kinds}")
    if (stable.spec.replicas, stable.status.ready_replicas) != (SIZE, SIZE):
        problems.append(
            f"stable not whole: {stable.status.ready_replicas} of {stable.spec.replicas} Ready"
        )
    if plan.config:
        referenced = [
            source.config_map_ref.name
            for source in container.env_from or []
            if source.config_map_ref is not None
        ]
        expected = f"{config_name(plan.target)}-{plan.release_id}" if succeeded else None
        if expected is not None and referenced != [expected]:
            problems.append(f"promoted, but stable reads ConfigMap {referenced}")
        if expected is None and referenced != [config_name(plan.target)]:
            problems.append(f"not promoted, but stable reads ConfigMap {referenced}")
    names = {d.metadata.name for d in apps.list_namespaced_deployment(namespace).items}
    for extra in (f"{plan.target}-canary", f"{plan.target}-baseline"):
        if extra in names:
            problems.append(f"Deployment {extra} left behind")
    copies = [
        c.metadata.name
        for c in core.list_namespaced_config_map(
            namespace, label_selector=f"canaryflow.io/release-id={plan.release_id}"
        ).items
        if bundle.CONFIG_BASE_LABEL in (c.metadata.labels or {})
    ]
    left = [
        c
        for c in copies
        if not (succeeded and c == f"{config_name(plan.target)}-{plan.release_id}")
    ]
    if left:
        problems.append(f"ConfigMap copies left behind: {left}")
    secrets = [
        s.metadata.name
        for s in core.list_namespaced_secret(namespace).items
        if s.metadata.name.startswith(plan.target + "-")
        and s.metadata.name.endswith("-canaryflow-bundle")
    ]
    if secrets:
        problems.append(f"restore point left behind: {secrets}")
    pods = core.list_namespaced_pod(namespace, label_selector=f"app={plan.target}").items
    tracks = {
        (p.metadata.labels or {}).get("canaryflow.io/track", "stable")
        for p in pods
        if p.metadata.deletion_timestamp is None
    }
    if tracks - {"stable"}:
        problems.append(f"pods of tracks {sorted(tracks)} left behind")
    return problems


def prometheus_problems(events: list[Envelope[Any]], outages: list[Fault]) -> list[str]:
    """A passing verdict whose queries' window overlaps a Prometheus outage (item 2)."""
    problems = []
    for envelope in events:
        data = envelope.data
        if not isinstance(data, AnalysisVerdict) or data.result is not VerdictResult.PASS:
            continue
        at = envelope.time.timestamp()
        for outage in outages:
            if at - WINDOW_SECONDS < outage.ended and at > outage.started:
                problems.append(
                    f"step {data.step.index} {'final ' if data.final else ''}pass at "
                    f"{at - outage.started:+.1f} s from a Prometheus outage of "
                    f"{outage.ended - outage.started:.1f} s: {data.reason[:160]}"
                )
    return problems


def duplicate_notes(notes: list[dict[str, Any]]) -> list[str]:
    """A notification for one event sent twice (same release, kind, event type and time)
    under different Idempotency-Keys, or without one: a repeat no receiver could drop."""
    counts: dict[tuple[str, ...], int] = {}
    for note in notes:
        key = tuple(str(note.get(k)) for k in ("releaseId", "kind", "eventType", "time"))
        counts[key] = counts.get(key, 0) + 1
    return [f"notification {key} sent {n} times" for key, n in counts.items() if n > 1]


# Events that need each part: the next one after the part is back is its recovery.
NEEDS: dict[str, tuple[type[EventData], ...]] = {
    "prometheus-stop": (AnalysisVerdict,),
    "apiserver-stop": (PhaseReached, PhaseFailed, PromotionCompleted, RollbackCompleted),
}


def measure_recovery(faults: list[Fault], events: dict[str, list[Envelope[Any]]]) -> None:
    """For each fault: from its end to the next event of a release in flight then (of the
    kinds that need the part that broke: a verdict after Prometheus, a Kubernetes write
    after the API server, anything after a kill or a NATS restart)."""
    for fault in faults:
        nexts = []
        for seen in events.values():
            if not seen:
                continue
            end = next((e for e in seen if isinstance(e.data, TERMINAL_EVENTS)), None)
            began = seen[0].time.timestamp()
            over = end.time.timestamp() if end is not None else float("inf")
            if not began <= fault.ended < over:
                continue
            fault.in_flight += 1
            wanted = NEEDS.get(fault.kind, (EventData,))
            after = [
                e.time.timestamp()
                for e in seen
                if e.time.timestamp() > fault.ended and isinstance(e.data, wanted)
            ]
            if after:
                nexts.append(min(after))
        if nexts:
            fault.recovery = min(nexts) - fault.ended


# --------------------------------------------------------------------------- the campaign


def table(reports: list[RunReport], options: CampaignOptions, seconds: float) -> str:
    faults = [f for r in reports for f in r.faults]
    releases = [(p, r.outcomes[p.release_id]) for r in reports for p in r.releases]
    violations = [v for r in reports for v in r.violations]
    lines = [
        f"== chaos campaign: seed {options.seed}, {len(reports)} run(s), "
        f"{options.replicas} replica(s) per service, {seconds:.0f} s",
        f"{'runs':<34}{len(reports)}",
        f"{'releases':<34}{len(releases)}",
    ]
    for tag, label in ((GOOD, "good"), (BAD, "bad")):
        ended: dict[str, int] = {}
        for plan, outcome in releases:
            if plan.tag == tag:
                ended[outcome] = ended.get(outcome, 0) + 1
        shown = ", ".join(f"{k} {v}" for k, v in sorted(ended.items())) or "-"
        lines.append(f"{'  ' + label + ' versions':<34}{sum(ended.values())} ({shown})")
        causes: dict[str, int] = {}
        for report in reports:
            for plan in report.releases:
                cause = report.causes.get(plan.release_id)
                if plan.tag == tag and cause is not None:
                    causes[cause] = causes.get(cause, 0) + 1
        if causes:
            why = ", ".join(f"{k} {v}" for k, v in sorted(causes.items()))
            lines.append(f"{'    rolled back because':<34}{why}")
    commands: dict[str, int] = {}
    for plan, _ in releases:
        if plan.command:
            commands[plan.command] = commands.get(plan.command, 0) + 1
    lines.append(
        f"{'  with an operator command':<34}"
        + (", ".join(f"{k} {v}" for k, v in sorted(commands.items())) or "0")
    )
    lines.append(f"{'notifications received':<34}{sum(r.notes for r in reports)}")
    # At least once: an executor killed between a receiver's answer and recording it sends
    # again (executor/ledger.py); the receiver drops the repeat by its Idempotency-Key.
    lines.append(f"{'  repeats dropped by their key':<34}{sum(r.repeats for r in reports)}")
    lines.append(f"{'faults':<34}{len(faults)}")
    lines.append(
        f"  {'kind':<20}{'count':>6}  {'outage p50/max':>16}  "
        f"{'recovery after end p50/max (n)':>32}"
    )
    for kind in KINDS:
        chosen = [f for f in faults if f.kind == kind]
        if not chosen:
            continue
        lengths = [f.ended - f.started for f in chosen]
        recovered = [f.recovery for f in chosen if f.recovery is not None]
        outage = f"{statistics.median(lengths):.1f}/{max(lengths):.1f} s"
        recovery = (
            f"{statistics.median(recovered):.2f}/{max(recovered):.2f} s ({len(recovered)})"
            if recovered
            else "- (0)"
        )
        lines.append(f"  {kind:<20}{len(chosen):>6}  {outage:>16}  {recovery:>32}")
    lines.append(f"{'invariant violations':<34}{len(violations)}")
    for report in reports:
        for violation in report.violations:
            lines.append(f"  run {report.index + 1} (--run-seed {report.seed}): {violation}")
    return "\n".join(lines)


def endpoints(stack: StackSettings) -> StackEndpoints:
    env_json = stack.env_json
    if not env_json.exists():
        raise SystemExit(f"chaos: no stack at {stack.state} (run `make stack-up`)")
    return StackEndpoints.from_env_json(env_json)


@contextlib.contextmanager
def thawed_on_exit() -> Iterator[None]:
    """A frozen server is woken up however the campaign ends (an error, Ctrl-C, SIGTERM)."""
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        thaw()
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        thaw()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


async def campaign(options: CampaignOptions, stack: StackSettings | None = None) -> list[RunReport]:
    """Run the campaign; prints each run as it goes and the table at the end."""
    stack = stack or StackSettings.from_env()
    options = fitted_to(options, stack.nats_nodes)
    found = endpoints(stack)
    api = kube_config.new_client_from_config(config_file=found.kubeconfig)
    shop.install_crd(api)
    nc = await nats.connect(
        nats_servers(found.nats_url),
        **found.nats_access().client_options(),
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        connect_timeout=5,
        error_cb=_quiet,  # a NATS restart is on purpose here: no traceback for each one
    )
    prefix = f"chaos_{uuid.uuid4().hex[:8]}"
    launcher = ServiceLauncher(
        found,
        prefix=prefix,
        log_dir=stack.state / "logs" / f"chaos-{prefix}",
        replicas=options.replicas,
    )
    receiver = Receiver()
    started = time.time()
    seeds = list(options.run_seeds)
    if not seeds:
        rng = random.Random(options.seed)
        seeds = [rng.randrange(2**31) for _ in range(options.runs)]
    print(
        f"chaos: seed {options.seed}, runs {seeds}, prefix {prefix}, logs {launcher.log_dir}",
        flush=True,
    )
    runner = Campaign(api, nc, launcher, stack, receiver, options)
    try:
        with thawed_on_exit():
            await asyncio.to_thread(launcher.start)
            for index, seed in enumerate(seeds):
                await runner.run(index, seed)
                if (index + 1) % TABLE_EVERY_RUNS == 0 and index + 1 < len(seeds):
                    # A long campaign cut short still leaves its figures so far.
                    print(table(runner.reports, options, time.time() - started), flush=True)
    finally:
        launcher.stop()
        receiver.close()
        with contextlib.suppress(Exception):  # NATS may be restarting right now
            await delete_jetstream_state(nc, prefix)
        await nc.drain()
        api.close()
    print(table(runner.reports, options, time.time() - started), flush=True)
    return runner.reports


async def _quiet(error: Exception) -> None:
    log.debug("nats: %r", error)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seed", type=int, default=None, help="default: random, printed")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--faults", type=int, default=8, help="faults per run, at most")
    parser.add_argument("--releases", type=int, nargs=2, default=(4, 6), metavar=("MIN", "MAX"))
    parser.add_argument("--replicas", type=int, default=2, help="replicas of each service")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument(
        "--run-seed", type=int, nargs="+", default=[], help="replay these runs (from a table)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    options = CampaignOptions(
        seed=seed,
        runs=args.runs,
        faults=args.faults,
        releases=(args.releases[0], args.releases[1]),
        replicas=args.replicas,
        kinds=tuple(args.kinds),
        run_seeds=tuple(args.run_seed),
    )
    reports = asyncio.run(campaign(options))
    return 1 if any(r.violations for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
