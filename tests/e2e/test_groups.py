"""Release groups on the real stack: two Deployments released as one unit.

Given the sample shop with two Deployments (``api`` and ``web``, 10 pods of v1 each, real
users, the quick policy each), when a system publishes one GroupRequested naming both (the
API first), then both are canaried in that order and promoted together, or, when the second
fails its canary, both end on v1, the second rolled back before the first.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from canaryflow.demo import shop
from canaryflow.planner.groups import member_id
from canaryflow_contracts import Envelope, EventData
from canaryflow_contracts.events import (
    GroupPlanned,
    GroupRejected,
    GroupRolledBack,
    GroupStatusChanged,
    GroupSucceeded,
    GroupTransition,
    PromotionCompleted,
    ReleasePlanned,
    ReleaseRejected,
    ReleaseRolledBack,
    ReleaseStatusChanged,
    ReleaseSucceeded,
    RollbackCompleted,
    StatusChange,
)
from tests.e2e.conftest import Releases

pytestmark = pytest.mark.stack

GROUP_END = (GroupSucceeded, GroupRolledBack, GroupRejected)


# What a group does, not judgement: on a loaded 2-core machine a good version measured a p99
# of 1.85 s, over the quick policy's 1 s; v2-bad's 20 % errors still fail the 5 % guard.
STEADY: dict[str, Any] = {"max_p99_seconds": 5.0, "compare": False}


@pytest.fixture
def two_services(kube: client.ApiClient, shop_namespace: str) -> str:
    shop.deploy(kube, shop_namespace, name="api")
    shop.apply_policy(kube, shop_namespace, shop.quick_policy("api", **STEADY), name="api")
    shop.apply_policy(kube, shop_namespace, shop.quick_policy(**STEADY))
    return shop_namespace


def _images(kube: client.ApiClient, namespace: str) -> dict[str, str]:
    items = client.AppsV1Api(kube).list_namespaced_deployment(namespace).items
    return {d.metadata.name: d.spec.template.spec.containers[0].image for d in items}


def _first(events: list[Envelope[EventData]], kind: type[EventData]) -> Envelope[EventData]:
    return next(e for e in events if isinstance(e.data, kind))


async def test_a_group_whose_members_pass_is_promoted_together_in_dependency_order(
    kube: client.ApiClient, two_services: str, releases: Releases
) -> None:
    group_id = await releases.request_group(
        two_services, [("api", shop.image("v2", "api")), ("web", shop.image("v2"))]
    )

    group_events = await releases.events(group_id, until=GROUP_END, timeout=400)

    assert isinstance(group_events[-1].data, GroupSucceeded), [e.type for e in group_events]
    api_id, web_id = member_id(group_id, 0), member_id(group_id, 1)
    api_events = await releases.events(api_id, timeout=30)
    web_events = await releases.events(web_id, timeout=30)
    assert isinstance(api_events[-1].data, ReleaseSucceeded)
    assert isinstance(web_events[-1].data, ReleaseSucceeded)
    # The web page was canaried only once the API had passed and waited at the group's gate,
    waiting = next(
        e
        for e in group_events
        if isinstance(e.data, GroupStatusChanged)
        and e.data.status is GroupTransition.MEMBER_WAITING
        and e.data.member == api_id
    )
    assert _first(web_events, ReleasePlanned).time >= waiting.time
    # and nothing was promoted before every member had passed; the API first.
    api_promoted = _first(api_events, PromotionCompleted).time
    web_promoted = _first(web_events, PromotionCompleted).time
    web_waiting = [
        e
        for e in web_events
        if isinstance(e.data, ReleaseStatusChanged)
        and e.data.status is StatusChange.WAITING
        and f"group {group_id}" in e.data.detail
    ]
    assert web_waiting, "the web member never waited at the group's gate"
    assert web_waiting[0].time <= api_promoted <= web_promoted
    assert _images(kube, two_services) == {
        "api": shop.image("v2", "api"),
        "web": shop.image("v2"),
    }


async def test_the_second_member_fails_and_both_are_rolled_back_in_reverse_order(
    kube: client.ApiClient, two_services: str, releases: Releases
) -> None:
    group_id = await releases.request_group(
        two_services, [("api", shop.image("v2", "api")), ("web", shop.image("v2-bad"))]
    )

    group_events = await releases.events(group_id, until=GROUP_END, timeout=400)

    outcome = group_events[-1].data
    assert isinstance(outcome, GroupRolledBack), [e.type for e in group_events]
    api_id, web_id = member_id(group_id, 0), member_id(group_id, 1)
    assert outcome.failed_member == web_id
    assert outcome.rolled_back_order == [web_id, api_id]
    assert isinstance(_first(group_events, GroupPlanned).data, GroupPlanned)
    api_events = await releases.events(api_id, timeout=30)
    web_events = await releases.events(web_id, timeout=30)
    assert isinstance(api_events[-1].data, ReleaseRolledBack)
    assert isinstance(web_events[-1].data, ReleaseRolledBack)
    assert PromotionCompleted not in [type(e.data) for e in api_events + web_events]
    web_back = _first(web_events, RollbackCompleted).time
    api_back = _first(api_events, RollbackCompleted).time
    assert web_back < api_back, "the first member went back before the one that failed"
    assert _images(kube, two_services) == {
        "api": shop.image("v1", "api"),
        "web": shop.image("v1"),
    }


async def test_a_group_naming_a_deployment_already_in_flight_is_rejected_with_a_reason(
    two_services: str, releases: Releases
) -> None:
    busy = await releases.request(two_services, shop.image("v2"))
    await releases.events(busy, until=(ReleasePlanned,), timeout=60)

    group_id = await releases.request_group(
        two_services, [("api", shop.image("v2", "api")), ("web", shop.image("v2"))]
    )
    group_events = await releases.events(group_id, until=GROUP_END, timeout=60)

    rejected = group_events[-1].data
    assert isinstance(rejected, GroupRejected), [e.type for e in group_events]
    assert rejected.reasons == [
        f"member 2 ({two_services}/web): Deployment already has a release in flight: {busy}"
    ]
    await releases.events(busy, timeout=300)


async def test_a_release_beyond_the_namespace_limit_is_rejected_with_the_count(
    kube: client.ApiClient, two_services: str, releases: Releases
) -> None:
    limited = {**shop.quick_policy("api", **STEADY), "limits": {"namespace": 1}}
    shop.apply_policy(kube, two_services, limited, name="api")
    busy = await releases.request(two_services, shop.image("v2"))
    await releases.events(busy, until=(ReleasePlanned,), timeout=60)

    refused = await releases.request(two_services, shop.image("v2", "api"), target="api")
    events = await releases.events(refused, timeout=60)

    rejected = events[-1].data
    assert isinstance(rejected, ReleaseRejected), [e.type for e in events]
    assert rejected.reasons == [
        f"namespace {two_services} has 1 release(s) in flight ({busy}); its policy allows 1"
    ]
    await releases.events(busy, timeout=300)
