"""Hooks and gates in the release's life: where it waits, what it publishes, what expiry does."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from canaryflow.planner import machine
from canaryflow.planner.machine import Command, decide
from canaryflow.planner.planning import Admission
from canaryflow.planner.reconcile import reconcile
from canaryflow.planner.validation import check_request
from canaryflow_contracts import EventData
from canaryflow_contracts.events import (
    ApplyPhase,
    HookCompleted,
    OpenGate,
    OperatorCommandRefused,
    PromoteNow,
    PromotionCompleted,
    ReleasePlanned,
    RequestAnalysis,
    RequestPromotion,
    RollbackCompleted,
    RollbackRequested,
    RunHook,
)
from canaryflow_contracts.state import ReleaseState, ReleaseStatus
from tests.unit.planner.factory import (
    DEPLOYMENT,
    RID,
    TARGET,
    at,
    envelope,
    policy,
    reached,
    request,
)

SMOKE = {"name": "smoke", "type": "pre-rollout", "url": "http://hooks.local/smoke", "retries": 1}
APPROVE = {"name": "approve", "type": "confirm-rollout", "deadlineSeconds": 300}
LOAD = {"name": "load", "type": "rollout"}  # on the bus: another system answers
SIGN_OFF = {"name": "sign-off", "type": "confirm-promotion", "deadlineSeconds": 60}
TELL = {"name": "tell", "type": "post-rollout", "url": "http://hooks.local/done"}
UNDO = {"name": "undo", "type": "rollback", "url": "http://hooks.local/undo"}


def planned(
    *hooks: Mapping[str, object], grants: str = "ops"
) -> tuple[ReleaseState, list[Command]]:
    operators = [
        {"subject": grants, "actions": ["open-gate", "promote", "pause", "resume", "abort"]}
    ]
    admitted = check_request(
        request(), DEPLOYMENT, [policy(hooks=[dict(h) for h in hooks], operators=operators)], at(0)
    )
    assert isinstance(admitted, Admission), admitted
    decision = machine.accept(RID, envelope(request(), "req-1"), admitted, at(0))
    assert decision.state is not None
    return decision.state, decision.commands


def on(
    state: ReleaseState, data: EventData, event_id: str, now: datetime
) -> tuple[ReleaseState, list[Command]]:
    decision = decide(state, envelope(data, event_id), now)
    return decision.state or state, decision.commands


def kinds(commands: list[Command]) -> list[type[object]]:
    return [type(c.data) for c in commands]


def done(name: str, step: int = 0, ok: bool = True) -> HookCompleted:
    return HookCompleted(target=TARGET, hook=name, step_index=step, ok=ok, detail="said so")


def test_pre_rollout_hooks_and_gates_come_before_any_traffic_moves() -> None:
    state, commands = planned(SMOKE, APPROVE)
    assert state.status is ReleaseStatus.WAITING
    assert state.waiting is not None and state.waiting.queue == ["smoke", "approve"]
    assert ApplyPhase not in kinds(commands)
    [run] = [c for c in commands if isinstance(c.data, RunHook)]
    assert run.event_id == f"{RID}.hook.smoke.0"

    state, commands = on(state, done("smoke"), "done-1", at(5))
    assert state.waiting is not None and state.waiting.queue == ["approve"]
    assert RunHook not in kinds(commands) and ApplyPhase not in kinds(commands)
    assert state.waiting.deadline == at(5) + timedelta(seconds=300)

    state, commands = on(state, OpenGate(actor="mallory", gate="approve"), "open-1", at(6))
    assert state.status is ReleaseStatus.WAITING
    assert kinds(commands) == [OperatorCommandRefused]

    state, commands = on(state, OpenGate(actor="ops", gate="approve"), "open-2", at(100))
    assert state.status is ReleaseStatus.APPLYING and state.waiting is None
    [apply] = [c.data for c in commands if isinstance(c.data, ApplyPhase)]
    assert apply.ready_deadline == at(100) + timedelta(seconds=60)  # from when it really starts


def test_a_failing_pre_rollout_hook_ends_the_release_before_any_traffic_moves() -> None:
    state, _ = planned(SMOKE, APPROVE)
    state, commands = on(state, done("smoke", ok=False), "done-1", at(5))
    assert state.status is ReleaseStatus.ROLLING_BACK
    assert "smoke" in state.outcome_reason
    assert RollbackRequested in kinds(commands) and ApplyPhase not in kinds(commands)


def test_a_stale_or_foreign_answer_changes_nothing() -> None:
    state, _ = planned(SMOKE)
    for data in (done("other"), done("smoke", step=1), OpenGate(actor="ops", gate="smoke")):
        after, commands = on(state, data, f"e-{type(data).__name__}", at(5))
        assert after.status is ReleaseStatus.WAITING and commands == []


def test_rollout_hooks_run_once_a_step_is_in_place_and_the_analysis_waits_for_them() -> None:
    state, commands = planned(LOAD)
    assert state.status is ReleaseStatus.APPLYING
    state, commands = on(state, reached(state, 0), "reached-0", at(10))
    assert state.status is ReleaseStatus.WAITING
    assert kinds(commands)[-1] is RunHook and RequestAnalysis not in kinds(commands)
    state, commands = on(state, done("load"), "done-1", at(12))
    assert state.status is ReleaseStatus.ANALYSING
    assert kinds(commands) == [RequestAnalysis]


def test_a_promotion_gate_that_expires_rolls_back_or_goes_on_as_its_policy_says() -> None:
    for on_expiry, status, command in (
        ("rollback", ReleaseStatus.ROLLING_BACK, RollbackRequested),
        ("continue", ReleaseStatus.PROMOTING, RequestPromotion),
    ):
        state, _ = planned({**SIGN_OFF, "onExpiry": on_expiry})
        state, _ = on(state, reached(state, 0), "reached-0", at(10))
        state, commands = on(state, PromoteNow(actor="ops"), "promote-1", at(20))
        assert state.status is ReleaseStatus.WAITING and RequestPromotion not in kinds(commands)
        assert reconcile(state, at(79)).state is None  # not yet
        decision = reconcile(state, at(81))
        assert decision.state is not None and decision.state.status is status
        assert command in kinds(decision.commands)


def test_post_rollout_and_rollback_hooks_run_when_the_release_is_over() -> None:
    state, _ = planned(TELL, UNDO)
    promoting, _ = on(state, PromoteNow(actor="ops"), "promote-1", at(5))
    over, commands = on(promoting, PromotionCompleted(target=TARGET, image="x"), "done", at(9))
    assert over.status is ReleaseStatus.SUCCEEDED
    assert [c.data.hook.name for c in commands if isinstance(c.data, RunHook)] == ["tell"]
    rolled = RollbackCompleted(target=TARGET, reason="r", stable_replicas=4, seconds_to_restore=1)
    over, commands = on(state, rolled, "rolled", at(9))
    assert [c.data.hook.name for c in commands if isinstance(c.data, RunHook)] == ["undo"]


def test_the_release_is_planned_under_its_own_id_before_it_waits() -> None:
    _, commands = planned(SMOKE)
    [plan] = [c for c in commands if isinstance(c.data, ReleasePlanned)]
    assert plan.event_id == f"{RID}.planned"


def test_an_answer_after_the_release_stopped_waiting_changes_nothing() -> None:
    # A failed hook rolls back; what still comes for the wait it left is ignored.
    state, _ = planned(SMOKE, APPROVE)
    state, _ = on(state, done("smoke", ok=False), "done-1", at(5))
    assert state.status is ReleaseStatus.ROLLING_BACK
    for data in (done("smoke"), OpenGate(actor="ops", gate="approve")):
        decision = decide(state, envelope(data, f"late-{type(data).__name__}"), at(6))
        assert decision == machine.NO_CHANGE


def test_running_a_hook_or_waiting_for_a_gate_restarts_reconciles_patience() -> None:
    state, _ = planned(SMOKE)
    assert state.status is ReleaseStatus.WAITING and state.last_command_at == at(0)
    state, _ = planned(LOAD)
    state, _ = on(state, reached(state, 0), "reached-0", at(10))
    assert state.status is ReleaseStatus.WAITING and state.last_command_at == at(10)
    state, _ = planned(SIGN_OFF)
    state, _ = on(state, PromoteNow(actor="ops"), "promote-1", at(20))
    assert state.status is ReleaseStatus.WAITING and state.last_command_at == at(20)
