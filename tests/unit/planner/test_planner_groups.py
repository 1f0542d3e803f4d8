"""Release groups: members start in dependency order, wait at the group's gate, are promoted
together in that order, and all go back (the last started first) when one fails."""

from __future__ import annotations

from datetime import datetime

from canaryflow.planner import groups, machine, waiting
from canaryflow.planner.groups import member_id
from canaryflow_contracts import Envelope
from canaryflow_contracts.events import (
    EnvVar,
    GroupMember,
    GroupPromoteMember,
    GroupRequested,
    GroupRolledBack,
    GroupStatusChanged,
    GroupSucceeded,
    GroupTransition,
    OpenGate,
    PromotionCompleted,
    ReleaseRequested,
    RequestPromotion,
    RollbackCompleted,
    RollbackRequested,
    TargetRef,
    VerdictResult,
    VersionSpec,
)
from canaryflow_contracts.state import GroupState, GroupStatus, ReleaseState, ReleaseStatus
from tests.unit.planner.factory import (
    NEW_IMAGE,
    admission,
    at,
    reached,
    verdict,
)

T0, T1 = at(0), at(1)
GID = "checkout-1"
API = TargetRef(namespace="shop", name="api")
WEB = TargetRef(namespace="shop", name="web")
API_VERSION = VersionSpec(image="registry.local:5000/shop/api:v2@sha256:" + "a" * 64)
WEB_VERSION = VersionSpec(image=NEW_IMAGE, env=[EnvVar(name="CART_API", value="v2")])


def _group_request() -> Envelope[GroupRequested]:
    request = GroupRequested(
        members=[
            GroupMember(target=API, version=API_VERSION),
            GroupMember(target=WEB, version=WEB_VERSION),
        ],
        requested_by="ci@shop",
        reason="checkout needs the new cart API",
    )
    return Envelope.wrap(request, release_id=GID, source="ci", id="group-req-1")


def _planned(now: datetime = T0) -> GroupState:
    decision = groups.plan(GID, _group_request(), now)
    assert decision.state is not None
    return decision.state


def _member_request(group: GroupState, index: int) -> ReleaseRequested:
    command = groups.start_command(group, index)
    assert isinstance(command.data, ReleaseRequested)
    return command.data


def _member_release(group: GroupState, index: int, now: datetime = T1) -> ReleaseState:
    """The member's release as the machine admits it (the factory's policy, any target)."""
    request = _member_request(group, index)
    envelope = Envelope.wrap(request, release_id=member_id(GID, index), source="planner")
    plain = admission(request.model_copy(update={"target": WEB}), now)
    decision = machine.accept(member_id(GID, index), envelope, plain, now)
    assert decision.state is not None
    return decision.state.model_copy(update={"target": request.target})


def _send(state: ReleaseState, data: object, event_id: str, seconds: float) -> machine.Decision:
    envelope = Envelope.wrap(data, release_id=state.release_id, source="test", id=event_id)  # type: ignore[type-var]
    return machine.decide(state, envelope, at(seconds))


def _through_every_step(state: ReleaseState) -> ReleaseState:
    """Every step reached and passed, as the executor and the metrics-watcher would say."""
    clock = 10.0
    for index in range(len(state.steps)):
        target = state.target
        for data, name in (
            (reached(state, index).model_copy(update={"target": target}), "reached"),
            (
                verdict(state, index, VerdictResult.PASS).model_copy(update={"target": target}),
                "verdict",
            ),
        ):
            decision = _send(state, data, f"{name}-{index}", clock)
            assert decision.state is not None, (name, index, state.status)
            state = decision.state
            clock += 10
    return state


def _rolled_back(state: ReleaseState, seconds: float) -> ReleaseState:
    done = RollbackCompleted(
        target=state.target, reason="group", stable_replicas=4, seconds_to_restore=1.0
    )
    decision = _send(state, done, f"rolled-back-{state.release_id}", seconds)
    assert decision.state is not None
    return decision.state


def _promoted(state: ReleaseState, seconds: float) -> ReleaseState:
    done = PromotionCompleted(target=state.target, image=state.version.image)
    decision = _send(state, done, f"promoted-{state.release_id}", seconds)
    assert decision.state is not None
    return decision.state


def _transitions(decision: groups.GroupDecision) -> list[tuple[GroupTransition, str]]:
    return [
        (c.data.status, c.data.member)
        for c in decision.commands
        if isinstance(c.data, GroupStatusChanged)
    ]


# --------------------------------------------------------------------------- the member


def test_a_member_passes_every_step_then_waits_at_the_groups_gate_not_promoting() -> None:
    group = _planned()
    member = _member_release(group, 0)
    assert member.group == GID
    assert member.hooks[-1].name == waiting.GROUP_GATE

    at_gate = _through_every_step(member)

    assert at_gate.status is ReleaseStatus.WAITING
    assert waiting.at_group_gate(at_gate)
    assert groups.kind_of(at_gate) is groups.Kind.READY


def test_only_its_group_opens_the_groups_gate() -> None:
    at_gate = _through_every_step(_member_release(_planned(), 0))

    by_a_person = OpenGate(actor="alice", gate=waiting.GROUP_GATE)
    after = _send(at_gate, by_a_person, "open-1", 100).state
    assert after is None or waiting.at_group_gate(after)
    # Even a person allowed to open gates cannot open this one.
    allowed = machine._transition(
        at_gate, Envelope.wrap(by_a_person, release_id=at_gate.release_id, source="cli"), at(100)
    )
    assert allowed is None
    other_group = GroupPromoteMember(group="other", target=API)
    assert _send(at_gate, other_group, "promote-0", 100).state is None

    decision = _send(at_gate, GroupPromoteMember(group=GID, target=API), "promote-1", 100)

    assert decision.state is not None
    assert decision.state.status is ReleaseStatus.PROMOTING
    promotions = [c.data for c in decision.commands if isinstance(c.data, RequestPromotion)]
    assert promotions == [RequestPromotion(target=API, version=API_VERSION)]


# --------------------------------------------------------------------------- the group


def test_members_start_in_order_and_each_gets_exactly_the_version_asked_for() -> None:
    group = _planned()

    first = groups.advance(group, {}, at(1))

    assert first.state is not None
    starts = [c for c in first.commands if isinstance(c.data, ReleaseRequested)]
    assert [c.subject_key for c in starts] == [member_id(GID, 0)]
    assert starts[0].data == ReleaseRequested(
        target=API,
        version=API_VERSION,
        requested_by="ci@shop",
        reason=f"group {GID}, member 1 of 2: checkout needs the new cart API",
        group=GID,
    )
    # The first member still runs: nothing more, however often the group is advanced.
    running = _member_release(first.state, 0)
    assert groups.advance(first.state, {running.release_id: running}, at(5)).state is None

    at_gate = _through_every_step(running)
    second = groups.advance(first.state, {running.release_id: at_gate}, at(60))

    assert second.state is not None
    assert _transitions(second) == [
        (GroupTransition.MEMBER_WAITING, member_id(GID, 0)),
        (GroupTransition.MEMBER_STARTED, member_id(GID, 1)),
    ]
    web = [c.data for c in second.commands if isinstance(c.data, ReleaseRequested)]
    assert [r.version for r in web] == [WEB_VERSION]


def _both_at_gate() -> tuple[GroupState, dict[str, ReleaseState | None]]:
    group = _planned()
    state = groups.advance(group, {}, at(1)).state
    assert state is not None
    api = _through_every_step(_member_release(state, 0))
    state = groups.advance(state, {api.release_id: api}, at(60)).state
    assert state is not None
    web = _through_every_step(_member_release(state, 1, at(61)))
    return state, {api.release_id: api, web.release_id: web}


def test_every_member_passed_so_they_are_promoted_together_in_dependency_order() -> None:
    group, members = _both_at_gate()

    promoting = groups.advance(group, members, at(120))

    assert promoting.state is not None
    assert promoting.state.status is GroupStatus.PROMOTING
    promotes = [c for c in promoting.commands if isinstance(c.data, GroupPromoteMember)]
    assert [c.subject_key for c in promotes] == [member_id(GID, 0)]  # the cart API first

    api = _send(members[member_id(GID, 0)], promotes[0].data, promotes[0].event_id, 121).state  # type: ignore[arg-type]
    assert api is not None and api.status is ReleaseStatus.PROMOTING
    members[api.release_id] = _promoted(api, 125)
    after_api = groups.advance(promoting.state, members, at(126))
    assert after_api.state is not None
    promotes = [c for c in after_api.commands if isinstance(c.data, GroupPromoteMember)]
    assert [c.subject_key for c in promotes] == [member_id(GID, 1)]

    web = _send(members[member_id(GID, 1)], promotes[0].data, promotes[0].event_id, 127).state  # type: ignore[arg-type]
    assert web is not None
    members[web.release_id] = _promoted(web, 130)
    done = groups.advance(after_api.state, members, at(131))

    assert done.state is not None and done.state.status is GroupStatus.SUCCEEDED
    outcomes = [c.data for c in done.commands if isinstance(c.data, GroupSucceeded)]
    assert len(outcomes) == 1
    assert groups.advance(done.state, members, at(132)).state is None


def test_the_second_member_fails_and_the_first_goes_back_after_it() -> None:
    group = _planned()
    state = groups.advance(group, {}, at(1)).state
    assert state is not None
    api = _through_every_step(_member_release(state, 0))
    state = groups.advance(state, {api.release_id: api}, at(60)).state
    assert state is not None
    web = _member_release(state, 1, at(61))
    failing = verdict(web, 0, VerdictResult.FAIL).model_copy(update={"target": WEB})
    web = _send(web, reached(web, 0).model_copy(update={"target": WEB}), "r", 62).state  # type: ignore[assignment]
    assert web is not None
    web = _send(web, failing, "v", 70).state  # type: ignore[assignment]
    assert web is not None and web.status is ReleaseStatus.ROLLING_BACK

    rolling = groups.advance(state, {api.release_id: api, web.release_id: web}, at(71))

    assert rolling.state is not None and rolling.state.status is GroupStatus.ROLLING_BACK
    assert rolling.state.failed_member == member_id(GID, 1)
    # The failed member's own rollback comes first: nothing is asked of the first one yet.
    assert not [c for c in rolling.commands if isinstance(c.data, RollbackRequested)]

    web = _rolled_back(web, 75)
    first_back = groups.advance(rolling.state, {api.release_id: api, web.release_id: web}, at(76))
    assert first_back.state is not None
    rollbacks = [c for c in first_back.commands if isinstance(c.data, RollbackRequested)]
    assert [c.subject_key for c in rollbacks] == [member_id(GID, 0)]

    api = _send(api, rollbacks[0].data, rollbacks[0].event_id, 77).state  # type: ignore[assignment]
    assert api is not None and api.status is ReleaseStatus.ROLLING_BACK
    api = _rolled_back(api, 80)
    ended = groups.advance(first_back.state, {api.release_id: api, web.release_id: web}, at(81))

    assert ended.state is not None and ended.state.status is GroupStatus.ROLLED_BACK
    outcome = [c.data for c in ended.commands if isinstance(c.data, GroupRolledBack)]
    assert len(outcome) == 1
    assert outcome[0].rolled_back_order == [member_id(GID, 1), member_id(GID, 0)]
    assert outcome[0].failed_member == member_id(GID, 1)


def test_a_member_rejected_at_admission_ends_the_group_before_the_next_starts() -> None:
    state = groups.advance(_planned(), {}, at(1)).state
    assert state is not None
    rejected = _member_release(state, 0).model_copy(
        update={"status": ReleaseStatus.REJECTED, "outcome_reason": "no policy"}
    )

    ended = groups.advance(state, {rejected.release_id: rejected}, at(2))

    assert ended.state is not None and ended.state.status is GroupStatus.ROLLED_BACK
    assert not [c for c in ended.commands if isinstance(c.data, ReleaseRequested)]
    assert ended.state.members[1].started_at is None


def test_a_command_no_member_reacted_to_is_sent_again_under_the_same_id() -> None:
    decision = groups.advance(_planned(), {}, at(1))
    assert decision.state is not None
    start = next(c for c in decision.commands if isinstance(c.data, ReleaseRequested))

    assert groups.reissue(decision.state, {}, at(20)) == []
    assert groups.reissue(decision.state, {}, at(40)) == [start]
    admitted = _member_release(decision.state, 0)
    assert groups.reissue(decision.state, {admitted.release_id: admitted}, at(40)) == []


def test_a_group_that_names_a_deployment_twice_or_is_too_long_is_refused() -> None:
    twice = GroupRequested(
        members=[GroupMember(target=API, version=API_VERSION)] * 2, requested_by="ci"
    )
    assert groups.check(GID, twice) == ["a Deployment may be a member once: shop/api"]
    assert groups.check("g" * 60, _group_request().data)
    assert groups.check(GID, _group_request().data) == []


def test_only_a_release_the_group_started_may_join_it() -> None:
    state = groups.advance(_planned(), {}, at(1)).state
    assert state is not None
    first, second = _member_request(state, 0), _member_request(state, 1)

    assert groups.listed(state, member_id(GID, 0), first) is None
    assert "did not start" in (groups.listed(state, member_id(GID, 1), second) or "")
    assert "not a member" in (groups.listed(state, "someone-else", first) or "")
    changed = first.model_copy(update={"version": VersionSpec(image=NEW_IMAGE)})
    assert "differs" in (groups.listed(state, member_id(GID, 0), changed) or "")
    assert "does not exist" in (groups.listed(None, member_id(GID, 0), first) or "")
