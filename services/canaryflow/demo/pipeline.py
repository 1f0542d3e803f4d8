"""The demo's pipeline: one version through test, staging and production, live.

Three namespaces, each with the sample shop on web:v1 and users of its own, and each with
its own ReleasePolicy: test one step that only a version which does not serve fails, staging
a short canary judged on the error rate, production the same behind a gate that only
``ops@shop`` may open. The demo asks for a pipeline the way a CI system would (one
``PipelineRequested`` naming the version once, as the requester identity) and, when it
waits at production's gate, opens the gate the way an operator would (``OpenPipelineGate``
as the operator identity). Every pipeline transition is printed as it happens, with the
main events of each environment's release beneath it.

The same artefact behaves the same everywhere: web:v3 fails 20 % of requests in test too,
and test's policy lets it pass (it serves); staging's stops it, and production is never
asked to run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from nats.aio.client import Client as NatsClient
from nats.js.api import DeliverPolicy

from canaryflow.cli import render
from canaryflow.demo import shop
from canaryflow.planner.pipelines import stage_id
from canaryflow.runtime import commands
from canaryflow_contracts import Envelope, EventData, Subjects
from canaryflow_contracts.events import (
    TERMINAL_EVENTS,
    AnalysisVerdict,
    OpenPipelineGate,
    OperatorCommandRefused,
    PhaseReached,
    PipelineEnvironment,
    PipelinePlanned,
    PipelineRequested,
    PipelineStatusChanged,
    PipelineStopped,
    PipelineSucceeded,
    PipelineTransition,
    PromotionCompleted,
    ReleaseFailed,
    ReleasePlanned,
    ReleaseRejected,
    ReleaseRolledBack,
    ReleaseSucceeded,
    RollbackCompleted,
    VersionSpec,
    parse_event,
)

ENVIRONMENTS = ("test", "staging", "production")
GATED = "production"
OPERATOR = "ops@shop"
REPLICAS = 4
USERS_PER_SECOND = 40.0
"""Users a second of each environment's own (straight to its pods, not through the gateway):
a 20 % canary then gets enough requests for the minimum sample within one 6 s step."""
GOOD = {"error_rate": 0.005, "latency_ms": {"median": 40, "p99": 120}}
BAD = {"error_rate": 0.2, "latency_ms": {"median": 40, "p99": 120}}
BEHAVIOUR = {"v1": GOOD, "v2": GOOD, "v3": BAD}
"""The same in every environment: an artefact behaves as it is, wherever it runs."""
PIPELINE_END = (PipelineSucceeded, PipelineStopped)
# What the demo shows of each environment's release (the whole release is in `watch <id>`).
STAGE_EVENTS: tuple[type[EventData], ...] = (
    ReleasePlanned,
    PhaseReached,
    PromotionCompleted,
    RollbackCompleted,
    OperatorCommandRefused,
    *TERMINAL_EVENTS,
)
_ENDED: dict[type[EventData], str] = {
    ReleaseSucceeded: "succeeded",
    ReleaseRolledBack: "rolled back",
    ReleaseFailed: "failed",
    ReleaseRejected: "rejected",
}


def namespaces(base: str) -> dict[str, str]:
    """Each environment's namespace: ``<base>-test``, ``<base>-staging``, ``<base>-production``."""
    return {env: f"{base}-{env}" for env in ENVIRONMENTS}


def policies() -> dict[str, dict[str, Any]]:
    """Each environment's ReleasePolicy spec: short, so the pipeline takes about a minute."""
    made: dict[str, dict[str, Any]] = {
        # Test only asks that the version serves: errors above half of the requests fail it.
        "test": shop.quick_policy(
            weights=(50,), hold_seconds=6, max_error_rate=0.5, max_p99_seconds=5.0, compare=False
        ),
        "staging": shop.quick_policy(
            weights=(20, 50), hold_seconds=6, max_p99_seconds=5.0, compare=False
        ),
        "production": shop.quick_policy(
            weights=(20, 50), hold_seconds=6, max_p99_seconds=5.0, compare=False
        ),
    }
    made[GATED]["operators"] = [{"subject": OPERATOR, "actions": ["open-gate", "pause", "abort"]}]
    return made


POLICY_LINES = (
    "test: 50% for 6 s; fails a version only if errors > 50% (does it serve?)",
    "staging: 20% -> 50%, 6 s each; error rate <= 5%",
    f"production: the same, behind a gate only {OPERATOR} may open",
)


def install(api: client.ApiClient, base: str, labels: dict[str, str] | None = None) -> None:
    """The three namespaces, each with the shop on web:v1, its users and its policy."""
    core = client.CoreV1Api(api)
    specs = policies()
    for env, namespace in namespaces(base).items():
        core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace, labels=labels))
        )
        shop.deploy(api, namespace, replicas=REPLICAS, rps=USERS_PER_SECOND)
        shop.set_behaviour(api, namespace, BEHAVIOUR)
        shop.apply_policy(api, namespace, specs[env])


def wait_ready(api: client.ApiClient, base: str, timeout: float = 90) -> None:
    """Until every environment's shop has all its pods Ready."""
    apps = client.AppsV1Api(api)
    deadline = time.monotonic() + timeout
    for namespace in namespaces(base).values():
        while True:
            web = apps.read_namespaced_deployment("web", namespace)
            if (web.status.ready_replicas or 0) == web.spec.replicas:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"web in {namespace} not Ready within {timeout:.0f}s")
            time.sleep(0.5)


def delete(api: client.ApiClient, base: str) -> None:
    core = client.CoreV1Api(api)
    for namespace in namespaces(base).values():
        with contextlib.suppress(ApiException):
            core.delete_namespace(namespace, propagation_policy="Background")


def image_in(api: client.ApiClient, namespace: str) -> str:
    """The image the environment's Deployment runs (its stable version)."""
    web = client.AppsV1Api(api).read_namespaced_deployment("web", namespace)
    image: str = web.spec.template.spec.containers[0].image
    return image


@dataclass
class PipelineOutcome:
    pipeline_id: str
    image: str
    result: str
    """``succeeded``, ``stopped`` or ``timed out``."""
    seconds: float
    environments: dict[str, str] = field(default_factory=dict)
    """What each environment's release came to (``not started`` when it never began)."""
    stopped_in: str = ""
    reasons: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    gate: str = ""
    """The planner's word on production's gate, once opened."""
    running: dict[str, str] = field(default_factory=dict)
    """The image each environment's Deployment runs once the pipeline ended."""
    production_events: int = 0
    """Events of production's release: 0 when production was never asked for anything."""

    def lines(self) -> list[str]:
        walked = "  ".join(f"{env} {self.environments.get(env, '?')}" for env in ENVIRONMENTS)
        head = f"   {self.pipeline_id}  {self.image:<34} {self.result:<12} {self.seconds:5.1f}s"
        out = [f"{head}  {walked}"]
        if self.stopped_in:
            out.append(f"      stopped in {self.stopped_in}: {'; '.join(self.reasons)}")
        out += [f"      evidence: {item}" for item in self.evidence]
        if self.gate:
            out.append(f"      {self.gate}")
        running = ", ".join(f"{env} {self.running.get(env, '?')}" for env in ENVIRONMENTS)
        out.append(f"      now running: {running}")
        if self.production_events == 0:
            out.append(f"      {GATED} never touched: no release was requested there")
        return out


def _environment_of(release_id: str, pipeline_id: str) -> str:
    for index, env in enumerate(ENVIRONMENTS):
        if release_id == stage_id(pipeline_id, index):
            return env
    return ""


def _pipeline_line(envelope: Envelope[Any]) -> str:
    data = envelope.data
    stamp = envelope.time.strftime("%H:%M:%S")
    match data:
        case PipelineRequested():
            text = f"pipeline requested by {data.requested_by}: {data.version.image}"
        case OpenPipelineGate():
            text = f"{data.actor} asks: open the gate before {data.environment} ({data.reason})"
        case PipelinePlanned():
            text = f"pipeline planned: {data.version.image} through {' -> '.join(ENVIRONMENTS)}"
        case PipelineStatusChanged():
            text = f"pipeline: {data.status.value.replace('_', ' ')}: {data.detail}"
        case PipelineSucceeded():
            text = f"PIPELINE SUCCEEDED: {data.summary}"
        case PipelineStopped():
            where = f" in {data.environment}" if data.environment else " (refused)"
            text = f"PIPELINE STOPPED{where}: {'; '.join(data.reasons)}"
        case _:
            text = envelope.type.removeprefix("io.canaryflow.")
    return f"{stamp}  {text}"


async def run_pipeline(
    requester: NatsClient,
    operator: NatsClient,
    subjects: Subjects,
    *,
    api: client.ApiClient,
    base: str,
    pipeline_id: str,
    image: str,
    give_up_after: float = 300,
) -> PipelineOutcome:
    """Request the pipeline of ``image`` through the three environments of ``base``, print
    its transitions and its environments' main events as they come, open production's gate
    as ``ops@shop`` when it waits there, and say where the version ended."""
    where = namespaces(base)
    js = requester.jetstream()
    queue: asyncio.Queue[Envelope[Any]] = asyncio.Queue()

    async def take(msg: Any) -> None:
        with contextlib.suppress(ValueError):
            await queue.put(parse_event(msg.data))

    ids = [pipeline_id, *(stage_id(pipeline_id, i) for i in range(len(ENVIRONMENTS)))]
    subscriptions = [
        await js.subscribe(
            subjects.release(subject),
            cb=take,
            stream=subjects.events_stream.name,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        for subject in ids
    ]
    request = PipelineRequested(
        target="web",
        version=VersionSpec(image=image),
        environments=[
            PipelineEnvironment(name=env, namespace=where[env], gate=env == GATED)
            for env in ENVIRONMENTS
        ],
        requested_by="make-demo",
        reason="demo",
    )
    await commands.publish(
        requester, subjects, commands.envelope_for(request, pipeline_id, "canaryflow/demo")
    )
    through = ", ".join(where.values())
    print(f"   requested pipeline {pipeline_id}: web -> {image}  (through {through})")
    started = time.monotonic()
    outcome = PipelineOutcome(pipeline_id=pipeline_id, image=image, result="timed out", seconds=0)
    ended: dict[str, str] = {}
    final: Envelope[Any] | None = None
    deadline = started + give_up_after
    try:
        while time.monotonic() < deadline:
            # After the pipeline's end, a moment more for its environments' last events.
            wait = deadline - time.monotonic() if final is None else 2.0
            try:
                event = await asyncio.wait_for(queue.get(), timeout=max(wait, 0.1))
            except TimeoutError:
                if final is not None:
                    break
                continue
            data = event.data
            if event.subject == pipeline_id:
                print(_pipeline_line(event), flush=True)
                if isinstance(data, PIPELINE_END):
                    final = event
                elif (
                    isinstance(data, PipelineStatusChanged)
                    and data.status is PipelineTransition.GATE_WAITING
                ):
                    await _open_gate(operator, subjects, pipeline_id, data.environment)
                elif (
                    isinstance(data, PipelineStatusChanged)
                    and data.status is PipelineTransition.GATE_OPENED
                ):
                    outcome.gate = data.detail
                continue
            env = _environment_of(event.subject, pipeline_id)
            if env == GATED:
                outcome.production_events += 1
            if type(data) in _ENDED:
                ended[env] = _ENDED[type(data)]
            if isinstance(data, STAGE_EVENTS) or (isinstance(data, AnalysisVerdict) and data.final):
                # A verdict's head, and its failed checks (the passing ones are in `watch`).
                head, *rest = render.event_line(event)
                for line in [head, *(line for line in rest if "FAILED" in line)]:
                    print(f"   [{env}] {line}", flush=True)
    finally:
        for subscription in subscriptions:
            await subscription.unsubscribe()
    outcome.seconds = time.monotonic() - started
    outcome.environments = {env: ended.get(env, "not started") for env in ENVIRONMENTS}
    outcome.running = {env: image_in(api, where[env]).rsplit("/", 1)[-1] for env in ENVIRONMENTS}
    if final is not None:
        outcome.result = final.type.split(".")[-2]
        if isinstance(final.data, PipelineStopped):
            outcome.stopped_in = final.data.environment
            outcome.reasons = list(final.data.reasons)
            outcome.evidence = [
                f"{c.metric}={c.value:.3g} (limit {c.threshold:g})"
                for c in final.data.evidence
                if c.passed is False and c.value is not None and c.threshold is not None
            ]
    return outcome


async def _open_gate(
    operator: NatsClient, subjects: Subjects, pipeline_id: str, environment: str
) -> None:
    """What an operator does after looking at staging: open the gate, saying why."""
    command = OpenPipelineGate(
        actor=OPERATOR, environment=environment, reason="staging looks good (demo)"
    )
    await commands.publish(
        operator, subjects, commands.envelope_for(command, pipeline_id, "canaryflow/demo")
    )
    print(
        f"   operator {OPERATOR} opens the gate before {environment} "
        "(OpenPipelineGate, as the operator identity)",
        flush=True,
    )
