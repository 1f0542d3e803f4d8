"""Why a release is rolled back, in the words of its outcome, and who may abort it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from canaryflow.rollback.triggers import abort_refusal, reason_of
from canaryflow_contracts import Envelope
from canaryflow_contracts.events import (
    AbortRelease,
    AnalysisVerdict,
    PhaseFailed,
    PhaseReached,
    PlannedStep,
    RollbackRequested,
    TargetRef,
    VerdictAction,
    VerdictResult,
)
from canaryflow_contracts.policy import OperatorAction, OperatorGrant
from tests.unit.support_state import sample_state

TARGET = TargetRef(namespace="shop", name="web")
STEP = PlannedStep(index=1, weight=50, hold_seconds=30)


def test_each_trigger_gives_its_reason() -> None:
    failed_verdict = AnalysisVerdict(
        target=TARGET,
        step=STEP,
        result=VerdictResult.FAIL,
        action=VerdictAction.ROLLBACK,
        final=True,
        reason="error rate 0.2 > 0.05",
        checks=[],
    )
    assert reason_of(failed_verdict) == "analysis failed at step 1: error rate 0.2 > 0.05"
    failed = PhaseFailed(target=TARGET, step=STEP, reason="pods not Ready")
    assert reason_of(failed) == "step 1 failed: pods not Ready"
    requested = RollbackRequested(target=TARGET, reason="paused too long", requested_by="planner")
    assert reason_of(requested) == "paused too long"
    unexplained = RollbackRequested(target=TARGET, reason="", requested_by="alice")
    assert reason_of(unexplained) == "requested by alice"
    assert reason_of(AbortRelease(actor="alice@example", reason="wrong build")) == (
        "aborted by alice@example: wrong build"
    )
    assert reason_of(AbortRelease(actor="bob")) == "aborted by bob"


def test_an_event_that_is_no_trigger_has_no_reason() -> None:
    reached = PhaseReached(
        target=TARGET, step=STEP, canary_weight=50, canary_ready=1, stable_ready=1
    )
    with pytest.raises(TypeError, match=r"phase\.reached\.v1 is not a reason to roll back"):
        reason_of(reached)


def test_abort_follows_the_policy_operators() -> None:
    grants = [OperatorGrant(subject="*@sre.example", actions=[OperatorAction.ABORT])]
    state = sample_state().model_copy(update={"operators": grants})
    now = datetime.now(UTC)

    def abort(actor: str) -> Envelope[AbortRelease]:
        return Envelope.wrap(AbortRelease(actor=actor), release_id=state.release_id, source="t")

    assert abort_refusal(abort("alice@sre.example"), state, now) is None
    refusal = abort_refusal(abort("mallory@example"), state, now)
    assert refusal is not None and "mallory@example may not abort" in refusal
