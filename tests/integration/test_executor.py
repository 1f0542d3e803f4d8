"""The executor on the real stack: commands over JetStream, Deployments through the API.

Given a plain Deployment (pods made Ready by KWOK) under a ReleasePolicy, when the release's
state is written and ApplyPhase and RequestPromotion commands are published the way the
planner does both, then the executor, running in-process, puts each step in place and
reports it only once the API shows it, promotes, and cleans up; a replayed command changes
nothing; a canary whose pods never become Ready, and a target of one replica, are reported as
failed steps; a command the release's state does not ask for is refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from kubernetes import client
from nats.aio.client import Client as NatsClient
from prometheus_client import REGISTRY
from tests.integration.release_support import (
    StreamEvents,
    container_of,
    counting_deployment_reads,
    create_and_wait,
    deployment_body,
    env_of,
    govern,
    image,
    put_state,
    read,
    release_state,
    running,
    service_settings,
)
from tests.support import StackEnv, async_wait_until

from canaryflow.demo.faults import ready_pods_by_track
from canaryflow.executor.app import SERVICE_NAME, build_service
from canaryflow.runtime import conventions
from canaryflow.runtime.service import Service
from canaryflow_contracts import Envelope
from canaryflow_contracts.events import (
    ApplyPhase,
    CommandRefused,
    EnvVar,
    PhaseFailed,
    PhaseReached,
    PlannedStep,
    PromotionCompleted,
    RequestPromotion,
    TargetRef,
    VersionSpec,
)
from canaryflow_contracts.policy import GROUP, PLURAL, VERSION
from canaryflow_contracts.state import ReleaseStatus

pytestmark = pytest.mark.stack

NAME = "web"
FULL_SIZE = 4
V2 = VersionSpec(image=image("v2"), env=[EnvVar(name="CHECKOUT_LAYOUT", value="new")])


@pytest.fixture
async def executor(stack: StackEnv, stream_prefix: str) -> AsyncIterator[Service]:
    settings = service_settings(stack, stream_prefix, SERVICE_NAME)
    async with running(build_service(settings)) as service:
        yield service


@pytest.fixture
def events(executor: Service, nats_client: NatsClient) -> StreamEvents:
    return StreamEvents(nats_client, executor.settings.subjects)


STEP0 = PlannedStep(index=0, weight=25, hold_seconds=30)
STEP1 = PlannedStep(index=1, weight=50, hold_seconds=30)


async def stable_web(kube: client.ApiClient, namespace: str, replicas: int = FULL_SIZE) -> None:
    govern(kube, namespace, NAME)
    body = deployment_body(namespace, NAME, replicas, "v1", {"CHECKOUT_LAYOUT": "classic"})
    await create_and_wait(kube, body)


async def applying(
    events: StreamEvents,
    namespace: str,
    rid: str,
    step: PlannedStep,
    version: VersionSpec,
    *,
    seconds: float,
    status: ReleaseStatus = ReleaseStatus.APPLYING,
) -> ApplyPhase:
    """Store the release at ``step`` with a fresh deadline, as the planner does before it
    publishes the step; the ApplyPhase it publishes for that state."""
    steps = [*[STEP0, STEP1][: step.index], step]
    started = datetime.now(UTC)
    deadline = started + timedelta(seconds=seconds)
    target = TargetRef(namespace=namespace, name=NAME)
    # The step's start with its deadline: the executor gives a step it takes up late the
    # window between the two from then (decisions.step_deadline).
    state = release_state(rid, target, version, steps, status).model_copy(
        update={"step_index": step.index, "phase_started_at": started, "ready_deadline": deadline}
    )
    await put_state(events, state)
    return ApplyPhase(target=target, version=version, step=step, ready_deadline=deadline)


async def promoting(events: StreamEvents, namespace: str, rid: str) -> RequestPromotion:
    target = TargetRef(namespace=namespace, name=NAME)
    state = release_state(rid, target, V2, [STEP0, STEP1], ReleaseStatus.PROMOTING)
    await put_state(events, state.model_copy(update={"step_index": 1}))
    return RequestPromotion(target=target, version=V2)


async def apply_step(
    executor: Service, events: StreamEvents, namespace: str, rid: str, step: PlannedStep
) -> tuple[ApplyPhase, Envelope[PhaseReached], float]:
    """Publish the step's ApplyPhase as the planner does; its PhaseReached and how long."""
    started = time.monotonic()
    command = await applying(events, namespace, rid, step, V2, seconds=60)
    await events.publish(command, rid, f"{rid}.apply.{step.index}")
    reached = await events.wait_for(
        PhaseReached, rid, timeout=60, event_id=f"{rid}.reached.{step.index}"
    )
    return command, reached, time.monotonic() - started


def release_id() -> str:
    return f"web-{uuid.uuid4().hex[:8]}"


def generation(kube: client.ApiClient, namespace: str, name: str) -> int:
    body = read(kube, namespace, name)
    assert body is not None
    return int(body["metadata"]["generation"])


async def test_steps_are_reported_in_place_then_promoted(
    executor: Service, events: StreamEvents, kube: client.ApiClient, namespace: str
) -> None:
    # Given a stable Deployment of 4 Ready pods
    await stable_web(kube, namespace)
    original = read(kube, namespace, NAME)
    assert original is not None
    rid = release_id()

    # When step 0 (25 %) is applied
    _, reached, step0_seconds = await apply_step(executor, events, namespace, rid, STEP0)

    # Then it is reported with the weight the Ready pods give, and the API agrees: the live
    # baseline (the stable version on fresh pods, as many as the canary) comes out of stable
    assert (reached.data.canary_ready, reached.data.baseline_ready, reached.data.stable_ready) == (
        1,
        1,
        2,
    )
    assert reached.data.canary_weight == 25.0
    assert reached.data.step == STEP0
    canary = read(kube, namespace, f"{NAME}-canary")
    assert canary is not None
    assert container_of(canary)["image"] == V2.image
    assert env_of(canary) == {"CHECKOUT_LAYOUT": "new"}
    assert canary["metadata"]["labels"][conventions.TRACK_LABEL] == "canary"
    assert canary["metadata"]["labels"][conventions.RELEASE_LABEL] == rid
    assert canary["spec"]["selector"]["matchLabels"] == {
        "app": NAME,
        conventions.TRACK_LABEL: "canary",
    }
    assert (canary["status"]["readyReplicas"], canary["spec"]["replicas"]) == (1, 1)
    stable = read(kube, namespace, NAME)
    assert stable is not None
    assert (stable["spec"]["replicas"], stable["status"]["readyReplicas"]) == (2, 2)
    assert container_of(stable)["image"] == image("v1")
    baseline = read(kube, namespace, f"{NAME}-baseline")
    assert baseline is not None and container_of(baseline)["image"] == image("v1")
    assert baseline["metadata"]["labels"][conventions.TRACK_LABEL] == "baseline"
    annotations = stable["metadata"]["annotations"]
    assert annotations[conventions.STABLE_REPLICAS_ANNOTATION] == str(FULL_SIZE)
    assert annotations[conventions.RELEASE_ANNOTATION] == rid
    recorded = json.loads(annotations[conventions.RESTORE_TEMPLATE_ANNOTATION])
    assert recorded == original["spec"]["template"]
    # The target's Service (selector app=web) spreads traffic over both tracks.
    assert ready_pods_by_track(kube, namespace, f"app={NAME}") == {
        "stable": 2,
        "canary": 1,
        "baseline": 1,
    }

    # When step 1 (50 %) is applied, and then applied again (a replay, new envelope id)
    command, reached, step1_seconds = await apply_step(executor, events, namespace, rid, STEP1)
    # 50 % of 4 pods: 2 canary, and stable keeps one pod besides a baseline of one
    assert (reached.data.canary_ready, reached.data.baseline_ready, reached.data.stable_ready) == (
        2,
        1,
        1,
    )
    assert reached.data.canary_weight == 50.0
    generations = (generation(kube, namespace, NAME), generation(kube, namespace, f"{NAME}-canary"))
    await events.publish(command, rid, f"{rid}.apply.1.replay")
    await events.handled_everything(executor, "apply", timeout=30)

    # Then the replay wrote nothing and its report was stored once
    assert (
        generation(kube, namespace, NAME),
        generation(kube, namespace, f"{NAME}-canary"),
    ) == generations
    assert await events.count(PhaseReached, rid) == 2  # step 0 and step 1, once each

    # When the release is promoted
    started = time.monotonic()
    promotion = await promoting(events, namespace, rid)
    await events.publish(promotion, rid, f"{rid}.promote")
    completed = await events.wait_for(PromotionCompleted, rid, timeout=60)
    promotion_seconds = time.monotonic() - started

    # Then stable runs the new version (and its env) at full size, and no canary is left
    assert completed.id == f"{rid}.promoted"
    assert completed.data.image == V2.image
    stable = read(kube, namespace, NAME)
    assert stable is not None
    assert container_of(stable)["image"] == V2.image
    assert env_of(stable) == {"CHECKOUT_LAYOUT": "new"}
    assert (stable["spec"]["replicas"], stable["status"]["readyReplicas"]) == (4, 4)
    assert stable["status"]["updatedReplicas"] == 4
    for key in conventions.RESTORE_ANNOTATIONS:
        assert key not in (stable["metadata"].get("annotations") or {})
    assert read(kube, namespace, f"{NAME}-canary") is None
    assert read(kube, namespace, f"{NAME}-baseline") is None
    assert ready_pods_by_track(kube, namespace, f"app={NAME}") == {"stable": 4}

    # And a replayed promotion changes nothing and is reported once
    before = generation(kube, namespace, NAME)
    await events.publish(promotion, rid, f"{rid}.promote.r1")
    await events.handled_everything(executor, "promote", timeout=30)
    assert generation(kube, namespace, NAME) == before
    assert await events.count(PromotionCompleted, rid) == 1
    assert await events.dead_letters() == 0
    print(
        f"\nMEASURE executor: step0 {step0_seconds:.2f}s, step1 {step1_seconds:.2f}s, "
        f"promotion {promotion_seconds:.2f}s (publish to report stored)"
    )


async def test_a_canary_that_never_becomes_ready_fails_at_its_deadline(
    executor: Service, events: StreamEvents, kube: client.ApiClient, namespace: str
) -> None:
    await stable_web(kube, namespace)
    rid = release_id()
    deadline_seconds = 3.0
    broken = VersionSpec(image=image("v2-never-ready"))

    command = await applying(events, namespace, rid, STEP0, broken, seconds=3)
    await events.publish(command, rid, f"{rid}.apply.0")
    failed = await events.wait_for(PhaseFailed, rid, timeout=30)

    assert failed.id == f"{rid}.failed.0"
    assert failed.time >= command.ready_deadline
    assert (failed.time - command.ready_deadline).total_seconds() < deadline_seconds
    assert "canary pods not in place by the deadline" in failed.data.reason
    assert "canary 0/1 ready" in failed.data.reason
    # Stable gave up no pod (the canary never became Ready) and kept its restore point.
    stable = read(kube, namespace, NAME)
    assert stable is not None
    assert (stable["spec"]["replicas"], stable["status"]["readyReplicas"]) == (4, 4)
    assert stable["metadata"]["annotations"][conventions.RELEASE_ANNOTATION] == rid
    assert await events.count(PhaseReached, rid) == 0


async def test_a_steps_waits_read_the_watched_copy_not_the_api(
    executor: Service, events: StreamEvents, kube: client.ApiClient, namespace: str
) -> None:
    """The waits of a step that takes seconds cost the API server no read (deployment_watch):
    polled, they read three Deployments at 0.1, 0.2, 0.4, 0.8, 1.6 s and every 2 s after."""
    await stable_web(kube, namespace)
    rid = release_id()
    with counting_deployment_reads() as reads:
        # A canary that never becomes Ready: its step waits the whole 4 s to its deadline.
        broken = VersionSpec(image=image("v2-never-ready"))
        command = await applying(events, namespace, rid, STEP0, broken, seconds=4)
        await events.publish(command, rid, f"{rid}.apply.0")
        failed = await events.wait_for(PhaseFailed, rid, timeout=30)

    assert "canary 0/1 ready" in failed.data.reason
    # The copy answered every look (three Deployments each); the API was read only where a
    # write is decided (the step's writes, before the wait).
    assert reads.from_copy.total() >= 3 * 3, reads
    assert reads.from_api[f"{NAME}-canary"] <= 1, reads


async def test_a_single_replica_target_cannot_be_split(
    executor: Service, events: StreamEvents, kube: client.ApiClient, namespace: str
) -> None:
    await stable_web(kube, namespace, replicas=1)
    rid = release_id()

    step = PlannedStep(index=0, weight=10, hold_seconds=30)
    await events.publish(await applying(events, namespace, rid, step, V2, seconds=30), rid)
    failed = await events.wait_for(PhaseFailed, rid, timeout=30)

    assert "at least 2 replicas" in failed.data.reason
    assert read(kube, namespace, f"{NAME}-canary") is None
    stable = read(kube, namespace, NAME)
    assert stable is not None
    assert conventions.STABLE_REPLICAS_ANNOTATION not in (
        stable["metadata"].get("annotations") or {}
    )


async def test_a_command_for_a_release_that_is_rolling_back_is_refused(
    executor: Service, events: StreamEvents, kube: client.ApiClient, namespace: str
) -> None:
    await stable_web(kube, namespace)
    rid = release_id()
    command = await applying(
        events, namespace, rid, STEP0, V2, seconds=30, status=ReleaseStatus.ROLLING_BACK
    )

    await events.publish(command, rid, f"{rid}.apply.0")
    refused = await events.wait_for(CommandRefused, rid, timeout=30)

    assert refused.data.command == ApplyPhase.event_type()
    assert refused.data.command_id == f"{rid}.apply.0"
    assert refused.data.checks == ["status"]
    assert "is rolling_back; phase.apply is obeyed only while" in refused.data.reasons[0]
    assert read(kube, namespace, f"{NAME}-canary") is None
    assert await events.count(PhaseReached, rid) == 0
    assert await events.count(PhaseFailed, rid) == 0


def _refusals_counted(command: str, check: str) -> float:
    """canaryflow_commands_refused_total of the executor for one command and check."""
    labels = {"service": SERVICE_NAME, "command": command, "check": check}
    return REGISTRY.get_sample_value("canaryflow_commands_refused_total", labels) or 0.0


async def test_a_command_for_a_target_without_a_policy_is_refused(
    executor: Service,
    events: StreamEvents,
    kube: client.ApiClient,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a live release of web whose ReleasePolicy has been deleted
    await stable_web(kube, namespace)
    await asyncio.to_thread(
        client.CustomObjectsApi(kube).delete_namespaced_custom_object,
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        NAME,
    )
    rid = release_id()
    command = await applying(events, namespace, rid, STEP0, V2, seconds=30)

    counted = _refusals_counted(ApplyPhase.event_type(), "policy")

    # When the planner's own command for it arrives
    with caplog.at_level(logging.WARNING, logger="canaryflow"):
        await events.publish(command, rid, f"{rid}.apply.0")
        refused = await events.wait_for(CommandRefused, rid, timeout=30)

    # Then the cluster's word wins: nothing is written to a target no policy governs
    assert refused.data.checks == ["policy"]
    # ... and the refusal is counted and logged as a warning naming the command
    assert _refusals_counted(ApplyPhase.event_type(), "policy") == counted + 1
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"{rid}.apply.0" in m and "no ReleasePolicy" in m for m in warned), warned
    assert (
        f"no ReleasePolicy in namespace {namespace} has targetRef 'web'"
        in (refused.data.reasons[0])
    )
    assert read(kube, namespace, f"{NAME}-canary") is None
    stable = read(kube, namespace, NAME)
    assert stable is not None
    assert conventions.RELEASE_ANNOTATION not in (stable["metadata"].get("annotations") or {})


async def test_a_step_writes_nothing_once_the_rollback_service_has_taken_stable_over(
    executor: Service, events: StreamEvents, kube: client.ApiClient, namespace: str
) -> None:
    """Found by ``make chaos``: an abort during step 0; the rollback found stable whole and
    cleared its restore point, and the executor, still putting the step in place, scaled
    stable down in between: 2 of 3 pods, and nothing left to say so. The rollback now marks
    stable first (under its resourceVersion), and the executor writes nothing to it after."""
    # Given a release whose restore point stable carries, marked by the rollback service
    await stable_web(kube, namespace)
    rid = release_id()
    stable = read(kube, namespace, NAME)
    assert stable is not None
    point = conventions.RestorePoint(rid, FULL_SIZE, stable["spec"]["template"])
    marked = {**point.annotations(), conventions.ROLLING_BACK_ANNOTATION: rid}
    apps = client.AppsV1Api(kube)
    patch = {"metadata": {"annotations": marked}}
    await asyncio.to_thread(apps.patch_namespaced_deployment, NAME, namespace, patch)

    # When the step's command is handled (the planner's state still says "applying")
    command = await applying(
        events, namespace, rid, STEP0, VersionSpec(image=image("v2")), seconds=60
    )
    await events.publish(command, rid, f"{rid}.apply.0")
    await events.handled_everything(executor, "apply", timeout=60)

    # Then stable is left as the rollback put it, and no canary or baseline is made
    after = read(kube, namespace, NAME)
    assert after is not None and after["spec"]["replicas"] == FULL_SIZE
    assert read(kube, namespace, f"{NAME}-canary") is None
    assert read(kube, namespace, f"{NAME}-baseline") is None
    assert await events.count(PhaseReached, rid) == 0


async def test_a_step_stops_when_the_target_is_restored_under_it(
    executor: Service, events: StreamEvents, kube: client.ApiClient, namespace: str
) -> None:
    # Given a step waiting for canary pods that will never be Ready
    await stable_web(kube, namespace)
    rid = release_id()
    broken = VersionSpec(image=image("v2-never-ready"))
    command = await applying(events, namespace, rid, STEP0, broken, seconds=60)
    await events.publish(command, rid, f"{rid}.apply.0")

    async def canary_made() -> bool:
        return await asyncio.to_thread(read, kube, namespace, f"{NAME}-canary") is not None

    await async_wait_until(canary_made, timeout=30, message="the canary Deployment")

    # When the target is restored meanwhile, as the rollback service does (canary deleted,
    # restore point removed)
    apps = client.AppsV1Api(kube)
    await asyncio.to_thread(apps.delete_namespaced_deployment, f"{NAME}-canary", namespace)
    clear = {"metadata": {"annotations": dict.fromkeys(conventions.RESTORE_ANNOTATIONS)}}
    await asyncio.to_thread(apps.patch_namespaced_deployment, NAME, namespace, clear)

    # Then the executor gives the step up long before its deadline, reporting nothing and
    # writing nothing more. The wait outlasts the 60 s deadline, so an executor that waited
    # for it would also be seen done: how long it took is what tells them apart.
    started = time.monotonic()
    await events.handled_everything(executor, "apply", timeout=90)
    given_up = time.monotonic() - started
    assert given_up < 20, f"the step was given up after {given_up:.1f} s (deadline: 60 s)"
    assert read(kube, namespace, f"{NAME}-canary") is None
    stable = read(kube, namespace, NAME)
    assert stable is not None
    assert stable["spec"]["replicas"] == FULL_SIZE
    assert conventions.RELEASE_ANNOTATION not in (stable["metadata"].get("annotations") or {})
    assert await events.count(PhaseFailed, rid) == 0
    assert await events.count(PhaseReached, rid) == 0
