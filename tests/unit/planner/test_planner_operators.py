"""People steering a release: who may do what, set weight, and what a refusal changes (nothing)."""

from __future__ import annotations

from typing import Any

import pytest

from canaryflow.planner.machine import Command, decide
from canaryflow.rollback.triggers import abort_refusal
from canaryflow.runtime import operators
from canaryflow_contracts import EventData
from canaryflow_contracts.events import (
    AbortRelease,
    ApplyPhase,
    OperatorCommandRefused,
    PauseRelease,
    PromoteNow,
    ReleaseStatusChanged,
    ResumeRelease,
    SetWeight,
)
from canaryflow_contracts.policy import OperatorAction, OperatorGrant
from canaryflow_contracts.state import ReleaseState, ReleaseStatus
from tests.unit.planner.factory import RID, accepted, at, envelope, reached

GRANTS = [
    OperatorGrant(subject="alice@shop", actions=list(OperatorAction)),
    OperatorGrant(subject="*@sre.example", actions=[OperatorAction.ABORT]),
]


def release(grants: list[OperatorGrant] | None = GRANTS, **changes: Any) -> ReleaseState:
    """Step 1 (10 %) in place and under analysis, with these operators."""
    state = accepted().model_copy(update={"operators": grants, **changes})
    decision = decide(state, envelope(reached(state, 0), "reached-0"), at(10))
    assert decision.state is not None and decision.state.status is ReleaseStatus.ANALYSING
    return decision.state


def on(state: ReleaseState, data: EventData, event_id: str) -> tuple[ReleaseState, list[Command]]:
    decision = decide(state, envelope(data, event_id), at(20))
    return decision.state or state, decision.commands


@pytest.mark.parametrize(
    ("actor", "action", "allowed"),
    [
        ("alice@shop", OperatorAction.PROMOTE, True),
        ("bob@sre.example", OperatorAction.ABORT, True),
        ("bob@sre.example", OperatorAction.PAUSE, False),
        ("mallory", OperatorAction.ABORT, False),
    ],
)
def test_a_grant_names_who_may_do_what(actor: str, action: OperatorAction, allowed: bool) -> None:
    assert (operators.refusal(GRANTS, actor, action) is None) is allowed


def test_without_operators_in_the_policy_only_what_makes_a_release_safer_is_allowed() -> None:
    allowed = {a for a in OperatorAction if operators.refusal(None, "anyone", a) is None}
    assert allowed == {OperatorAction.PAUSE, OperatorAction.ABORT}
    why = operators.refusal(None, "anyone", OperatorAction.PROMOTE)
    assert why is not None and "spec.operators" in why


def test_an_unauthorised_abort_is_refused_with_an_event_and_the_release_carries_on() -> None:
    before = release()
    after, commands = on(before, AbortRelease(actor="mallory", reason="why not"), "abort-1")

    [command] = commands
    assert isinstance(command.data, OperatorCommandRefused)
    assert command.data.actor == "mallory" and command.data.action == "abort"
    assert command.data.reason == "why not" and "may not abort" in command.data.refusal
    assert command.event_id == operators.refused_id(RID, "abort-1")
    assert after.status is ReleaseStatus.ANALYSING and after.steps == before.steps
    assert (after.history[-1].event, after.history[-1].actor) == ("refused", "mallory")
    # A replay announces the same refusal (the same id: JetStream keeps one).
    replay = decide(after, envelope(AbortRelease(actor="mallory"), "abort-1"), at(30))
    assert replay.state is None and [c.event_id for c in replay.commands] == [command.event_id]


def test_the_rollback_service_refuses_the_same_abort_for_the_same_reason() -> None:
    state = release()
    mallory = AbortRelease(actor="mallory")
    planner_reason = decide(state, envelope(mallory, "abort-1"), at(20)).commands[0].data
    assert isinstance(planner_reason, OperatorCommandRefused)
    assert abort_refusal(mallory, state) == planner_reason.refusal
    assert abort_refusal(AbortRelease(actor="eve@sre.example"), state) is None


def test_an_allowed_pause_is_recorded_with_who_and_why() -> None:
    state, commands = on(release(), PauseRelease(actor="alice@shop", reason="look"), "pause-1")
    assert state.paused
    assert (state.history[-1].event, state.history[-1].actor, state.history[-1].detail) == (
        "paused",
        "alice@shop",
        "look",
    )
    assert any(isinstance(c.data, ReleaseStatusChanged) for c in commands)


def test_set_weight_puts_a_new_step_in_place_and_keeps_the_rest_of_the_plan() -> None:
    before = release()
    after, commands = on(before, SetWeight(actor="alice@shop", weight=40), "weight-1")

    assert after.status is ReleaseStatus.APPLYING and after.step_index == 1
    assert [(s.index, s.weight) for s in after.steps] == [(0, 10), (1, 40), (2, 25), (3, 50)]
    [apply] = [c for c in commands if isinstance(c.data, ApplyPhase)]
    assert isinstance(apply.data, ApplyPhase) and apply.data.step.weight == 40
    assert apply.event_id == f"{RID}.apply.1"
    assert after.history[-1].event == "weight-set"


def test_a_weight_above_the_releases_maximum_is_refused() -> None:
    state = release(max_weight=50)
    after, commands = on(state, SetWeight(actor="alice@shop", weight=60), "weight-1")
    assert after.step_index == 0 and after.steps == state.steps
    [command] = commands
    assert isinstance(command.data, OperatorCommandRefused)
    assert "above this release's maximum of 50%" in command.data.refusal


def test_a_weight_at_the_releases_maximum_is_obeyed() -> None:
    # The maximum is allowed: only a weight above it is refused.
    state = release(max_weight=50)
    after, commands = on(state, SetWeight(actor="alice@shop", weight=50), "weight-1")
    assert [s.weight for s in after.steps] == [10, 50, 25, 50]
    assert not any(isinstance(c.data, OperatorCommandRefused) for c in commands)
    [apply] = [c for c in commands if isinstance(c.data, ApplyPhase)]
    assert isinstance(apply.data, ApplyPhase) and apply.data.step.weight == 50


def test_resume_and_promote_without_a_grant_are_refused() -> None:
    state = release(grants=None)
    for data, event_id in (
        (ResumeRelease(actor="alice"), "resume-1"),
        (PromoteNow(actor="alice"), "promote-1"),
    ):
        after, commands = on(state, data, event_id)
        assert after.status is ReleaseStatus.ANALYSING
        assert [type(c.data) for c in commands] == [OperatorCommandRefused]
