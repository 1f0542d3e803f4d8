"""Rollback with stable scaled up first, measured against a plain snap-back, on the real API.

Given a target half way through a release (stable at 5 of its 10 pods, a canary of 5 beside
it), whose pods take 2 s to become Ready as real ones do, when the rollback service restores
it, then stable serves at full size before any canary pod stops serving (checked on the API's
own order of pod events) and the service never has fewer than 10 pods serving. The same
target restored the way Flagger and Argo Rollouts do it (the canary removed at once, stable
scaled up meanwhile) shows what that order costs and buys; both are printed (``pytest -s``)
with their times.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

import pytest
from kubernetes import client
from tests.integration.release_support import (
    create_and_wait,
    deployment_body,
    read,
    wait_complete,
)
from tests.support.pods import Handover, PodHistory, WarmUp, handover

from canaryflow.rollback.restorer import Restorer
from canaryflow.runtime import conventions
from canaryflow.runtime.kube import utc_now
from canaryflow_contracts.events import TargetRef

pytestmark = pytest.mark.stack

FULL_SIZE = 10
HALF = FULL_SIZE // 2
ROUNDS = 3
WARM_UP_SECONDS = 2.0


@dataclass(frozen=True)
class Measured:
    seconds_to_restore: float  # until the restore returned: stable whole, canary gone
    seconds_to_stable_whole: float  # until stable served at full size
    moved: Handover


async def half_way(kube: client.ApiClient, namespace: str, name: str, rid: str) -> None:
    """Stable at 5 of 10 pods with its restore point; a canary of 5 Ready beside it."""
    await create_and_wait(kube, deployment_body(namespace, name, FULL_SIZE, "v1-never-ready"))
    original = read(kube, namespace, name)
    assert original is not None
    point = conventions.RestorePoint(rid, FULL_SIZE, original["spec"]["template"])
    apps = client.AppsV1Api(kube)
    patch = {"metadata": {"annotations": point.annotations()}, "spec": {"replicas": HALF}}
    await asyncio.to_thread(apps.patch_namespaced_deployment, name, namespace, patch)
    await wait_complete(kube, namespace, name, HALF)
    canary = deployment_body(namespace, f"{name}-canary", HALF, "v2-never-ready")
    track = {"app": name, conventions.TRACK_LABEL: "canary"}
    canary["metadata"]["labels"] = {**track, conventions.RELEASE_LABEL: rid}
    canary["spec"]["selector"]["matchLabels"] = dict(track)
    canary["spec"]["template"]["metadata"]["labels"] = dict(track)
    await create_and_wait(kube, canary)


async def measure(kube: client.ApiClient, namespace: str, name: str, prescale: bool) -> Measured:
    rid = f"{name}-{uuid.uuid4().hex[:6]}"
    warm_up = WarmUp(namespace, f"app={name}", WARM_UP_SECONDS).start(kube)
    await half_way(kube, namespace, name, rid)
    history = PodHistory(namespace, f"app={name}").start(kube)
    await asyncio.sleep(0.5)  # the watch has listed the pods (no wait for a state: a warm-up)
    started = time.monotonic()
    try:
        restorer = Restorer(kube, prescale=prescale)
        deadline = utc_now() + timedelta(seconds=120)
        await restorer.restore(rid, TargetRef(namespace=namespace, name=name), deadline)
        restored = time.monotonic() - started
    finally:
        await asyncio.sleep(0.5)
        history.finish()
        warm_up.finish()
    moved = handover(history, FULL_SIZE, since=started)
    whole = (moved.stable_whole_at or started) - started
    return Measured(restored, whole, moved)


def report(label: str, runs: list[Measured]) -> str:
    def median(values: list[float]) -> str:
        return f"{statistics.median(values):.2f}s"

    return (
        f"{label}: restore {median([r.seconds_to_restore for r in runs])}, "
        f"stable whole after {median([r.seconds_to_stable_whole for r in runs])}, "
        f"fewest pods serving {min(r.moved.fewest_serving for r in runs)}/{FULL_SIZE}, "
        f"below full capacity for {median([r.moved.seconds_below for r in runs])} "
        f"(median of {len(runs)})"
    )


async def test_stable_is_whole_before_the_canary_goes_and_what_a_snap_back_costs(
    kube: client.ApiClient, namespace: str
) -> None:
    prescaled = [await measure(kube, namespace, f"pre{i}", prescale=True) for i in range(ROUNDS)]
    snapped = [await measure(kube, namespace, f"snap{i}", prescale=False) for i in range(ROUNDS)]
    print()
    print(report("stable first (canaryflow)", prescaled))
    print(report("plain snap-back          ", snapped))
    for run in prescaled:
        assert run.moved.stable_whole_whenever_canary_left, run
        assert run.moved.fewest_serving >= FULL_SIZE, run
