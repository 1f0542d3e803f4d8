"""``make demo``: one good release promoted and one bad release rolled back, then a good
and a bad version through a test -> staging -> production pipeline, live.

Runs on the local stack (``make stack-up`` has started it), inside its network namespace
(``make demo`` runs it there): puts the sample shop into a fresh namespace, sends real users to
it through the gateway (Traefik), starts the four services as separate processes, and requests
two releases the way any system would, over NATS. Every event is printed as it happens, and
every few seconds what users behind the gateway got and what Traefik routed (``gateway.py``).
Then two pipelines (``pipeline.py``) through three more namespaces: the good version walks
test, staging and production (the demo opens production's gate as an operator), the bad one
stops in staging and production is never asked to run it. A summary ends the run with the
split, the sticky sessions and the rollback as users saw them, and where each pipeline's
version ended.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import nats
from kubernetes import client, config
from nats.aio.client import Client as NatsClient

from canaryflow.cli import render
from canaryflow.cli.main import follow_release, jaeger_ui, print_event
from canaryflow.demo import pipeline, shop
from canaryflow.demo.gateway import GatewayView, Window
from canaryflow.demo.launcher import LaunchError, ServiceLauncher, StackEndpoints
from canaryflow.runtime.settings import nats_servers
from canaryflow_contracts import MESSAGE_ID_HEADER, Envelope, Subjects
from canaryflow_contracts.events import (
    AnalysisVerdict,
    PhaseReached,
    ReleaseRequested,
    ReleaseRolledBack,
    RollbackCompleted,
    TargetRef,
    VersionSpec,
)

REPO = Path(__file__).resolve().parents[3]
STACK_ENV = REPO / ".stack" / "env.json"
USERS_PER_SECOND = 40.0
"""New users a second through the gateway, 2-5 requests each: a 10 % canary then gets enough
requests for the quick policy's minimum sample within one short step."""
REPORT_SECONDS = 6.0
PIPELINES = (
    ("v2", "through test, staging and production — expect it everywhere"),
    ("v3", "(fails 20 % of requests) — expect it to stop in staging"),
)


@dataclass
class Outcome:
    release_id: str
    image: str
    result: str
    seconds: float
    steps_reached: list[int]
    restore_seconds: float | None
    evidence: list[str]
    users: Window
    """What users behind the gateway saw during the release."""
    gateway: str
    """Traefik's figures over the release."""


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _wait_for_pods(api: client.ApiClient, namespace: str, name: str, timeout: float) -> None:
    apps = client.AppsV1Api(api)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deployment = apps.read_namespaced_deployment(name, namespace)
        ready = deployment.status.ready_replicas or 0
        if ready == deployment.spec.replicas:
            print(f"   {ready}/{deployment.spec.replicas} pods of {name} Ready")
            return
        time.sleep(0.5)
    raise TimeoutError(f"{name} in {namespace} not Ready within {timeout:.0f}s")


async def _release(
    nc: NatsClient, subjects: Subjects, namespace: str, image: str, view: GatewayView
) -> Outcome:
    release_id = f"web-{uuid.uuid4().hex[:6]}"
    envelope = Envelope.wrap(
        ReleaseRequested(
            target=TargetRef(namespace=namespace, name="web"),
            version=VersionSpec(image=image),
            requested_by="make-demo",
            reason="demo",
        ),
        release_id=release_id,
        source="canaryflow/demo",
    )
    await nc.jetstream().publish(
        subjects.of(ReleaseRequested, release_id),
        envelope.model_dump_json().encode(),
        headers={MESSAGE_ID_HEADER: envelope.id},
    )
    print(f"   requested {release_id}: web -> {image}  (canaryflow watch {release_id})")
    started = time.monotonic()
    before = view.snapshot()
    seen: list[Envelope[Any]] = []

    def show(event: Envelope[Any]) -> None:
        seen.append(event)
        # Non-final verdicts arrive every tick: show the final ones and failures only.
        if isinstance(event.data, AnalysisVerdict) and not event.data.final:
            return
        print_event(event)

    def show_trace(traceparent: str) -> None:
        if link := render.trace_link(traceparent, jaeger_ui()):
            print(f"   trace in Jaeger: {link}", flush=True)

    final = await follow_release(
        nc, subjects, release_id, show, give_up_after=300, on_trace=show_trace
    )
    restore = next(
        (e.data.seconds_to_restore for e in seen if isinstance(e.data, RollbackCompleted)), None
    )
    evidence = []
    if final is not None and isinstance(final.data, ReleaseRolledBack):
        evidence = [
            f"{c.metric}={c.value:.3g} (limit {c.threshold:g})"
            for c in final.data.evidence
            if c.passed is False and c.value is not None and c.threshold is not None
        ]
    seconds = time.monotonic() - started
    return Outcome(
        users=Window.between(before, view.snapshot()),
        gateway=await view.gateway_line(seconds),
        release_id=release_id,
        image=image,
        result="timed out" if final is None else final.type.split(".")[-2],
        seconds=seconds,
        steps_reached=[e.data.step.weight for e in seen if isinstance(e.data, PhaseReached)],
        restore_seconds=restore,
        evidence=evidence,
    )


def _summary(outcomes: list[Outcome], pipelines: list[pipeline.PipelineOutcome]) -> None:
    _say("summary")
    for o in outcomes:
        steps = " -> ".join(f"{w}%" for w in o.steps_reached) or "none"
        line = f"   {o.release_id}  {o.image:<34} {o.result:<12} {o.seconds:5.1f}s  steps {steps}"
        if o.restore_seconds is not None:
            line += f"  restored in {o.restore_seconds:.1f}s"
        print(line)
        for item in o.evidence:
            print(f"      evidence: {item}")
        print(f"      users via gateway: {o.users.line()}")
        print(f"      gateway over the release: {o.gateway}")
    if pipelines:
        print("   pipelines (test -> staging -> production):")
    for p in pipelines:
        print("\n".join(p.lines()))


async def _run(endpoints: StackEndpoints, gateway_url: str, keep_namespace: bool) -> int:
    api = config.new_client_from_config(config_file=endpoints.kubeconfig)
    namespace = f"demo-{datetime.now().strftime('%H%M%S')}"
    _say(
        f"the sample shop in namespace {namespace}: 10 pods of web:v1; {USERS_PER_SECOND:g} new "
        f"users a second through the gateway (Traefik), each pinned to a pod by a cookie"
    )
    shop.install_crd(api)
    client.CoreV1Api(api).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
    )
    shop.deploy(api, namespace, rps=0)  # every user comes through the gateway
    view = GatewayView(api, namespace, gateway_url, endpoints.prometheus_url, USERS_PER_SECOND)
    view.route()
    shop.set_behaviour(
        api,
        namespace,
        {
            "v1": {"error_rate": 0.005, "latency_ms": {"median": 40, "p99": 120}},
            "v2": {"error_rate": 0.004, "latency_ms": {"median": 38, "p99": 110}},
            "v3": {"error_rate": 0.2, "latency_ms": {"median": 40, "p99": 120}},
        },
    )
    shop.apply_policy(api, namespace, shop.quick_policy())
    print("   policy: 10% -> 30% -> 50%, 8 s each; error rate <= 5%, p99 <= 1 s")
    _wait_for_pods(api, namespace, "web", 60)

    _say("starting planner, executor, metrics-watcher and rollback (one process each)")
    launcher = ServiceLauncher(endpoints, prefix="canaryflow", log_dir=REPO / ".stack" / "logs")
    try:
        launcher.start()
    except LaunchError as error:
        print(f"demo: {error}", file=sys.stderr)
        launcher.stop()
        return 1
    print(f"   logs in {REPO / '.stack' / 'logs'}")
    # The demo asks for releases as another system would: the requester identity, which may
    # publish release requests and read events, nothing else.
    nc = await nats.connect(
        nats_servers(endpoints.nats_url), **endpoints.nats_access("requester").client_options()
    )
    # Production's gate is opened as a person would: the operator identity.
    operator = await nats.connect(
        nats_servers(endpoints.nats_url), **endpoints.nats_access("operator").client_options()
    )
    subjects = Subjects("canaryflow")
    outcomes = []
    pipelines: list[pipeline.PipelineOutcome] = []
    view.start()
    reports = asyncio.create_task(view.report_every(REPORT_SECONDS))
    try:
        _say("release 1: web:v2, as good as v1 — expect promotion")
        outcomes.append(await _release(nc, subjects, namespace, shop.image("v2"), view))
        _say("release 2: web:v3, which fails 20 % of requests — expect rollback")
        outcomes.append(await _release(nc, subjects, namespace, shop.image("v3"), view))
        reports.cancel()  # the gateway's users are done: the pipelines' users are their own
        await view.stop()
        pipelines = await _pipelines(nc, operator, subjects, api, namespace)
        _summary(outcomes, pipelines)
    finally:
        reports.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reports
        await view.stop()
        await nc.drain()
        await operator.drain()
        launcher.stop()
        if not keep_namespace:
            client.CoreV1Api(api).delete_namespace(namespace)
            pipeline.delete(api, namespace)
    expected = ["succeeded", "rolled_back"]
    releases_ok = [o.result for o in outcomes] == expected
    return 0 if releases_ok and _pipelines_as_expected(pipelines) else 1


async def _pipelines(
    nc: NatsClient,
    operator: NatsClient,
    subjects: Subjects,
    api: client.ApiClient,
    base: str,
) -> list[pipeline.PipelineOutcome]:
    where = pipeline.namespaces(base)
    _say(
        f"a pipeline: namespaces {', '.join(where.values())}, each with {pipeline.REPLICAS} pods "
        f"of web:v1 and {pipeline.USERS_PER_SECOND:g} users a second of its own"
    )
    pipeline.install(api, base)
    for line in pipeline.POLICY_LINES:
        print(f"   {line}")
    await asyncio.to_thread(pipeline.wait_ready, api, base)
    print(f"   {pipeline.REPLICAS} pods of web Ready in each")
    found = []
    stamp = datetime.now().strftime("%H%M%S")
    for number, (tag, expect) in enumerate(PIPELINES, start=1):
        _say(f"pipeline {number}: web:{tag} {expect}")
        found.append(
            await pipeline.run_pipeline(
                nc,
                operator,
                subjects,
                api=api,
                base=base,
                pipeline_id=f"web-{tag}-{stamp}",
                image=shop.image(tag),
            )
        )
    return found


def _pipelines_as_expected(found: list[pipeline.PipelineOutcome]) -> bool:
    if len(found) != 2:
        return False
    good, bad = found
    return (
        good.result == "succeeded"
        and set(good.environments.values()) == {"succeeded"}
        and bad.result == "stopped"
        and bad.stopped_in == "staging"
        and bad.production_events == 0
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="canaryflow.demo", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the demo namespace")
    args = parser.parse_args()
    if not STACK_ENV.exists():
        print(
            "demo: the local stack is not up; run `make stack-up` (make demo does)", file=sys.stderr
        )
        sys.exit(1)
    endpoints = StackEndpoints.from_env_json(STACK_ENV)
    gateway_url = json.loads(STACK_ENV.read_text()).get("GATEWAY_URL", "")
    if not gateway_url:
        print("demo: the stack runs no gateway (an external cluster?)", file=sys.stderr)
        sys.exit(1)
    sys.exit(asyncio.run(_run(endpoints, gateway_url, args.keep)))


main()
