"""What a release records and announces, word for word: its history (what `status` shows) and
the status notices people and notification hooks read. Each transition names itself."""

from __future__ import annotations

from canaryflow.planner import machine
from canaryflow.planner.planning import Admission
from canaryflow.planner.validation import check_request
from canaryflow_contracts.events import (
    AbortRelease,
    AnalysisVerdict,
    OpenGate,
    PauseRelease,
    PhaseFailed,
    PromoteNow,
    PromotionCompleted,
    ReleaseFailed,
    ReleaseRequested,
    ReleaseStatusChanged,
    ResumeRelease,
    RollbackCompleted,
    RollbackFailed,
    RollbackRequested,
    RunHook,
    SetWeight,
    VerdictAction,
    VerdictResult,
    VersionSpec,
)
from canaryflow_contracts.state import HistoryEntry, ReleaseState
from tests.unit.planner.factory import (
    DEPLOYMENT,
    NEW_IMAGE,
    RID,
    T0,
    TARGET,
    accepted,
    admission,
    at,
    envelope,
    policy,
    reached,
    request,
    verdict,
)
from tests.unit.planner.test_planner_hooks import APPROVE, LOAD, SMOKE, done, on, planned
from tests.unit.planner.test_planner_machine import Release, analysing

PLAN = "policy web-policy: 10% for 30s, 25% for 30s, 50% for 60s"


def last(state: ReleaseState) -> tuple[str, str, str]:
    entry = state.history[-1]
    return entry.event, entry.detail, entry.actor


def notices(commands: list[machine.Command]) -> list[tuple[str, str]]:
    return [
        (c.data.status, c.data.detail) for c in commands if isinstance(c.data, ReleaseStatusChanged)
    ]


def test_a_new_release_records_who_asked_and_the_plan_with_its_limits() -> None:
    state = accepted()
    assert state.history == [
        HistoryEntry(time=T0, event="requested", detail=f"image {NEW_IMAGE}", actor="ci@shop"),
        HistoryEntry(
            time=T0,
            event="planned",
            detail=f"{PLAN}; min 50 requests, error rate <= 0.05, p99 <= 0.5s",
        ),
    ]
    asked = ReleaseRequested(
        target=TARGET, version=VersionSpec(image=NEW_IMAGE), requested_by="ci", reason="hotfix"
    )
    with_reason = machine.accept(RID, envelope(asked, "req-9"), admission(asked), T0).state
    assert with_reason is not None and with_reason.history[0].detail == "hotfix"


def test_the_plan_names_only_the_limits_the_policy_has() -> None:
    latency = {"name": "latency", "template": "p99-latency", "max": 0.5}
    errors = {"name": "errors", "template": "error-rate", "max": 0.05}
    for metrics, limits in (
        ([latency], "min 50 requests, p99 <= 0.5s"),
        ([errors], "min 50 requests, error rate <= 0.05"),
    ):
        analysis = {"intervalSeconds": 5, "minRequests": 50, "metrics": metrics}
        admitted = check_request(request(), DEPLOYMENT, [policy(analysis=analysis)], T0)
        assert isinstance(admitted, Admission), admitted
        state = machine.accept(RID, envelope(request(), "req-1"), admitted, T0).state
        assert state is not None and state.history[1].detail == f"{PLAN}; {limits}"


def test_every_step_and_verdict_is_recorded_with_its_source() -> None:
    release = analysing(0)
    assert last(release.state) == ("phase-reached", "step 0: canary at 25%", "test")
    release.on(verdict(release.state, 0, VerdictResult.PASS), "v-0", at(110))
    assert last(release.state) == ("verdict", "step 0: pass: pass at step 0", "test")
    release = analysing(1)
    commands = release.on(verdict(release.state, 1, VerdictResult.FAIL), "v-1", at(120))
    # A failing verdict is still recorded as the verdict it was, and rolls back.
    assert last(release.state) == ("verdict", "step 1: fail: fail at step 1", "test")
    assert notices(commands) == [("rolling_back", "step 1: fail: fail at step 1")]


def test_applying_a_step_and_promoting_are_announced_with_where_the_release_is() -> None:
    release = analysing(0)
    commands = release.on(verdict(release.state, 0, VerdictResult.PASS), "v-0", at(110))
    assert notices(commands) == [("applying", "step 2 of 3")]
    release = analysing(0)
    commands = release.on(PromoteNow(actor="bob", reason="hotfix"), "promote-1", at(110))
    assert notices(commands) == [("promoting", NEW_IMAGE)]
    assert last(release.state) == ("promote-now", "hotfix", "bob")


def test_operator_commands_are_recorded_with_the_operator_and_their_reason() -> None:
    release = analysing(0)
    commands = release.on(PauseRelease(actor="alice", reason="look"), "pause-1", at(110))
    assert last(release.state) == ("paused", "look", "alice")
    assert notices(commands) == [("paused", "held by an operator; waiting for resume")]
    commands = release.on(ResumeRelease(actor="alice", reason="seen"), "resume-1", at(115))
    assert last(release.state) == ("resumed", "seen", "alice")
    assert notices(commands) == [("resumed", "analysis continues")]
    release.on(SetWeight(actor="bob", weight=30, reason="more load"), "weight-1", at(120))
    assert last(release.state) == ("weight-set", "canary to 30%: more load", "bob")
    release.on(SetWeight(actor="bob", weight=40), "weight-2", at(125))
    assert last(release.state) == ("weight-set", "canary to 40%", "bob")
    release.on(AbortRelease(actor="bob"), "abort-1", at(130))
    assert last(release.state) == ("aborted", "aborted by bob", "bob")


def test_an_extended_hold_is_announced_with_the_step_people_count() -> None:
    release = analysing(0)
    extend = AnalysisVerdict(
        target=TARGET,
        step=release.state.steps[0],
        result=VerdictResult.INCONCLUSIVE,
        action=VerdictAction.EXTEND,
        final=True,
        reason="not sure yet",
        checks=[],
    )
    commands = release.on(extend, "v-extend", at(130))
    assert notices(commands) == [("extended", "step 1 hold extended: not sure yet")]
    assert last(release.state) == ("extended", "step 0: inconclusive: not sure yet", "test")


def test_rollbacks_are_recorded_from_request_to_outcome() -> None:
    release = Release(accepted())
    failed = PhaseFailed(target=TARGET, step=release.state.steps[0], reason="pods not Ready")
    release.on(failed, "failed-0", at(61))
    assert last(release.state) == ("phase-failed", "pods not Ready", "test")

    release = analysing(0)
    asked = RollbackRequested(target=TARGET, reason="", requested_by="ops")
    release.on(asked, "rb-1", at(110))
    assert last(release.state) == ("rollback-requested", "rollback-requested", "ops")
    gave_up = RollbackFailed(target=TARGET, reason="API down", attempts=3, final=False)
    commands = release.on(gave_up, "rb-failed-1", at(115))
    assert last(release.state) == ("rollback-failed", "attempt 1 of 3: API down", "test")
    assert notices(commands) == [
        ("rolling_back", "rollback attempt 1 failed: API down; trying again")
    ]
    done_ = RollbackCompleted(
        target=TARGET, reason="restored", stable_replicas=4, seconds_to_restore=2
    )
    release.on(done_, "rb-done", at(120))
    assert last(release.state) == ("rolled-back", "restored; stable at 4 replicas", "test")


def test_a_release_that_could_not_be_rolled_back_says_what_failed_last() -> None:
    release = analysing(0)
    release.on(AbortRelease(actor="bob", reason="wrong build"), "abort-1", at(110))
    gave_up = RollbackFailed(
        target=TARGET, reason="forbidden", attempts=1, final=True, leftovers=["web-canary"]
    )
    [command] = release.on(gave_up, "rb-failed-1", at(115))
    assert command.event_id == f"{RID}.failed"
    assert command.data == ReleaseFailed(
        target=TARGET,
        summary="rollback could not be completed after 1 attempt(s): attempt 1 of 3: "
        "forbidden; stable may not be whole: see leftovers",
        leftovers=["web-canary"],
    )
    # A state that has no history (written before it was kept) names its outcome instead.
    bare = release.state.model_copy(update={"history": []})
    summary = machine.release_failed(bare, []).summary
    assert "attempt(s): aborted by bob: wrong build; stable" in summary


def test_a_success_is_recorded_with_the_image_promoted() -> None:
    release = Release(accepted())
    release.on(PromoteNow(actor="bob"), "promote-1", at(10))
    release.on(PromotionCompleted(target=TARGET, image=NEW_IMAGE), "promoted", at(20))
    assert last(release.state) == ("promoted", NEW_IMAGE, "test")


def test_hooks_and_gates_are_announced_with_what_to_do_and_until_when() -> None:
    state, commands = planned(SMOKE, APPROVE)
    assert notices(commands) == [
        ("waiting", "pre-rollout hook smoke runs (http://hooks.local/smoke), until 12:00:50 UTC")
    ]
    state, commands = on(state, done("smoke"), "done-1", at(5))
    assert last(state) == ("hook-passed", "pre-rollout hook smoke: said so", "test")
    assert notices(commands) == [
        (
            "waiting",
            "gate approve (confirm-rollout) waits to be opened until 12:05:05 UTC: "
            f"canaryflow open-gate {RID} approve",
        )
    ]
    state, _ = on(state, OpenGate(actor="ops", gate="approve", reason="go"), "open-1", at(6))
    assert last(state) == ("gate-opened", "gate approve: go", "ops")

    state, _ = planned(APPROVE)
    state, _ = on(state, OpenGate(actor="ops", gate="approve"), "open-1", at(6))
    assert last(state) == ("gate-opened", "gate approve", "ops")


def test_a_hook_on_the_bus_is_announced_as_such_and_its_failure_recorded() -> None:
    state, _ = planned(LOAD)
    state, commands = on(state, reached(state, 0), "reached-0", at(10))
    assert notices(commands) == [
        ("waiting", "rollout hook load runs (the bus), until 12:10:10 UTC")
    ]
    [run] = [c for c in commands if isinstance(c.data, RunHook)]
    assert run.event_id == f"{RID}.hook.load.0"
    quiet = done("load", ok=False).model_copy(update={"detail": ""})
    state, commands = on(state, quiet, "done-1", at(12))
    assert last(state) == ("hook-failed", "rollout hook load (failed)", "test")
    assert notices(commands) == [("rolling_back", "rollout hook load (failed)")]
    rollback = [c for c in commands if isinstance(c.data, RollbackRequested)]
    assert [c.event_id for c in rollback] == [f"{RID}.rollback.{machine.short_digest('done-1')}"]
