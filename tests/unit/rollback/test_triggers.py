"""Which events start a rollback, and which releases are left alone."""

from __future__ import annotations

import pytest

from canaryflow.rollback.triggers import Trigger, should_restore, trigger_of
from canaryflow_contracts.events import (
    AbortRelease,
    AnalysisVerdict,
    PhaseFailed,
    PlannedStep,
    RollbackRequested,
    TargetRef,
    VerdictAction,
    VerdictResult,
)
from canaryflow_contracts.state import ReleaseState, ReleaseStatus
from tests.unit.support_state import sample_state

TARGET = TargetRef(namespace="shop", name="web")
STEP = PlannedStep(index=1, weight=50, hold_seconds=30)


def state(status: ReleaseStatus) -> ReleaseState:
    return sample_state().model_copy(update={"status": status, "target": TARGET})


def verdict(action: VerdictAction, result: VerdictResult) -> AnalysisVerdict:
    return AnalysisVerdict(
        target=TARGET,
        step=STEP,
        result=result,
        action=action,
        final=True,
        reason="error rate 0.2 > 0.05",
        checks=[],
    )


def test_failed_verdict_rolls_back() -> None:
    trigger = trigger_of(verdict(VerdictAction.ROLLBACK, VerdictResult.FAIL), None)
    assert trigger == Trigger(TARGET, "analysis failed at step 1: error rate 0.2 > 0.05")


@pytest.mark.parametrize("action", [VerdictAction.CONTINUE, VerdictAction.PAUSE])
def test_other_verdicts_do_not(action: VerdictAction) -> None:
    assert trigger_of(verdict(action, VerdictResult.INSUFFICIENT_DATA), None) is None


def test_phase_failed_and_rollback_requested() -> None:
    failed = PhaseFailed(target=TARGET, step=STEP, reason="pods not Ready")
    assert trigger_of(failed, None) == Trigger(TARGET, "step 1 failed: pods not Ready")
    requested = RollbackRequested(target=TARGET, reason="paused too long", requested_by="planner")
    assert trigger_of(requested, None) == Trigger(TARGET, "paused too long")
    unexplained = RollbackRequested(target=TARGET, reason="", requested_by="alice")
    assert trigger_of(unexplained, None) == Trigger(TARGET, "requested by alice")


def test_abort_takes_its_target_from_the_state() -> None:
    abort = AbortRelease(actor="alice@example", reason="wrong build")
    assert trigger_of(abort, state(ReleaseStatus.ANALYSING)) == Trigger(
        TARGET, "aborted by alice@example: wrong build"
    )
    assert trigger_of(AbortRelease(actor="bob"), state(ReleaseStatus.APPLYING)) == Trigger(
        TARGET, "aborted by bob"
    )


def test_abort_of_an_unknown_release_does_nothing() -> None:
    assert trigger_of(AbortRelease(actor="alice"), None) is None


@pytest.mark.parametrize(
    ("status", "restore"),
    [
        (ReleaseStatus.SUCCEEDED, False),
        (ReleaseStatus.ROLLED_BACK, True),  # a replay republishes the same completion
        (ReleaseStatus.ROLLING_BACK, True),
        (ReleaseStatus.PROMOTING, True),
        (ReleaseStatus.APPLYING, True),
    ],
)
def test_only_succeeded_releases_are_left_alone(status: ReleaseStatus, restore: bool) -> None:
    assert should_restore(state(status)) is restore


def test_no_planner_state_still_restores() -> None:
    assert should_restore(None)
