"""The planner's handlers with fakes for the store, the bus and the cluster.

These check the translation around the pure machine: read, decide, compare-and-set, publish
after the write, the target lock, and what happens with malformed or unknown input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import pytest

from canaryflow.planner.app import Planner, ReleaseRequestPayload
from canaryflow.planner.reconcile import ReconcileTimings
from canaryflow.runtime.bus import Delivery
from canaryflow.runtime.store import StaleWrite, Versioned
from canaryflow_contracts import Envelope, EventData
from canaryflow_contracts.events import (
    ApplyPhase,
    PromotionCompleted,
    ReleasePlanned,
    ReleaseRejected,
    ReleaseSucceeded,
    RequestAnalysis,
    RequestPromotion,
    RequestRefused,
    RollbackRequested,
    TargetRef,
    VerdictResult,
)
from canaryflow_contracts.identifiers import request_token
from canaryflow_contracts.state import ReleaseState, ReleaseStatus
from tests.unit.planner.factory import (
    NEW_IMAGE,
    RID,
    T0,
    TARGET,
    FakeCluster,
    accepted,
    at,
    envelope,
    reached,
    verdict,
)


class FakeStore:
    """The ReleaseStore's contract in memory: revisions, compare-and-set, target locks."""

    def __init__(self) -> None:
        self.releases: dict[str, Versioned] = {}
        self.locks: dict[str, str] = {}
        self.revision = 0
        self.conflicts = 0  # how many next writes fail as if another replica wrote first
        self.writes = 0

    def _next(self, state: ReleaseState) -> int:
        if self.conflicts:
            self.conflicts -= 1
            raise StaleWrite("someone else wrote")
        self.revision += 1
        self.writes += 1
        self.releases[state.release_id] = Versioned(state, self.revision)
        return self.revision

    async def get(self, release_id: str) -> Versioned | None:
        return self.releases.get(release_id)

    async def create(self, state: ReleaseState) -> int:
        if state.release_id in self.releases:
            raise StaleWrite("exists")
        return self._next(state)

    async def update(self, state: ReleaseState, revision: int) -> int:
        if self.releases[state.release_id].revision != revision:
            raise StaleWrite("moved")
        return self._next(state)

    async def claim_target(self, target: TargetRef, release_id: str) -> str:
        return self.locks.setdefault(target.key(), release_id)

    async def free_target(self, target: TargetRef, release_id: str) -> None:
        if self.locks.get(target.key()) == release_id:
            del self.locks[target.key()]

    async def all(self) -> list[Versioned]:
        return list(self.releases.values())

    def state(self, release_id: str = RID) -> ReleaseState:
        return self.releases[release_id].state


@dataclass
class FakePublisher:
    sent: list[tuple[str, str, EventData]] = field(default_factory=list)
    failures: int = 0

    async def publish(
        self, data: EventData, release_id: str, *, event_id: str | None = None
    ) -> Envelope[Any]:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("bus away")
        assert event_id is not None, "the planner always publishes under a deterministic id"
        self.sent.append((release_id, event_id, data))
        return envelope(data, event_id)

    def kinds(self) -> tuple[type[object], ...]:
        return tuple(type(data) for _, _, data in self.sent)

    def ids(self) -> list[str]:
        return [event_id for _, event_id, _ in self.sent]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@dataclass
class World:
    store: FakeStore
    bus: FakePublisher
    cluster: FakeCluster
    clock: Clock
    planner: Planner


@pytest.fixture
def world() -> World:
    store, bus, cluster, clock = FakeStore(), FakePublisher(), FakeCluster(), Clock()
    timings = ReconcileTimings(grace_seconds=10, completion_grace_seconds=60)
    planner = Planner(lambda: store, bus, cluster, clock, timings)
    return World(store, bus, cluster, clock, planner)


def raw_request(
    release_id: str = RID, event_id: str = "req-1", **data: Any
) -> Envelope[ReleaseRequestPayload]:
    body = {
        "target": {"namespace": "shop", "name": "web"},
        "version": {"image": NEW_IMAGE},
        "requested_by": "ci@shop",
        **data,
    }
    return (
        Envelope[ReleaseRequestPayload]
        .model_validate(
            {
                "specversion": "1.0",
                "id": event_id,
                "source": "ci/shop",
                "type": "io.canaryflow.release.requested.v1",
                "subject": release_id,
                "data": body,
            }
        )
        .check_type()
    )


async def test_an_accepted_request_is_stored_then_planned_and_applied(world: World) -> None:
    await world.planner.on_request(raw_request())
    state = world.store.state()
    assert state.status is ReleaseStatus.APPLYING
    assert state.policy == "web-policy"
    assert world.bus.kinds() == (ReleasePlanned, ApplyPhase)
    assert world.bus.ids() == [f"{RID}.planned", f"{RID}.apply.0"]
    assert world.store.locks == {"shop/web": RID}


def delivery(attempt: int, release_id: str = RID) -> Delivery:
    """What the bus tells a handler; the message itself is not used by the planner."""
    subject = f"canaryflow.release.requested.v1.{release_id}"
    return Delivery(subject, release_id, attempt, cast("Any", None), 30.0)


async def test_a_redelivered_request_publishes_the_same_ids_and_writes_nothing(
    world: World,
) -> None:
    await world.planner.on_request(raw_request(), delivery(1))
    await world.planner.on_request(raw_request(), delivery(2))
    assert world.store.writes == 1
    assert world.bus.ids() == [f"{RID}.planned", f"{RID}.apply.0"] * 2
    # The requester knows its answer by its request id.
    planned = world.bus.sent[0][2]
    assert isinstance(planned, ReleasePlanned) and planned.request_id == "req-1"


async def test_the_same_request_sent_again_later_is_refused_as_a_duplicate(world: World) -> None:
    await world.planner.on_request(raw_request(), delivery(1))
    # Published again after JetStream's duplicate window: a new message, first delivery.
    await world.planner.on_request(raw_request(), delivery(1))
    assert world.store.writes == 1
    token, event_id, refusal = world.bus.sent[-1]
    assert (token, event_id) == ("req-1", "req-1.refused")
    assert isinstance(refusal, RequestRefused)
    assert refusal.request_id == "req-1" and refusal.release_id == RID
    assert refusal.request_subject == f"canaryflow.release.requested.v1.{RID}"
    assert refusal.reasons[0].startswith("duplicate: request 'req-1' was already handled")
    assert world.bus.kinds().count(ReleasePlanned) == 1


async def test_a_request_reusing_a_release_id_is_refused_on_its_own_subject(world: World) -> None:
    await world.planner.on_request(raw_request(), delivery(1))
    await world.planner.on_request(raw_request(RID, "Req 2/ci"), delivery(1))
    token, event_id, refusal = world.bus.sent[-1]
    assert isinstance(refusal, RequestRefused)
    # Not a release id, so the refusal is keyed by the request id's hash.
    assert token == request_token("Req 2/ci") and token.startswith("r-") and len(token) == 42
    assert event_id == f"{token}.refused"
    assert "already used by another request" in refusal.reasons[0]
    # The release itself is untouched and has published nothing terminal.
    assert world.store.state().status is ReleaseStatus.APPLYING
    assert ReleaseRejected not in world.bus.kinds()


async def test_a_second_release_of_a_busy_target_is_rejected_and_stored(world: World) -> None:
    await world.planner.on_request(raw_request())
    await world.planner.on_request(raw_request("shop-web-2", "req-2"))
    second = world.store.state("shop-web-2")
    assert second.status is ReleaseStatus.REJECTED
    assert "already has a release in flight: shop-web-1" in second.outcome_reason
    release_id, _, rejection = world.bus.sent[-1]
    assert release_id == "shop-web-2"
    assert isinstance(rejection, ReleaseRejected)
    assert world.store.locks == {"shop/web": RID}


async def test_another_target_may_be_released_at_the_same_time(world: World) -> None:
    await world.planner.on_request(raw_request())
    api = {"target": {"namespace": "shop", "name": "api"}}
    await world.planner.on_request(raw_request("shop-api-1", "req-2", **api))
    assert world.store.state("shop-api-1").status is ReleaseStatus.APPLYING
    assert world.store.locks == {"shop/web": RID, "shop/api": "shop-api-1"}


async def test_a_malformed_request_is_answered_with_every_problem_and_no_state(
    world: World,
) -> None:
    bad = raw_request(version={"image": "Shop Web:latest"}, requested_by="", extra=1)
    await world.planner.on_request(bad, delivery(1))
    assert world.store.releases == {}
    assert world.store.locks == {}
    [(token, event_id, refusal)] = world.bus.sent
    assert (token, event_id) == ("req-1", "req-1.refused")
    assert isinstance(refusal, RequestRefused)
    assert refusal.release_id == RID
    text = " | ".join(refusal.reasons)
    assert "version.image" in text
    assert "requested_by" in text
    assert "extra" in text


async def test_a_request_without_a_target_is_refused_and_its_release_id_stays_free(
    world: World,
) -> None:
    bad = raw_request()
    body = dict(bad.data.model_extra or {})
    del body["target"]
    await world.planner.on_request(
        bad.model_copy(update={"data": ReleaseRequestPayload.model_validate(body)})
    )
    [(_, _, refusal)] = world.bus.sent
    assert isinstance(refusal, RequestRefused)
    assert any(r.startswith("malformed request: target") for r in refusal.reasons)
    # Corrected and sent again under a new request id, the same release id is admitted.
    await world.planner.on_request(raw_request(RID, "req-2"), delivery(1))
    assert world.store.state().status is ReleaseStatus.APPLYING


async def test_a_target_without_policy_is_rejected_and_holds_no_lock(world: World) -> None:
    world.cluster.policies = []
    await world.planner.on_request(raw_request())
    state = world.store.state()
    assert state.status is ReleaseStatus.REJECTED
    assert "no ReleasePolicy" in state.outcome_reason
    assert world.store.locks == {}
    assert world.bus.kinds() == (ReleaseRejected,)
    rejection = world.bus.sent[0][2]
    assert isinstance(rejection, ReleaseRejected) and rejection.request_id == "req-1"


async def test_an_event_for_an_unknown_release_is_a_no_op(world: World) -> None:
    await world.planner.on_event(envelope(reached(accepted(), 0), "reached-0"))
    assert world.bus.sent == []
    assert world.store.releases == {}


async def test_a_lost_compare_and_set_decides_again(world: World) -> None:
    await world.planner.on_request(raw_request())
    state = world.store.state()
    world.store.conflicts = 1
    await world.planner.on_event(envelope(reached(state, 0), "reached-0"))
    assert world.store.state().status is ReleaseStatus.ANALYSING
    assert world.bus.kinds()[-1] is RequestAnalysis


async def test_a_publish_lost_after_the_write_goes_out_on_redelivery(world: World) -> None:
    await world.planner.on_request(raw_request())
    state = world.store.state()
    world.bus.failures = 1
    with pytest.raises(ConnectionError):
        await world.planner.on_event(envelope(reached(state, 0), "reached-0"))
    assert world.store.state().status is ReleaseStatus.ANALYSING
    await world.planner.on_event(envelope(reached(state, 0), "reached-0"))
    assert world.bus.ids()[-1] == f"{RID}.analyse.0"
    assert world.store.writes == 2


async def test_a_release_driven_to_the_end_frees_its_target(world: World) -> None:
    await world.planner.on_request(raw_request())
    for index in range(3):
        state = world.store.state()
        await world.planner.on_event(envelope(reached(state, index), f"reached-{index}"))
        await world.planner.on_event(
            envelope(verdict(state, index, VerdictResult.PASS), f"v-{index}")
        )
    assert world.store.state().status is ReleaseStatus.PROMOTING
    assert world.bus.kinds()[-1] is RequestPromotion
    done = PromotionCompleted(target=TARGET, image=NEW_IMAGE)
    await world.planner.on_event(envelope(done, "promoted"))
    assert world.store.state().status is ReleaseStatus.SUCCEEDED
    assert world.bus.kinds()[-1] is ReleaseSucceeded
    assert world.store.locks == {}


async def test_reconcile_asks_for_an_unanswered_step_again_then_rolls_it_back(
    world: World,
) -> None:
    await world.planner.on_request(raw_request())  # ready by T0 + 60 s, grace 10 s
    world.clock.now = at(65)
    await world.planner.reconcile_once()
    assert world.store.state().status is ReleaseStatus.APPLYING
    world.clock.now = at(71)
    await world.planner.reconcile_once()
    assert world.store.state().status is ReleaseStatus.APPLYING
    assert world.bus.kinds()[-1] is ApplyPhase
    assert world.bus.sent[-1][1] == "shop-web-1.apply.0.r1"
    world.clock.now = at(60 + 2 * 70 + 11)  # two more windows (and graces) of silence
    await world.planner.reconcile_once()
    state = world.store.state()
    assert state.status is ReleaseStatus.ROLLING_BACK
    assert "no executor answered" in state.outcome_reason
    assert world.bus.kinds()[-1] is RollbackRequested
    # Our own rollback request coming back changes nothing more.
    _, event_id, data = world.bus.sent[-1]
    await world.planner.on_event(envelope(data, event_id))
    assert world.store.state() == state
