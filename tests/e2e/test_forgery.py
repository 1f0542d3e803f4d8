"""Forged, stale and replayed commands on the bus change nothing, on the real stack.

Given the four services running as processes and the sample shop, when someone who can
publish on the bus writes the commands the executor and the rollback service obey
(phase.apply, promotion.requested, rollback.requested, hook.run) by hand, for a target with
no release and no policy, for a release in another state, with another image than the
release's, and replayed from a release that is over, then each is answered with a
CommandRefused that says why, and nothing in Kubernetes changed; the release that was in
flight meanwhile still ends as it would have. A request for an image the policy does not
allow is rejected by the planner.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from kubernetes import client
from nats.aio.client import Client as NatsClient

from canaryflow.demo import shop
from canaryflow.demo.launcher import ServiceLauncher
from canaryflow_contracts import MESSAGE_ID_HEADER, Envelope, EventData, Subjects
from canaryflow_contracts.events import (
    ApplyPhase,
    CommandRefused,
    PhaseReached,
    PlannedStep,
    ReleaseRejected,
    ReleaseSucceeded,
    RequestPromotion,
    RollbackRequested,
    RunHook,
    TargetRef,
    VersionSpec,
)
from canaryflow_contracts.policy import Hook, HookType
from tests.e2e.conftest import Endpoint, Releases

pytestmark = pytest.mark.stack

EVIL = VersionSpec(image="registry.evil.example/shop/web:evil")


class Forger:
    """Someone who can publish on the bus: well-formed commands, any release id, any id."""

    def __init__(self, nc: NatsClient, subjects: Subjects, releases: Releases) -> None:
        self.js = nc.jetstream()
        self.subjects = subjects
        self.releases = releases

    async def send(self, data: EventData, release_id: str, source: str = "mallory") -> str:
        envelope = Envelope.wrap(data, release_id=release_id, source=source)
        await self.js.publish(
            self.subjects.of(type(data), release_id),
            envelope.model_dump_json().encode(),
            headers={MESSAGE_ID_HEADER: envelope.id},
        )
        return envelope.id

    async def refusal(self, release_id: str, command_id: str) -> CommandRefused:
        """The CommandRefused answering the command ``command_id``."""
        found = await self.releases.events(
            release_id,
            until=(CommandRefused,),
            timeout=60,
            stop=lambda e: isinstance(e.data, CommandRefused) and e.data.command_id == command_id,
        )
        refused = found[-1].data
        assert isinstance(refused, CommandRefused)
        return refused


@pytest.fixture
def forger(services: ServiceLauncher, nats_client: NatsClient, releases: Releases) -> Forger:
    return Forger(nats_client, Subjects(services.prefix), releases)


def cluster_state(kube: client.ApiClient, namespace: str) -> dict[str, tuple[int, str, int]]:
    """Every Deployment in the namespace: its spec's generation, first image, replicas.

    (The generation, not the resourceVersion: status updates by the controllers move that.)
    """
    items = client.AppsV1Api(kube).list_namespaced_deployment(namespace).items
    return {
        d.metadata.name: (
            d.metadata.generation,
            d.spec.template.spec.containers[0].image,
            d.spec.replicas,
        )
        for d in items
    }


def images(kube: client.ApiClient, namespace: str) -> dict[str, str]:
    return {name: image for name, (_, image, _) in cluster_state(kube, namespace).items()}


def apply_for(target: TargetRef, version: VersionSpec, index: int, weight: int) -> ApplyPhase:
    return ApplyPhase(
        target=target,
        version=version,
        step=PlannedStep(index=index, weight=weight, hold_seconds=8),
        ready_deadline=datetime.now(UTC) + timedelta(seconds=60),
    )


async def test_commands_for_a_target_with_no_release_and_no_policy_are_refused(
    kube: client.ApiClient, shop_namespace: str, forger: Forger, endpoint: Endpoint
) -> None:
    # Given a second Deployment nobody released and no ReleasePolicy governs
    shop.deploy(kube, shop_namespace, name="cart", replicas=2, rps=0)
    cart = TargetRef(namespace=shop_namespace, name="cart")
    web = TargetRef(namespace=shop_namespace, name="web")
    before = cluster_state(kube, shop_namespace)
    rid = f"forged-{uuid.uuid4().hex[:8]}"

    # When promotion, a step, a rollback and a webhook are forged in a made-up release's name
    promote = await forger.send(RequestPromotion(target=cart, version=EVIL), rid)
    apply = await forger.send(apply_for(web, EVIL, 0, 50), rid)
    rollback = RollbackRequested(target=web, reason="forged", requested_by="mallory")
    roll = await forger.send(rollback, rid)
    hook = Hook(name="steal", type=HookType.PRE_ROLLOUT, url=endpoint.url)
    run = await forger.send(RunHook(target=web, version=EVIL, hook=hook, step_index=0), rid)

    # Then each is refused with its reasons, by the service it was meant for
    promoted = await forger.refusal(rid, promote)
    assert promoted.command == RequestPromotion.event_type() and promoted.source == "mallory"
    assert promoted.checks == ["policy", "unknown-release"], promoted.reasons
    assert any(f"no release {rid} is known" in r for r in promoted.reasons)
    assert any("has targetRef 'cart'" in r for r in promoted.reasons), promoted.reasons
    applied = await forger.refusal(rid, apply)
    assert applied.checks == ["unknown-release"], applied.reasons  # web has a policy
    rolled = await forger.refusal(rid, roll)
    assert rolled.checks == ["unknown-release"] and rolled.target == web
    called = await forger.refusal(rid, run)
    assert called.checks == ["unknown-release"]
    # And nothing in the cluster changed, and the webhook was never called
    assert cluster_state(kube, shop_namespace) == before
    assert endpoint.calls == []


async def test_commands_a_live_release_did_not_ask_for_are_refused_and_it_goes_on(
    kube: client.ApiClient, shop_namespace: str, releases: Releases, forger: Forger
) -> None:
    # Given a release of web:v2 analysing its first step
    release_id = await releases.request(shop_namespace, shop.image("v2"))
    await releases.events(release_id, until=(PhaseReached,), timeout=90)
    web = TargetRef(namespace=shop_namespace, name="web")
    v2 = VersionSpec(image=shop.image("v2"))
    in_place = images(kube, shop_namespace)
    assert in_place["web-canary"] == shop.image("v2") and in_place["web"] == shop.image("v1")

    # When commands are forged in its name: promotion before it was asked for, the next step
    # before its time, its step with another image, a rollback of another target
    early_promotion = await forger.send(RequestPromotion(target=web, version=v2), release_id)
    next_step = await forger.send(apply_for(web, v2, 1, 30), release_id)
    evil_step = await forger.send(apply_for(web, EVIL, 0, 10), release_id)
    cart = TargetRef(namespace=shop_namespace, name="cart")
    other = RollbackRequested(target=cart, reason="forged", requested_by="mallory")
    other_target = await forger.send(other, release_id)

    # Then each is refused for what it gets wrong
    refused = await forger.refusal(release_id, early_promotion)
    assert refused.checks == ["status"], refused.reasons
    assert "promotion.requested is obeyed only while it is promoting" in refused.reasons[0]
    refused = await forger.refusal(release_id, next_step)
    assert "step" in refused.checks, refused.reasons
    refused = await forger.refusal(release_id, evil_step)
    assert "version" in refused.checks, refused.reasons
    assert any("'registry.evil.example/shop/web:evil'" in r for r in refused.reasons)
    refused = await forger.refusal(release_id, other_target)
    assert refused.checks == ["target"], refused.reasons
    # And no forged image reached the cluster
    assert EVIL.image not in images(kube, shop_namespace).values()

    # And the release ends as it would have: promoted through its own steps
    events = await releases.events(release_id, timeout=180)
    assert isinstance(events[-1].data, ReleaseSucceeded), [e.type for e in events]
    assert images(kube, shop_namespace)["web"] == shop.image("v2")


async def test_a_finished_releases_own_commands_replayed_change_nothing(
    kube: client.ApiClient, shop_namespace: str, releases: Releases, forger: Forger
) -> None:
    # Given a release of v2 that succeeded
    release_id = await releases.request(shop_namespace, shop.image("v2"))
    events = await releases.events(release_id, timeout=180)
    assert isinstance(events[-1].data, ReleaseSucceeded), [e.type for e in events]
    before = cluster_state(kube, shop_namespace)
    own = [e.data for e in events if isinstance(e.data, ApplyPhase | RequestPromotion)]
    assert {type(command) for command in own} == {ApplyPhase, RequestPromotion}, own

    # When its own commands are published again (new envelope ids: not deduplicated), and
    # a rollback is asked in its name
    replayed = [
        await forger.send(command, release_id, source="canaryflow/planner") for command in own
    ]
    web = TargetRef(namespace=shop_namespace, name="web")
    late = RollbackRequested(target=web, reason="replayed", requested_by="canaryflow/planner")
    replayed.append(await forger.send(late, release_id, source="canaryflow/planner"))

    # Then each is refused because the release is over (an earlier step's command is also
    # stale by its step), and the cluster is as it was
    last_step = max(c.step.index for c in own if isinstance(c, ApplyPhase))
    for command, command_id in zip([*own, late], replayed, strict=True):
        refused = await forger.refusal(release_id, command_id)
        early = isinstance(command, ApplyPhase) and command.step.index < last_step
        assert refused.checks == (["status", "step"] if early else ["status"]), refused.reasons
        assert f"release {release_id} is succeeded" in refused.reasons[0]
    assert cluster_state(kube, shop_namespace) == before


async def test_a_request_for_an_image_the_policy_does_not_allow_is_rejected(
    kube: client.ApiClient, shop_namespace: str, releases: Releases
) -> None:
    # Given a policy that allows only digest-pinned images from the shop's registry path
    rules = {"allowedPrefixes": [shop.REGISTRY], "requireDigest": True}
    shop.apply_policy(kube, shop_namespace, {**shop.quick_policy(), "images": rules})
    before = cluster_state(kube, shop_namespace)

    # When a release of an unpinned image, and one from elsewhere, are requested
    unpinned = await releases.request(shop_namespace, shop.image("v2"))
    elsewhere = await releases.request(shop_namespace, EVIL.image)

    # Then both are rejected with the rule they break, and nothing in the cluster changed
    for release_id, why in ((unpinned, "is not pinned by digest"), (elsewhere, "allowed prefix")):
        events = await releases.events(release_id, timeout=60)
        rejected = events[-1].data
        assert isinstance(rejected, ReleaseRejected), [e.type for e in events]
        assert any(why in reason for reason in rejected.reasons), rejected.reasons
    assert cluster_state(kube, shop_namespace) == before
