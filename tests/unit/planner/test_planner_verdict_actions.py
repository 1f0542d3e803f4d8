"""The policy's word on a verdict, carried by its action, is what the planner does."""

from __future__ import annotations

from canaryflow_contracts.events import (
    AnalysisVerdict,
    ApplyPhase,
    ReleaseStatusChanged,
    VerdictAction,
    VerdictResult,
)
from canaryflow_contracts.state import ReleaseStatus
from tests.unit.planner.factory import CHECK, TARGET, at
from tests.unit.planner.test_planner_machine import analysing, kinds, of


def judged(
    step: int, result: VerdictResult, action: VerdictAction, *, final: bool = True
) -> AnalysisVerdict:
    release = analysing(step)
    return AnalysisVerdict(
        target=TARGET,
        step=release.state.steps[step],
        result=result,
        action=action,
        final=final,
        reason=f"{result.value} then {action.value}",
        checks=[CHECK] if result is VerdictResult.FAIL else [],
    )


def test_an_extended_hold_keeps_analysing_and_restarts_the_reconciles_patience() -> None:
    release = analysing(0)
    extended = judged(0, VerdictResult.INCONCLUSIVE, VerdictAction.EXTEND, final=False)
    commands = release.on(extended, "v-extend", at(200))
    assert release.status() is ReleaseStatus.ANALYSING and not release.state.paused
    assert release.state.last_command_at == at(200)
    assert release.state.history[-1].event == "extended"
    status = of(commands, ReleaseStatusChanged).data
    assert isinstance(status, ReleaseStatusChanged) and status.status == "extended"
    assert kinds(commands) == (ReleaseStatusChanged,)


def test_inconclusive_that_the_policy_continues_on_advances() -> None:
    release = analysing(0)
    commands = release.on(
        judged(0, VerdictResult.INCONCLUSIVE, VerdictAction.CONTINUE), "v-inc", at(200)
    )
    assert release.status() is ReleaseStatus.APPLYING and release.state.step_index == 1
    assert ApplyPhase in kinds(commands)


def test_inconclusive_that_pauses_waits_for_a_person() -> None:
    release = analysing(0)
    release.on(judged(0, VerdictResult.INCONCLUSIVE, VerdictAction.PAUSE), "v-inc", at(200))
    assert release.status() is ReleaseStatus.ANALYSING and release.state.paused


def test_a_business_drop_held_for_a_decision_pauses_instead_of_rolling_back() -> None:
    release = analysing(1)
    commands = release.on(judged(1, VerdictResult.FAIL, VerdictAction.PAUSE), "v-drop", at(200))
    assert release.status() is ReleaseStatus.ANALYSING and release.state.paused
    assert release.state.last_verdict is not None
    assert release.state.last_verdict.action is VerdictAction.PAUSE
    status = of(commands, ReleaseStatusChanged).data
    assert isinstance(status, ReleaseStatusChanged) and status.status == "paused"


def test_insufficient_data_never_advances_even_if_an_action_says_continue() -> None:
    release = analysing(0)
    release.on(
        judged(0, VerdictResult.INSUFFICIENT_DATA, VerdictAction.CONTINUE), "v-none", at(200)
    )
    assert release.status() is ReleaseStatus.ANALYSING and release.state.paused


def test_a_rollback_action_rolls_back_whatever_the_result() -> None:
    release = analysing(0)
    release.on(judged(0, VerdictResult.INSUFFICIENT_DATA, VerdictAction.ROLLBACK), "v-rb", at(200))
    assert release.status() is ReleaseStatus.ROLLING_BACK
