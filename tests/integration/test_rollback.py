"""The rollback service on the real stack, with no planner running.

Given a target in the middle of a release (stable scaled down and its configuration changed,
its restore point recorded, a canary beside it), when a reason to stop is published (a
failed verdict, a failed phase, a rollback request, an operator's abort), then the rollback
service, running in-process, makes stable whole again before the canary goes, removes the
canary and the restore point, and reports once, however often it is asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client
from nats.aio.client import Client as NatsClient
from tests.integration.release_support import (
    StreamEvents,
    container_of,
    counting_deployment_reads,
    create_and_wait,
    deployment_body,
    env_of,
    image,
    put_state,
    read,
    release_state,
    running,
    service_settings,
    wait_complete,
)
from tests.support import StackEnv, async_wait_until, client_with_token, narrow_token

from canaryflow.demo.faults import ready_pods_by_track
from canaryflow.planner.app import build_service as build_planner
from canaryflow.rollback.app import SERVICE_NAME, build_service
from canaryflow.runtime import conventions
from canaryflow.runtime.conventions import readiness_of
from canaryflow.runtime.service import Service
from canaryflow_contracts.events import (
    AbortRelease,
    AnalysisVerdict,
    CommandRefused,
    MetricCheck,
    PhaseFailed,
    PlannedStep,
    ReleaseFailed,
    RollbackCompleted,
    RollbackFailed,
    RollbackRequested,
    TargetRef,
    VerdictAction,
    VerdictResult,
    VersionSpec,
)
from canaryflow_contracts.state import ReleaseState, ReleaseStatus

pytestmark = pytest.mark.stack

NAME = "web"
CANARY = f"{NAME}-canary"
FULL_SIZE = 4
STEP = PlannedStep(index=0, weight=25, hold_seconds=30)


@pytest.fixture
async def rollback(stack: StackEnv, stream_prefix: str) -> AsyncIterator[Service]:
    settings = service_settings(stack, stream_prefix, SERVICE_NAME)
    async with running(build_service(settings)) as service:
        yield service


@pytest.fixture
def events(rollback: Service, nats_client: NatsClient) -> StreamEvents:
    return StreamEvents(nats_client, rollback.settings.subjects)


def release_id() -> str:
    return f"web-{uuid.uuid4().hex[:8]}"


def canary_body(namespace: str, rid: str, tag: str) -> dict[str, Any]:
    """A canary as the executor leaves it: stable's labels plus track and release."""
    body = deployment_body(namespace, CANARY, 1, tag)
    track = {"app": NAME, conventions.TRACK_LABEL: "canary"}
    body["metadata"]["labels"] = {**track, conventions.RELEASE_LABEL: rid}
    body["spec"]["selector"]["matchLabels"] = dict(track)
    body["spec"]["template"]["metadata"]["labels"] = dict(track)
    return body


async def target_mid_release(
    kube: client.ApiClient,
    namespace: str,
    rid: str,
    *,
    record: bool = True,
    change_env: bool = False,
    tag: str = "v2",
) -> dict[str, Any]:
    """Stable at 3 of 4 pods, its restore point recorded; a canary beside it.

    ``change_env`` also changes stable's pod template, as a promotion cut short would.

    Returns stable's pod template from before the release. Built by hand, through the
    official client, so the test depends on the restore point's format, not on the executor.
    """
    await create_and_wait(
        kube, deployment_body(namespace, NAME, FULL_SIZE, "v1", {"CHECKOUT_LAYOUT": "classic"})
    )
    original = read(kube, namespace, NAME)
    assert original is not None
    template: dict[str, Any] = original["spec"]["template"]
    apps = client.AppsV1Api(kube)
    if record:
        point = conventions.RestorePoint(rid, FULL_SIZE, template)
        await asyncio.to_thread(
            apps.patch_namespaced_deployment,
            NAME,
            namespace,
            {"metadata": {"annotations": point.annotations()}},
        )
        change: dict[str, Any] = {"replicas": FULL_SIZE - 1}
        if change_env:
            env = [{"name": "CHECKOUT_LAYOUT", "value": "new"}]
            change["template"] = {"spec": {"containers": [{"name": NAME, "env": env}]}}
        await asyncio.to_thread(apps.patch_namespaced_deployment, NAME, namespace, {"spec": change})
        await wait_complete(kube, namespace, NAME, FULL_SIZE - 1)
    body = canary_body(namespace, rid, tag)
    await asyncio.to_thread(apps.create_namespaced_deployment, namespace, body)
    if not tag.endswith("-never-ready"):
        await wait_complete(kube, namespace, CANARY, 1)
    return template


@dataclass
class Sample:
    at: float
    stable_ready: int
    stable_complete: bool
    canary_exists: bool


@contextlib.asynccontextmanager
async def timeline(kube: client.ApiClient, namespace: str) -> AsyncIterator[list[Sample]]:
    """Sample both Deployments every 50 ms while the block runs (to check the order)."""
    samples: list[Sample] = []

    async def sample() -> None:
        while True:
            stable, canary = await asyncio.gather(
                asyncio.to_thread(read, kube, namespace, NAME),
                asyncio.to_thread(read, kube, namespace, CANARY),
            )
            seen = readiness_of(stable)
            complete = seen.complete and seen.desired == FULL_SIZE
            samples.append(Sample(time.monotonic(), seen.ready, complete, canary is not None))
            await asyncio.sleep(0.05)

    task = asyncio.create_task(sample())
    try:
        yield samples
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def failed_verdict(namespace: str) -> AnalysisVerdict:
    check = MetricCheck(
        metric="error-rate",
        track="canary",
        query="sum(rate(http_requests_total{code=~'5..'}[30s])) / sum(rate(...))",
        value=0.2,
        threshold=0.05,
        comparison="<=",
        sample_size=600,
        passed=False,
    )
    return AnalysisVerdict(
        target=TargetRef(namespace=namespace, name=NAME),
        step=STEP,
        result=VerdictResult.FAIL,
        action=VerdictAction.ROLLBACK,
        final=True,
        reason="error-rate 0.2 > 0.05",
        checks=[check],
    )


def state_of(namespace: str, rid: str, status: ReleaseStatus) -> ReleaseState:
    target = TargetRef(namespace=namespace, name=NAME)
    return release_state(rid, target, VersionSpec(image=image("v2")), [STEP], status)


def assert_restored(kube: client.ApiClient, namespace: str, template: dict[str, Any]) -> None:
    stable = read(kube, namespace, NAME)
    assert stable is not None
    assert stable["spec"]["template"] == template
    assert container_of(stable)["image"] == image("v1")
    assert env_of(stable) == {"CHECKOUT_LAYOUT": "classic"}
    assert (stable["spec"]["replicas"], stable["status"]["readyReplicas"]) == (4, 4)
    for key in conventions.RESTORE_ANNOTATIONS:
        assert key not in (stable["metadata"].get("annotations") or {})
    assert read(kube, namespace, CANARY) is None
    assert ready_pods_by_track(kube, namespace, f"app={NAME}") == {"stable": 4}


async def test_a_failed_verdict_restores_stable_then_removes_the_canary(
    rollback: Service, events: StreamEvents, kube: client.ApiClient, namespace: str
) -> None:
    # Given a target in the middle of a release the planner stored, and no planner running
    rid = release_id()
    template = await target_mid_release(kube, namespace, rid)
    await put_state(events, state_of(namespace, rid, ReleaseStatus.ANALYSING))

    # When the metrics-watcher's failing verdict is published
    async with timeline(kube, namespace) as samples:
        with counting_deployment_reads() as reads:
            started = time.monotonic()
            await events.publish(failed_verdict(namespace), rid, f"{rid}.verdict.0.final")
            completed = await events.wait_for(RollbackCompleted, rid, timeout=60)
            reported = time.monotonic() - started

    # Then stable is whole with its original configuration, the canary and restore point gone
    assert_restored(kube, namespace, template)
    assert completed.id == f"{rid}.rollback-completed"
    assert completed.data.stable_replicas == FULL_SIZE
    assert completed.data.reason == "analysis failed at step 0: error-rate 0.2 > 0.05"
    assert 0 < completed.data.seconds_to_restore <= reported + 1
    # And stable was whole before the canary lost its pods: never fewer than 3 + 1 serving.
    assert samples, "the timeline took no samples"
    # (Stable seen whole at some sample before the canary is first seen gone: once whole, its
    # status has been seen to turn briefly "not settled" again as its controller catches up,
    # with all 4 pods Ready, even at the very sample where the canary is gone.)
    first_gone = next(i for i, s in enumerate(samples) if not s.canary_exists)
    assert any(s.stable_complete for s in samples[:first_gone]), samples
    assert all(s.stable_ready + (1 if s.canary_exists else 0) >= FULL_SIZE for s in samples)
    stable_whole = next(s.at for s in samples if s.stable_complete) - started
    # Stable's wait looked at the watched copy, not at the API every 0.1 s: stable was read
    # from the API only where a write is decided on it.
    assert reads.from_copy[NAME] >= 1, reads
    assert reads.from_api[NAME] <= 5, reads
    canary_gone = next(s.at for s in samples if not s.canary_exists) - started

    # When the same release is asked to roll back again (the planner's request, a replay)
    await events.publish(
        RollbackRequested(
            target=TargetRef(namespace=namespace, name=NAME),
            reason="analysis failed",
            requested_by="canaryflow/planner",
        ),
        rid,
    )
    await events.handled_everything(rollback, "requested", timeout=30)

    # Then nothing changes and the completion is stored once
    assert_restored(kube, namespace, template)
    assert await events.count(RollbackCompleted, rid) == 1
    assert await events.dead_letters() == 0
    print(
        f"\nMEASURE rollback: verdict published -> stable 4/4 Ready {stable_whole:.2f}s, "
        f"-> canary gone {canary_gone:.2f}s, -> RollbackCompleted stored {reported:.2f}s; "
        f"seconds_to_restore reported {completed.data.seconds_to_restore:.2f}s"
    )


async def test_an_abort_takes_the_target_from_the_state_and_restores_configuration(
    rollback: Service, events: StreamEvents, kube: client.ApiClient, namespace: str
) -> None:
    # Given a promotion cut short: stable's env already changed
    rid = release_id()
    template = await target_mid_release(kube, namespace, rid, change_env=True)
    await put_state(events, state_of(namespace, rid, ReleaseStatus.PROMOTING))

    started = time.monotonic()
    await events.publish(AbortRelease(actor="alice@example", reason="wrong build"), rid)
    completed = await events.wait_for(RollbackCompleted, rid, timeout=60)
    reported = time.monotonic() - started

    assert completed.data.reason == "aborted by alice@example: wrong build"
    assert completed.data.target == TargetRef(namespace=namespace, name=NAME)
    assert_restored(kube, namespace, template)
    print(f"\nMEASURE rollback (pod template restored too): abort -> completed {reported:.2f}s")


async def test_an_abort_of_an_unknown_release_is_refused_and_does_nothing(
    rollback: Service, events: StreamEvents
) -> None:
    rid = release_id()

    await events.publish(AbortRelease(actor="alice@example"), rid, f"{rid}.abort")
    refused = await events.wait_for(CommandRefused, rid, timeout=30)

    assert refused.data.command_id == f"{rid}.abort" and refused.data.target is None
    assert refused.data.checks == ["unknown-release"]
    assert await events.count(RollbackCompleted, rid) == 0
    assert await events.dead_letters() == 0


async def test_a_succeeded_release_is_left_alone(
    rollback: Service, events: StreamEvents, kube: client.ApiClient, namespace: str
) -> None:
    rid = release_id()
    await target_mid_release(kube, namespace, rid)
    await put_state(events, state_of(namespace, rid, ReleaseStatus.SUCCEEDED))
    before = read(kube, namespace, NAME)
    assert before is not None

    await events.publish(
        RollbackRequested(
            target=TargetRef(namespace=namespace, name=NAME), reason="late", requested_by="bob"
        ),
        rid,
    )
    refused = await events.wait_for(CommandRefused, rid, timeout=30)

    assert refused.data.checks == ["status"]
    assert f"release {rid} is succeeded" in refused.data.reasons[0]
    after = read(kube, namespace, NAME)
    assert after is not None
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert read(kube, namespace, CANARY) is not None
    assert await events.count(RollbackCompleted, rid) == 0


async def test_a_rollback_for_a_target_its_release_does_not_change_is_refused(
    rollback: Service, events: StreamEvents, kube: client.ApiClient, namespace: str
) -> None:
    # Given a live release of "cart", and "web" in the middle of another change
    rid = release_id()
    await target_mid_release(kube, namespace, rid)
    cart = TargetRef(namespace=namespace, name="cart")
    await put_state(
        events,
        state_of(namespace, rid, ReleaseStatus.ANALYSING).model_copy(update={"target": cart}),
    )
    before = read(kube, namespace, NAME)
    assert before is not None

    # When a rollback of web is asked in that release's name
    web = TargetRef(namespace=namespace, name=NAME)
    await events.publish(RollbackRequested(target=web, reason="x", requested_by="mallory"), rid)
    refused = await events.wait_for(CommandRefused, rid, timeout=30)

    # Then web is not touched
    assert refused.data.checks == ["target"]
    after = read(kube, namespace, NAME)
    assert after is not None
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert read(kube, namespace, CANARY) is not None


async def test_a_failed_phase_with_nothing_recorded_only_removes_the_canary(
    rollback: Service, events: StreamEvents, kube: client.ApiClient, namespace: str
) -> None:
    # Given a canary whose pods never became Ready, and a stable nobody changed
    rid = release_id()
    await target_mid_release(kube, namespace, rid, record=False, tag="v2-never-ready")
    await put_state(events, state_of(namespace, rid, ReleaseStatus.APPLYING))
    stable_before = read(kube, namespace, NAME)
    assert stable_before is not None

    started = time.monotonic()
    failed = PhaseFailed(
        target=TargetRef(namespace=namespace, name=NAME), step=STEP, reason="pods not Ready"
    )
    await events.publish(failed, rid, f"{rid}.failed.0")
    completed = await events.wait_for(RollbackCompleted, rid, timeout=60)
    reported = time.monotonic() - started

    assert completed.data.reason == "step 0 failed: pods not Ready"
    assert completed.data.stable_replicas == FULL_SIZE
    assert read(kube, namespace, CANARY) is None
    stable = read(kube, namespace, NAME)
    assert stable is not None
    assert stable["metadata"]["generation"] == stable_before["metadata"]["generation"]
    print(f"\nMEASURE rollback (nothing recorded): PhaseFailed -> completed {reported:.2f}s")


async def test_a_rollback_the_api_forbids_ends_the_release_as_failed_with_what_is_left(
    stack: StackEnv,
    stream_prefix: str,
    nats_client: NatsClient,
    kube: client.ApiClient,
    namespace: str,
) -> None:
    # Given a target mid-release and a rollback service whose role may read but not write
    rid = release_id()
    await target_mid_release(kube, namespace, rid)
    read_only = [
        client.V1PolicyRule(
            api_groups=["apps"], resources=["deployments"], verbs=["get", "list", "watch"]
        ),
        client.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["get", "list"]),
    ]
    narrow = client_with_token(kube, narrow_token(kube, namespace, "read-only", read_only))
    forbidden = build_service(service_settings(stack, stream_prefix, SERVICE_NAME), api=narrow)
    planner = build_planner(service_settings(stack, stream_prefix, "planner"))
    events = StreamEvents(nats_client, forbidden.settings.subjects)
    async with running(forbidden), running(planner):
        await put_state(events, state_of(namespace, rid, ReleaseStatus.ANALYSING))

        # When a failing verdict asks for the rollback
        await events.publish(failed_verdict(namespace), rid, f"{rid}.verdict.0.final")

        # Then the rollback service gives up at once (no retry makes a 403 a success) ...
        gave_up = await events.wait_for(RollbackFailed, rid, timeout=30)
        # ... and the planner ends the release as failed, naming what a person must clean up
        ended = await events.wait_for(ReleaseFailed, rid, timeout=30, event_id=f"{rid}.failed")
        stored = await planner.store.get(rid)

    assert gave_up.data.final and gave_up.data.attempts == 1
    assert "403" in gave_up.data.reason
    left = gave_up.data.leftovers
    assert f"Deployment {namespace}/{CANARY} (1 replicas)" in left
    assert any(f"Deployment {namespace}/{NAME} still carries the restore point" in x for x in left)
    assert ended.data.leftovers == left
    assert "rollback could not be completed after 1 attempt(s)" in ended.data.summary
    assert stored is not None and stored.state.status is ReleaseStatus.FAILED
    assert await events.count(RollbackCompleted, rid) == 0
    # Nothing was written: stable is still at the release's size, the canary still there.
    stable = read(kube, namespace, NAME)
    assert stable is not None and stable["spec"]["replicas"] == FULL_SIZE - 1
    assert read(kube, namespace, CANARY) is not None


async def test_forward_writes_that_land_after_a_rollback_are_undone_by_the_sweep(
    stack: StackEnv,
    stream_prefix: str,
    nats_client: NatsClient,
    kube: client.ApiClient,
    namespace: str,
) -> None:
    """Found by ``make chaos``: an abort while the executor put step 0 in place; the rollback
    found nothing yet and completed, then the executor's restore point, canary and baseline
    landed and stayed. Here the release is already rolled back when they appear."""
    rid = release_id()
    settings = service_settings(stack, stream_prefix, SERVICE_NAME)
    async with running(build_service(settings, sweep_seconds=1.0)) as service:
        # Rolled back just now: the late writes come within the sweep's window.
        ended = state_of(namespace, rid, ReleaseStatus.ROLLED_BACK)
        events = StreamEvents(nats_client, service.settings.subjects)
        await put_state(events, ended.model_copy(update={"updated_at": datetime.now(UTC)}))
        template = await target_mid_release(kube, namespace, rid)  # the late writes

        async def all_undone() -> bool | None:
            # The restore point is cleared last, after the canary has gone.
            stable = read(kube, namespace, NAME) or {}
            marked = set(stable.get("metadata", {}).get("annotations") or {})
            late = read(kube, namespace, CANARY) is not None
            return None if late or marked & set(conventions.RESTORE_ANNOTATIONS) else True

        await async_wait_until(all_undone, timeout=60, message="the late writes undone")
        await wait_complete(kube, namespace, NAME, FULL_SIZE)

        assert_restored(kube, namespace, template)
