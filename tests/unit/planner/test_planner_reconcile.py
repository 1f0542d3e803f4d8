"""The reconcile safety net: silence past a limit re-issues the command or rolls back."""

from __future__ import annotations

from canaryflow.planner.machine import NO_CHANGE
from canaryflow.planner.reconcile import ReconcileTimings, reconcile
from canaryflow_contracts.events import RequestAnalysis, RequestPromotion, RollbackRequested
from canaryflow_contracts.state import ReleaseState, ReleaseStatus
from tests.unit.planner.factory import RID, accepted, at

TIMINGS = ReconcileTimings(
    grace_seconds=10, analysis_interval_seconds=5, completion_grace_seconds=60
)


def with_status(status: ReleaseStatus, **changes: object) -> ReleaseState:
    return accepted().model_copy(update={"status": status, **changes})


def test_a_step_not_in_place_by_its_deadline_is_rolled_back() -> None:
    state = accepted()  # ready by T0 + 60 s
    assert reconcile(state, at(70), TIMINGS) == NO_CHANGE
    decision = reconcile(state, at(71), TIMINGS)
    assert decision.state is not None
    assert decision.state.status is ReleaseStatus.ROLLING_BACK
    assert decision.state.reissued == 1
    assert decision.state.last_command_at == at(71)
    [command] = decision.commands
    assert isinstance(command.data, RollbackRequested)
    assert command.data.reason == "step 0 not in place by its deadline"
    assert command.event_id == f"{RID}.rollback.r1"


def test_an_analysis_without_a_final_verdict_is_requested_again() -> None:
    state = with_status(ReleaseStatus.ANALYSING, last_command_at=at(100))
    # hold 30 s + 3 intervals of 5 s + grace 10 s
    assert reconcile(state, at(155), TIMINGS) == NO_CHANGE
    decision = reconcile(state, at(156), TIMINGS)
    assert decision.state is not None
    assert decision.state.status is ReleaseStatus.ANALYSING
    assert decision.state.reissued == 1
    assert decision.state.last_command_at == at(156)
    assert decision.state.history[-1].event == "reissued"
    [command] = decision.commands
    assert isinstance(command.data, RequestAnalysis)
    assert command.event_id == f"{RID}.analyse.0.r1"
    # The clock restarts from the re-issue, and the next one gets another fresh id.
    assert reconcile(decision.state, at(200), TIMINGS) == NO_CHANGE
    second = reconcile(decision.state, at(212), TIMINGS)
    assert second.commands[0].event_id == f"{RID}.analyse.0.r2"


def test_a_paused_analysis_is_not_re_requested_but_rolled_back_past_its_limit() -> None:
    state = with_status(
        ReleaseStatus.ANALYSING, paused=True, paused_at=at(100), last_command_at=at(90)
    )
    assert reconcile(state, at(400), TIMINGS) == NO_CHANGE  # limit 300 s
    decision = reconcile(state, at(401), TIMINGS)
    assert decision.state is not None
    assert decision.state.status is ReleaseStatus.ROLLING_BACK
    assert not decision.state.paused
    [command] = decision.commands
    assert isinstance(command.data, RollbackRequested)
    assert "paused for longer than 300s" in command.data.reason


def test_an_unanswered_promotion_is_requested_again() -> None:
    state = with_status(ReleaseStatus.PROMOTING, last_command_at=at(100), reissued=2)
    assert reconcile(state, at(160), TIMINGS) == NO_CHANGE
    decision = reconcile(state, at(161), TIMINGS)
    [command] = decision.commands
    assert isinstance(command.data, RequestPromotion)
    assert command.event_id == f"{RID}.promote.r3"
    assert decision.state is not None
    assert decision.state.reissued == 3


def test_an_unfinished_rollback_is_requested_again_with_its_reason() -> None:
    state = with_status(
        ReleaseStatus.ROLLING_BACK, last_command_at=at(100), outcome_reason="errors too high"
    )
    decision = reconcile(state, at(161), TIMINGS)
    [command] = decision.commands
    assert isinstance(command.data, RollbackRequested)
    assert command.data.reason == "errors too high"
    assert command.event_id == f"{RID}.rollback.r1"


def test_terminal_releases_are_left_alone() -> None:
    for status in (ReleaseStatus.SUCCEEDED, ReleaseStatus.ROLLED_BACK, ReleaseStatus.REJECTED):
        assert reconcile(with_status(status, paused=True, paused_at=at(0)), at(10_000)) == NO_CHANGE
