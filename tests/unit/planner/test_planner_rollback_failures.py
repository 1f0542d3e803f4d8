"""A rollback that cannot complete: asked again up to a bound, then the release ends as failed."""

from __future__ import annotations

from datetime import datetime

from canaryflow.planner import machine
from canaryflow.planner.machine import ROLLBACK_ATTEMPTS, Command, decide
from canaryflow.planner.reconcile import ReconcileTimings, reconcile
from canaryflow_contracts.events import (
    AbortRelease,
    ReleaseFailed,
    ReleaseStatusChanged,
    RollbackCompleted,
    RollbackFailed,
    RollbackRequested,
)
from canaryflow_contracts.state import ReleaseState, ReleaseStatus
from tests.unit.planner.factory import RID, TARGET, accepted, at, envelope

LEFT = ["Deployment shop/web-canary (2 replicas)"]
TIMINGS = ReconcileTimings(completion_grace_seconds=60)


def rolling_back() -> ReleaseState:
    state = accepted()
    decision = decide(state, envelope(AbortRelease(actor="bob"), "abort-1"), at(10))
    assert decision.state is not None and decision.state.status is ReleaseStatus.ROLLING_BACK
    return decision.state


def failed(reason: str = "stable not whole by its deadline", final: bool = False) -> RollbackFailed:
    return RollbackFailed(target=TARGET, reason=reason, attempts=5, final=final, leftovers=LEFT)


def feed(
    state: ReleaseState, event_id: str, now: datetime, data: RollbackFailed
) -> machine.Decision:
    return decide(state, envelope(data, event_id, "canaryflow/rollback"), now)


def test_a_failed_rollback_is_asked_again_and_people_are_told() -> None:
    decision = feed(rolling_back(), "rf-1", at(20), failed())
    assert decision.state is not None
    assert decision.state.status is ReleaseStatus.ROLLING_BACK
    assert decision.state.rollback_failures == 1
    assert decision.state.last_command_at == at(20)
    status, again = decision.commands
    assert isinstance(status.data, ReleaseStatusChanged)
    assert "attempt 1 failed: stable not whole" in status.data.detail
    assert isinstance(again.data, RollbackRequested)
    assert again.data.reason == "aborted by bob"  # the release's reason, not the failure's
    assert again.event_id == f"{RID}.rollback.f1"


def test_the_last_allowed_failure_ends_the_release_as_failed_with_its_leftovers() -> None:
    state = rolling_back()
    for attempt in range(1, ROLLBACK_ATTEMPTS):
        decision = feed(state, f"rf-{attempt}", at(20 + attempt), failed())
        assert decision.state is not None
        state = decision.state
        assert state.status is ReleaseStatus.ROLLING_BACK
    decision = feed(state, "rf-last", at(40), failed())
    assert decision.state is not None
    assert decision.state.status is ReleaseStatus.FAILED
    assert decision.state.rollback_failures == ROLLBACK_ATTEMPTS
    [end] = decision.commands
    assert isinstance(end.data, ReleaseFailed)
    assert end.event_id == f"{RID}.failed"
    assert end.data.leftovers == LEFT
    assert f"after {ROLLBACK_ATTEMPTS} attempt(s)" in end.data.summary
    assert "stable not whole by its deadline" in end.data.summary


def test_a_final_failure_ends_the_release_at_once() -> None:
    decision = feed(rolling_back(), "rf-1", at(20), failed("403 Forbidden", final=True))
    assert decision.state is not None
    assert decision.state.status is ReleaseStatus.FAILED
    assert [type(c.data) for c in decision.commands] == [ReleaseFailed]


def test_a_failure_heard_before_the_trigger_puts_the_release_in_rollback() -> None:
    state = accepted()  # the rollback service acted on a verdict the planner has not seen
    decision = feed(state, "rf-1", at(20), failed())
    assert decision.state is not None
    assert decision.state.status is ReleaseStatus.ROLLING_BACK
    assert decision.state.outcome_reason.startswith("attempt 1 of")


def test_a_failed_release_hears_nothing_more() -> None:
    decision = feed(rolling_back(), "rf-1", at(20), failed(final=True))
    assert decision.state is not None
    late = RollbackCompleted(target=TARGET, reason="x", stable_replicas=4, seconds_to_restore=1)
    assert decide(decision.state, envelope(late, "rc-late"), at(30)) == machine.NO_CHANGE
    assert reconcile(decision.state, at(10_000), TIMINGS) == machine.NO_CHANGE


def test_a_rollback_nobody_answers_ends_as_failed_after_the_bound() -> None:
    state = rolling_back()
    now = at(10)
    commands: list[Command] = []
    for _ in range(ROLLBACK_ATTEMPTS):
        now = (state.last_command_at or now) + (at(61) - at(0))
        decision = reconcile(state, now, TIMINGS)
        assert decision.state is not None
        state, commands = decision.state, decision.commands
    assert state.status is ReleaseStatus.FAILED
    [end] = commands
    assert isinstance(end.data, ReleaseFailed)
    assert "no rollback completed within 60s" in end.data.summary
    assert "not inspected" in end.data.leftovers[0]


def test_a_rollback_nobody_answers_is_asked_again_below_the_bound() -> None:
    state = rolling_back()
    assert reconcile(state, at(70), TIMINGS) == machine.NO_CHANGE
    decision = reconcile(state, at(71), TIMINGS)
    assert decision.state is not None
    assert decision.state.status is ReleaseStatus.ROLLING_BACK
    assert decision.state.rollback_failures == 1
    [again] = decision.commands
    assert isinstance(again.data, RollbackRequested)
