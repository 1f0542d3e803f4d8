"""A release from request to outcome, on the real stack, one scenario each.

Given the sample shop (10 pods of web:v1 behind a Service with real users) and a quick
policy (10 % → 30 % → 50 %, a few seconds each, error rate ≤ 5 %, p99 ≤ 1 s),
when a system publishes a release request on NATS, then canaryflow takes it to its outcome.
"""

from __future__ import annotations

import asyncio

import pytest
from kubernetes import client

from canaryflow.demo import shop
from canaryflow.demo.launcher import ServiceLauncher
from canaryflow_contracts.events import (
    AbortRelease,
    AnalysisVerdict,
    PhaseFailed,
    PhaseReached,
    PromotionCompleted,
    ReleasePlanned,
    ReleaseRejected,
    ReleaseRolledBack,
    ReleaseSucceeded,
    RollbackCompleted,
)
from tests.e2e.conftest import Releases

pytestmark = pytest.mark.stack


def _deployments(kube: client.ApiClient, namespace: str) -> dict[str, client.V1Deployment]:
    items = client.AppsV1Api(kube).list_namespaced_deployment(namespace).items
    return {d.metadata.name: d for d in items}


def _assert_stable_restored(kube: client.ApiClient, namespace: str, image: str) -> None:
    deployments = _deployments(kube, namespace)
    assert "web-canary" not in deployments, "the canary Deployment is left behind"
    assert "web-baseline" not in deployments, "the baseline Deployment is left behind"
    web = deployments["web"]
    assert web.spec.template.spec.containers[0].image == image
    assert web.spec.replicas == 10
    assert (web.status.ready_replicas or 0) == 10
    annotations = web.metadata.annotations or {}
    assert not [key for key in annotations if key.startswith("canaryflow.io/")], annotations


def _types(events: list) -> list[type]:  # type: ignore[type-arg]
    return [type(e.data) for e in events]


async def test_a_good_version_is_promoted_through_every_step(
    kube: client.ApiClient, shop_namespace: str, releases: Releases
) -> None:
    release_id = await releases.request(shop_namespace, shop.image("v2"))

    events = await releases.events(release_id)

    kinds = _types(events)
    assert ReleasePlanned in kinds and kinds[-1] is ReleaseSucceeded, kinds
    reached = [e.data.step.weight for e in events if isinstance(e.data, PhaseReached)]
    assert reached == [10, 30, 50]
    final_passes = [
        e.data
        for e in events
        if isinstance(e.data, AnalysisVerdict) and e.data.final and e.data.result == "pass"
    ]
    assert len(final_passes) == 3
    assert PromotionCompleted in kinds
    _assert_stable_restored(kube, shop_namespace, shop.image("v2"))


async def test_a_version_with_20_percent_errors_is_rolled_back_with_evidence(
    kube: client.ApiClient, shop_namespace: str, releases: Releases
) -> None:
    release_id = await releases.request(shop_namespace, shop.image("v2-bad"))

    events = await releases.events(release_id)

    outcome = events[-1].data
    assert isinstance(outcome, ReleaseRolledBack), _types(events)
    failing = [c for c in outcome.evidence if c.passed is False]
    assert failing, outcome
    error_check = next(c for c in failing if c.metric == "error-rate")
    # The first tick over the threshold decides, often on a few dozen requests, so the measured
    # rate is a small-sample estimate of the true 20 %: assert why it failed, not its digits.
    assert error_check.threshold == 0.05 and error_check.query
    assert error_check.value is not None and error_check.threshold < error_check.value < 0.6
    assert error_check.sample_size >= 20, "never decided below the policy's minimum sample"
    assert RollbackCompleted in _types(events)
    _assert_stable_restored(kube, shop_namespace, shop.image("v1"))


async def test_pods_that_never_become_ready_are_rolled_back_at_the_deadline(
    kube: client.ApiClient, shop_namespace: str, releases: Releases
) -> None:
    shop.apply_policy(kube, shop_namespace, shop.quick_policy(pod_ready_seconds=10))
    release_id = await releases.request(shop_namespace, shop.image("v3-never-ready"))

    events = await releases.events(release_id)

    kinds = _types(events)
    assert kinds[-1] is ReleaseRolledBack, kinds
    assert PhaseFailed in kinds and PhaseReached not in kinds
    failed = next(e for e in events if isinstance(e.data, PhaseFailed))
    planned = next(e for e in events if isinstance(e.data, ReleasePlanned))
    # Not before the deadline, and not long after it.
    waited = (failed.time - planned.time).total_seconds()
    assert 9 <= waited <= 20, waited
    _assert_stable_restored(kube, shop_namespace, shop.image("v1"))


async def test_two_targets_released_at_the_same_time_both_end_correctly(
    kube: client.ApiClient, shop_namespace: str, releases: Releases
) -> None:
    shop.deploy(kube, shop_namespace, name="api")
    shop.apply_policy(kube, shop_namespace, shop.quick_policy("api"), name="api")

    good, bad = await asyncio.gather(
        releases.request(shop_namespace, shop.image("v2"), target="web"),
        releases.request(shop_namespace, shop.image("v2-bad", "api"), target="api"),
    )
    good_events, bad_events = await asyncio.gather(releases.events(good), releases.events(bad))

    assert isinstance(good_events[-1].data, ReleaseSucceeded), _types(good_events)
    assert isinstance(bad_events[-1].data, ReleaseRolledBack), _types(bad_events)
    deployments = _deployments(kube, shop_namespace)
    assert deployments["web"].spec.template.spec.containers[0].image == shop.image("v2")
    assert deployments["api"].spec.template.spec.containers[0].image == shop.image("v1", "api")
    assert not [name for name in deployments if name.endswith(("-canary", "-baseline"))]


async def test_rollback_works_while_the_planner_is_stopped(
    kube: client.ApiClient, shop_namespace: str, releases: Releases, services: ServiceLauncher
) -> None:
    release_id = await releases.request(shop_namespace, shop.image("v2"))
    await releases.events(release_id, until=(PhaseReached,))
    services.stop("planner")
    try:
        await releases.publish(AbortRelease(actor="e2e-test", reason="planner down"), release_id)
        events = await releases.events(release_id, until=(RollbackCompleted,), timeout=60)
        assert isinstance(events[-1].data, RollbackCompleted)
        _assert_stable_restored(kube, shop_namespace, shop.image("v1"))
    finally:
        services.start(("planner",))
    # Back up, the planner catches up from its durable consumer and closes the release.
    events = await releases.events(release_id, timeout=60)
    assert isinstance(events[-1].data, ReleaseRolledBack)


async def test_a_deployment_without_a_policy_is_rejected_and_left_alone(
    kube: client.ApiClient, shop_namespace: str, releases: Releases
) -> None:
    shop.deploy(kube, shop_namespace, name="unmanaged")
    release_id = await releases.request(shop_namespace, shop.image("v2", "unmanaged"), "unmanaged")

    events = await releases.events(release_id, timeout=30)

    rejection = events[-1].data
    assert isinstance(rejection, ReleaseRejected), _types(events)
    assert any("polic" in reason.lower() for reason in rejection.reasons), rejection.reasons
    deployments = _deployments(kube, shop_namespace)
    assert "unmanaged-canary" not in deployments
    image = deployments["unmanaged"].spec.template.spec.containers[0].image
    assert image == shop.image("v1", "unmanaged")
