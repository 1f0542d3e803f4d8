"""The reconcile safety net: silence past a limit re-issues the command or rolls back."""

from __future__ import annotations

from canaryflow.planner.machine import NO_CHANGE
from canaryflow.planner.reconcile import ReconcileTimings, reconcile
from canaryflow_contracts.events import (
    ApplyPhase,
    RequestAnalysis,
    RequestPromotion,
    ResumeRelease,
    RollbackRequested,
    VerdictResult,
)
from canaryflow_contracts.state import ReleaseState, ReleaseStatus
from tests.unit.planner.factory import RID, accepted, at, verdict
from tests.unit.planner.test_planner_machine import analysing, of

TIMINGS = ReconcileTimings(
    grace_seconds=10, analysis_interval_seconds=5, completion_grace_seconds=60
)


def with_status(status: ReleaseStatus, **changes: object) -> ReleaseState:
    return accepted().model_copy(update={"status": status, **changes})


def test_a_step_unanswered_past_its_deadline_is_asked_for_again_a_window_apart() -> None:
    state = accepted()  # started at T0, ready by T0 + 60 s: a window of 60 s, grace 10 s
    assert reconcile(state, at(70), TIMINGS) == NO_CHANGE
    decision = reconcile(state, at(71), TIMINGS)
    assert decision.state is not None
    assert decision.state.status is ReleaseStatus.APPLYING
    assert decision.state.reissued == 1
    [command] = decision.commands
    assert isinstance(command.data, ApplyPhase)
    # The step's own deadline, which the executor's authority checks; a late executor
    # gives itself the window from when it takes the step up.
    assert command.data.ready_deadline == state.ready_deadline
    assert command.event_id == f"{RID}.apply.0.r1"
    again = decision.state
    assert reconcile(again, at(71 + 70), TIMINGS) == NO_CHANGE
    assert reconcile(again, at(71 + 71), TIMINGS).commands[0].event_id == f"{RID}.apply.0.r2"


def test_a_step_no_executor_answers_for_two_more_windows_is_rolled_back() -> None:
    state = accepted()
    still = reconcile(state, at(60 + 2 * 70 + 10), TIMINGS).state
    assert still is not None and still.status is ReleaseStatus.APPLYING
    decision = reconcile(state, at(60 + 2 * 70 + 11), TIMINGS)
    assert decision.state is not None
    assert decision.state.status is ReleaseStatus.ROLLING_BACK
    [command] = decision.commands
    assert isinstance(command.data, RollbackRequested)
    assert command.data.reason == (
        "step 0 not in place: no executor answered within 2 more windows of 60s after its deadline"
    )
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
    # It continues the step's request (one analysis, taken over), not a second one beside it.
    assert (command.data.continues, command.data.reissue) == (f"{RID}.analyse.0", 1)
    # The clock restarts from the re-issue, and the next one gets another fresh id.
    assert reconcile(decision.state, at(200), TIMINGS) == NO_CHANGE
    second = reconcile(decision.state, at(212), TIMINGS)
    [again] = second.commands
    assert again.event_id == f"{RID}.analyse.0.r2"
    assert isinstance(again.data, RequestAnalysis)
    assert (again.data.continues, again.data.reissue) == (f"{RID}.analyse.0", 2)


def test_a_re_issue_after_a_resume_continues_the_analysis_the_resume_asked_for() -> None:
    release = analysing(0)
    release.on(verdict(release.state, 0, VerdictResult.INSUFFICIENT_DATA), "v-0", at(140))
    resumed = of(release.on(ResumeRelease(actor="alice"), "resume-1", at(150)), RequestAnalysis)
    assert release.state.analysis_request == resumed.event_id != f"{RID}.analyse.0"
    decision = reconcile(release.state, at(150 + 30 + 15 + 10 + 1), TIMINGS)
    [command] = decision.commands
    assert isinstance(command.data, RequestAnalysis)
    assert command.data.continues == resumed.event_id
    assert command.event_id == f"{resumed.event_id}.r1"
    assert isinstance(resumed.data, RequestAnalysis) and resumed.data.continues == ""


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
