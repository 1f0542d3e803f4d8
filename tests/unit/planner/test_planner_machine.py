"""The release state machine, step by step: every transition, and every event it must ignore."""

from __future__ import annotations

from datetime import datetime, timedelta

from canaryflow.planner import machine
from canaryflow.planner.machine import Command, decide
from canaryflow.planner.planning import Admission
from canaryflow.planner.reconcile import reconcile
from canaryflow.planner.validation import check_request
from canaryflow_contracts import EventData
from canaryflow_contracts.events import (
    AbortRelease,
    ApplyPhase,
    PauseRelease,
    PhaseFailed,
    PromoteNow,
    PromotionCompleted,
    ReleasePlanned,
    ReleaseRejected,
    ReleaseRolledBack,
    ReleaseStatusChanged,
    ReleaseSucceeded,
    RequestAnalysis,
    RequestPromotion,
    RequestRefused,
    ResumeRelease,
    RollbackCompleted,
    RollbackRequested,
    SetWeight,
    VerdictResult,
)
from canaryflow_contracts.state import SEEN_EVENTS_LIMIT, ReleaseState, ReleaseStatus
from tests.unit.planner.factory import (
    CHECK,
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


class Release:
    """Feeds events to the machine the way the handler does, keeping the written state."""

    def __init__(self, state: ReleaseState) -> None:
        self.state = state

    def status(self) -> ReleaseStatus:
        return self.state.status

    def on(self, data: EventData, event_id: str, now: datetime) -> list[Command]:
        decision = decide(self.state, envelope(data, event_id), now)
        if decision.state is not None:
            self.state = decision.state
        return decision.commands


def kinds(commands: list[Command]) -> tuple[type[object], ...]:
    return tuple(type(c.data) for c in commands)


def of(commands: list[Command], kind: type[EventData]) -> Command:
    [found] = [c for c in commands if isinstance(c.data, kind)]
    return found


def analysing(step_index: int = 0) -> Release:
    """A release whose step ``step_index`` is in place and under analysis."""
    release = Release(accepted())
    for index in range(step_index):
        release.on(reached(release.state, index), f"reached-{index}", at(10 * index + 1))
        release.on(
            verdict(release.state, index, VerdictResult.PASS), f"v-{index}", at(10 * index + 5)
        )
    release.on(reached(release.state, step_index), f"reached-{step_index}", at(100))
    assert release.status() is ReleaseStatus.ANALYSING
    return release


def test_a_good_release_goes_through_every_step_to_succeeded() -> None:
    decision = machine.accept(RID, envelope(request(), "req-1", "ci"), admission(), T0)
    assert decision.state is not None
    release = Release(decision.state)
    assert release.status() is ReleaseStatus.APPLYING
    assert [s.weight for s in release.state.steps] == [10, 25, 50]
    assert release.state.stable_image.endswith(":v1")
    assert release.state.pause_limit_seconds == 300
    planned = of(decision.commands, ReleasePlanned)
    assert planned.event_id == f"{RID}.planned"
    apply0 = of(decision.commands, ApplyPhase)
    assert isinstance(apply0.data, ApplyPhase)
    assert apply0.event_id == f"{RID}.apply.0"
    assert apply0.data.step.weight == 10
    assert apply0.data.ready_deadline == T0 + timedelta(seconds=60)

    commands = release.on(reached(release.state, 0), "reached-0", at(20))
    assert release.status() is ReleaseStatus.ANALYSING
    analyse = of(commands, RequestAnalysis)
    assert isinstance(analyse.data, RequestAnalysis)
    assert (analyse.data.canary_version, analyse.data.stable_version) == ("v2", "v1")
    assert analyse.data.policy == "web-policy"
    assert analyse.event_id == f"{RID}.analyse.0"

    # A tick on the way is remembered for `status` but moves nothing.
    tick = verdict(release.state, 0, VerdictResult.PASS, final=False)
    assert release.on(tick, "tick-0", at(25)) == []
    assert release.status() is ReleaseStatus.ANALYSING
    assert release.state.last_verdict is not None
    assert release.state.last_verdict.final is False

    for index in (0, 1):
        commands = release.on(
            verdict(release.state, index, VerdictResult.PASS), f"v-{index}", at(50 * index + 50)
        )
        assert release.status() is ReleaseStatus.APPLYING
        assert release.state.step_index == index + 1
        apply_next = of(commands, ApplyPhase)
        assert isinstance(apply_next.data, ApplyPhase)
        assert apply_next.event_id == f"{RID}.apply.{index + 1}"
        # Each step gets the same 60 s to become ready, counted from its own start.
        assert apply_next.data.ready_deadline == at(50 * index + 50 + 60)
        release.on(reached(release.state, index + 1), f"reached-{index + 1}", at(50 * index + 70))
        assert release.status() is ReleaseStatus.ANALYSING

    commands = release.on(verdict(release.state, 2, VerdictResult.PASS), "v-2", at(200))
    assert release.status() is ReleaseStatus.PROMOTING
    promote = of(commands, RequestPromotion)
    assert promote.event_id == f"{RID}.promote"

    commands = release.on(PromotionCompleted(target=TARGET, image=NEW_IMAGE), "promoted", at(210))
    assert release.status() is ReleaseStatus.SUCCEEDED
    assert kinds(commands) == (ReleaseSucceeded,)
    assert commands[0].event_id == f"{RID}.succeeded"
    events = [h.event for h in release.state.history]
    assert events[:3] == ["requested", "planned", "phase-reached"]
    assert events[-1] == "promoted"
    assert release.state.updated_at == at(210)


def test_a_failed_verdict_rolls_back_with_its_evidence() -> None:
    release = analysing(1)
    commands = release.on(verdict(release.state, 1, VerdictResult.FAIL), "v-fail", at(120))
    assert release.status() is ReleaseStatus.ROLLING_BACK
    # The rollback service acts on the verdict itself: the planner only tells people.
    assert kinds(commands) == (ReleaseStatusChanged,)
    assert release.state.outcome_reason.startswith("step 1: fail")

    done = RollbackCompleted(
        target=TARGET, reason="analysis failed", stable_replicas=4, seconds_to_restore=1.5
    )
    commands = release.on(done, "rb-done", at(125))
    assert release.status() is ReleaseStatus.ROLLED_BACK
    [outcome] = commands
    assert isinstance(outcome.data, ReleaseRolledBack)
    assert outcome.event_id == f"{RID}.rolled-back"
    assert outcome.data.evidence == [CHECK]
    assert "step 1: fail" in outcome.data.summary


def test_a_phase_failure_rolls_back() -> None:
    release = Release(accepted())
    failed = PhaseFailed(target=TARGET, step=release.state.steps[0], reason="pods not Ready")
    commands = release.on(failed, "failed-0", at(61))
    assert release.status() is ReleaseStatus.ROLLING_BACK
    assert release.state.outcome_reason == "pods not Ready"
    assert kinds(commands) == (ReleaseStatusChanged,)


def test_insufficient_data_pauses_and_resume_analyses_again() -> None:
    release = analysing(0)
    commands = release.on(
        verdict(release.state, 0, VerdictResult.INSUFFICIENT_DATA), "v-0", at(140)
    )
    assert release.status() is ReleaseStatus.ANALYSING
    assert release.state.paused
    assert release.state.paused_at == at(140)
    [status] = commands
    assert isinstance(status.data, ReleaseStatusChanged)
    assert status.data.status == "paused"
    assert "insufficient_data" in status.data.detail

    commands = release.on(ResumeRelease(actor="alice"), "resume-1", at(150))
    assert not release.state.paused
    assert release.state.paused_at is None
    assert release.status() is ReleaseStatus.ANALYSING
    again = of(commands, RequestAnalysis)
    # A fresh id: the first request may still be inside JetStream's duplicate window.
    assert again.event_id.startswith(f"{RID}.analyse.0.")
    assert again.event_id != f"{RID}.analyse.0"
    assert release.state.last_command_at == at(150)
    assert release.state.history[-1].actor == "alice"


def test_a_pass_that_arrives_while_paused_is_held_until_resume() -> None:
    release = analysing(0)
    commands = release.on(PauseRelease(actor="alice", reason="look"), "pause-1", at(110))
    assert release.state.paused
    assert kinds(commands) == (ReleaseStatusChanged,)

    commands = release.on(verdict(release.state, 0, VerdictResult.PASS), "v-0", at(130))
    assert release.status() is ReleaseStatus.ANALYSING
    assert release.state.step_index == 0
    assert release.state.paused_at == at(110)
    assert kinds(commands) == (ReleaseStatusChanged,)

    commands = release.on(ResumeRelease(actor="alice"), "resume-1", at(140))
    assert release.status() is ReleaseStatus.APPLYING
    assert release.state.step_index == 1
    assert of(commands, ApplyPhase).event_id == f"{RID}.apply.1"


def test_resume_during_a_running_analysis_only_unpauses() -> None:
    release = analysing(0)
    release.on(PauseRelease(actor="alice"), "pause-1", at(110))
    commands = release.on(ResumeRelease(actor="alice"), "resume-1", at(115))
    assert not release.state.paused
    assert kinds(commands) == (ReleaseStatusChanged,)


def test_a_step_paused_while_applying_still_comes_into_place_and_is_analysed() -> None:
    release = Release(accepted())
    release.on(PauseRelease(actor="alice"), "pause-1", at(5))
    commands = release.on(reached(release.state, 0), "reached-0", at(10))
    assert release.status() is ReleaseStatus.ANALYSING
    assert kinds(commands) == (RequestAnalysis,)
    assert release.state.paused


def test_resume_while_applying_sends_the_step_again() -> None:
    release = Release(accepted())
    release.on(PauseRelease(actor="alice"), "pause-1", at(5))
    commands = release.on(ResumeRelease(actor="alice"), "resume-1", at(8))
    assert release.status() is ReleaseStatus.APPLYING
    # The executor's apply is idempotent; the id is the step's, so a recent one is deduplicated.
    assert of(commands, ApplyPhase).event_id == f"{RID}.apply.0"


def test_promote_now_skips_the_remaining_steps() -> None:
    release = analysing(0)
    commands = release.on(PromoteNow(actor="bob", reason="hotfix"), "promote-1", at(120))
    assert release.status() is ReleaseStatus.PROMOTING
    assert of(commands, RequestPromotion).event_id == f"{RID}.promote"
    assert release.state.history[-1].event == "promote-now"


def test_abort_leaves_the_rollback_to_the_rollback_service() -> None:
    release = analysing(0)
    commands = release.on(AbortRelease(actor="bob", reason="wrong build"), "abort-1", at(120))
    assert release.status() is ReleaseStatus.ROLLING_BACK
    assert release.state.outcome_reason == "aborted by bob: wrong build"  # as the rollback says
    assert kinds(commands) == (ReleaseStatusChanged,)
    # Our own or anyone's rollback request after that changes nothing more.
    again = RollbackRequested(target=TARGET, reason="again", requested_by="x")
    assert release.on(again, "rb-2", at(121)) == []


def test_a_duplicate_event_moves_nothing_twice() -> None:
    release = Release(accepted())
    first = release.on(reached(release.state, 0), "reached-0", at(10))
    state = release.state
    # Redelivered while it is still the last event handled: same commands, same ids (the
    # publish may not have happened before a crash), and no new state.
    decision = decide(state, envelope(reached(state, 0), "reached-0"), at(11))
    assert decision.state is None
    assert decision.commands == first
    # Once something else happened, a duplicate is only ignored.
    release.on(verdict(state, 0, VerdictResult.PASS, final=False), "tick-1", at(12))
    decision = decide(release.state, envelope(reached(state, 0), "reached-0"), at(13))
    assert decision.state is None
    assert decision.commands == []


def test_a_stale_step_event_is_ignored() -> None:
    release = analysing(1)
    old_step = release.state.steps[0]
    assert (
        decide(release.state, envelope(reached(release.state, 0), "reached-0-late"), at(130)).state
        is None
    )
    late_verdict = verdict(release.state, 0, VerdictResult.FAIL)
    assert decide(release.state, envelope(late_verdict, "v0-late"), at(130)).state is None
    late_failure = PhaseFailed(target=TARGET, step=old_step, reason="late")
    assert decide(release.state, envelope(late_failure, "f0-late"), at(130)).state is None


def test_an_event_about_another_target_in_the_releases_name_moves_nothing() -> None:
    release = analysing(0)
    cart = TARGET.model_copy(update={"name": "cart"})
    forged = RollbackRequested(target=cart, reason="forged", requested_by="mallory")
    assert decide(release.state, envelope(forged, "forged-1"), at(110)) == machine.NO_CHANGE
    failing = verdict(release.state, 0, VerdictResult.FAIL).model_copy(update={"target": cart})
    assert decide(release.state, envelope(failing, "forged-2"), at(110)) == machine.NO_CHANGE
    # The same rollback request for the release's own target is obeyed.
    own = RollbackRequested(target=TARGET, reason="stop", requested_by="ops")
    assert decide(release.state, envelope(own, "own-1"), at(110)).state is not None


def test_a_verdict_before_its_phase_is_reached_is_ignored() -> None:
    state = accepted()
    decision = decide(state, envelope(verdict(state, 0, VerdictResult.PASS), "v-early"), at(5))
    assert decision.state is None
    assert decision.commands == []


def test_events_after_a_terminal_state_change_nothing() -> None:
    release = analysing(0)
    release.on(AbortRelease(actor="bob"), "abort-1", at(110))
    done = RollbackCompleted(
        target=TARGET, reason="aborted", stable_replicas=4, seconds_to_restore=1
    )
    release.on(done, "rb-done", at(115))
    assert release.status() is ReleaseStatus.ROLLED_BACK
    for data, event_id in [
        (verdict(release.state, 0, VerdictResult.PASS), "v-late"),
        (PromotionCompleted(target=TARGET, image=NEW_IMAGE), "promoted-late"),
        (ResumeRelease(actor="alice"), "resume-late"),
        (PromoteNow(actor="alice"), "promote-late"),
        (
            RollbackCompleted(target=TARGET, reason="x", stable_replicas=4, seconds_to_restore=1),
            "rb-2",
        ),
    ]:
        decision = decide(release.state, envelope(data, event_id), at(120))
        assert decision == machine.NO_CHANGE


def test_operator_commands_that_do_not_apply_are_ignored() -> None:
    state = accepted()
    # A resume of a release not paused changes nothing and publishes nothing; only its send
    # time is kept, so that a pause sent before it and handled after it is known as stale.
    resumed = decide(state, envelope(ResumeRelease(actor="a"), "r"), at(1))
    assert resumed.commands == [] and resumed.state is not None
    unchanged = {"held_or_resumed_at", "updated_at"}
    assert resumed.state.model_dump(exclude=unchanged) == state.model_dump(exclude=unchanged)
    promoting = state.model_copy(update={"status": ReleaseStatus.PROMOTING})
    assert decide(promoting, envelope(PauseRelease(actor="a"), "p"), at(1)).state is None
    assert decide(promoting, envelope(PromoteNow(actor="a"), "n"), at(1)).state is None


ORIGIN = machine.Request("req-2", RID, f"canaryflow.release.requested.v1.{RID}")


def test_a_second_request_with_a_used_release_id_is_refused_without_touching_it() -> None:
    state = accepted()
    decision = machine.request_again(state, envelope(request(), "req-2", "ci"), ORIGIN, False)
    assert decision.state is None
    [refusal] = decision.commands
    assert isinstance(refusal.data, RequestRefused)
    assert (refusal.subject_key, refusal.event_id) == ("req-2", "req-2.refused")
    assert "already used" in refusal.data.reasons[0]
    # The original request redelivered re-issues its commands, under the same ids.
    first = machine.Request("req-1", RID, ORIGIN.subject)
    replay = machine.request_again(state, envelope(request(), "req-1", "ci"), first, True)
    assert kinds(replay.commands) == (ReleasePlanned, ApplyPhase)
    # Sent again as a new message, it is a duplicate: refused, nothing re-issued.
    again = machine.request_again(state, envelope(request(), "req-1", "ci"), first, False)
    assert kinds(again.commands) == (RequestRefused,)
    assert again.commands[0].data.reasons[0].startswith("duplicate")  # type: ignore[attr-defined]


def test_a_refused_request_is_stored_rejected_with_every_reason() -> None:
    reasons = ["Deployment shop/web not found", "no ReleasePolicy in namespace shop"]
    decision = machine.reject(RID, envelope(request(), "req-1", "ci"), request(), reasons, T0)
    assert decision.state is not None
    assert decision.state.status is ReleaseStatus.REJECTED
    assert decision.state.outcome_reason == "; ".join(reasons)
    [rejection] = decision.commands
    assert isinstance(rejection.data, ReleaseRejected)
    assert rejection.data.reasons == reasons
    # Readers may ask for the current step of any state.
    assert decision.state.current_step.weight == 0
    # Replayed after a crash, the same rejection goes out under the same id.
    first = machine.Request("req-1", RID, ORIGIN.subject)
    replay = machine.request_again(decision.state, envelope(request(), "req-1", "ci"), first, True)
    assert replay.commands == decision.commands


def test_seen_event_ids_stay_bounded() -> None:
    release = analysing(0)
    for tick in range(SEEN_EVENTS_LIMIT + 20):
        release.on(verdict(release.state, 0, VerdictResult.PASS, final=False), f"t-{tick}", at(120))
    assert len(release.state.seen_event_ids) == SEEN_EVENTS_LIMIT
    assert release.state.seen_event_ids[-1] == f"t-{SEEN_EVENTS_LIMIT + 19}"


def test_an_unreadable_request_is_refused_once_per_message_and_stores_nothing() -> None:
    problem = "malformed io.canaryflow.release.requested.v1:\n  Invalid JSON " + "x" * 2000
    subject = "canaryflow.release.requested.v1.web-1"
    decision = machine.refuse(machine.Request("msg-1", "web-1", subject), [problem])

    assert decision.state is None
    (command,) = decision.commands
    assert isinstance(command.data, RequestRefused)
    (reason,) = command.data.reasons
    assert reason.startswith("malformed io.canaryflow.release.requested.v1: Invalid JSON")
    assert "\n" not in reason and len(reason) <= machine.MAX_PROBLEM_CHARS, "one line, not the body"
    # The same message (a redelivery) gets the same event id, so JetStream stores one answer.
    again = machine.refuse(machine.Request("msg-1", "web-1", subject), [problem]).commands[0]
    other = machine.refuse(machine.Request("msg-2", "web-1", subject), [problem]).commands[0]
    assert again.event_id == command.event_id != other.event_id


def test_a_new_release_keeps_its_plan_limits_and_notifications() -> None:
    notify = [{"url": "http://hooks.local/notify", "on": ["failed"]}]
    admitted = check_request(request(), DEPLOYMENT, [policy(notify=notify)], T0)
    assert isinstance(admitted, Admission), admitted
    state = machine.accept(RID, envelope(request(), "req-1", "ci"), admitted, T0).state
    assert state is not None
    assert state.analysis is not None and state.analysis == admitted.plan.tightened
    assert state.max_weight == 50
    assert state.notify == admitted.notify and len(state.notify) == 1
    # The first command goes out now: reconcile's patience is counted from here.
    assert state.last_command_at == T0
    # The analysis requested is the tightened one the release was planned with.
    release = Release(state)
    analyse = of(release.on(reached(state, 0), "reached-0", at(10)), RequestAnalysis)
    assert isinstance(analyse.data, RequestAnalysis)
    assert analyse.data.analysis == admitted.plan.tightened


def test_a_release_with_no_stable_image_on_record_asks_for_no_stable_version() -> None:
    state = accepted().model_copy(update={"stable_image": ""})
    command = machine.request_analysis(state)
    assert isinstance(command.data, RequestAnalysis) and command.data.stable_version == ""


def test_a_rejected_release_has_no_policy_and_its_rejection_is_keyed_by_the_request() -> None:
    decision = machine.reject(RID, envelope(request(), "req-1", "ci"), request(), ["no"], T0)
    assert decision.state is not None and decision.state.policy == ""
    [rejection] = decision.commands
    assert rejection.event_id == f"{RID}.rejected.{machine.short_digest('req-1')}"


def test_derived_event_ids_are_the_same_in_every_version() -> None:
    # A redelivery handled by a newer planner must publish under the same ids to be deduplicated.
    assert machine.short_digest("req-1") == "9456bdfa12ea"


def test_an_earlier_request_redelivered_after_another_event_re_issues_nothing() -> None:
    release = Release(accepted())
    release.on(PauseRelease(actor="alice"), "pause-1", at(5))  # still applying step 0
    first = machine.Request("req-1", RID, ORIGIN.subject)
    again = machine.request_again(release.state, envelope(request(), "req-1", "ci"), first, True)
    assert again == machine.NO_CHANGE


def test_a_redelivered_event_re_issues_nothing_once_reconcile_rolled_the_release_back() -> None:
    # Reconcile moves a release on without an event: the last event handled is still the
    # request (or the step's arrival), and its redelivery must not plan or analyse again.
    state = accepted()
    late = reconcile(state, at(300)).state  # no executor answered for three windows
    assert late is not None and late.status is ReleaseStatus.ROLLING_BACK
    origin = machine.Request("req-1", RID, ORIGIN.subject)
    replay = machine.request_again(late, envelope(request(), "req-1", "ci"), origin, True)
    assert replay == machine.Decision(None, [])

    release = Release(accepted())
    release.on(PauseRelease(actor="alice"), "pause-1", at(5))
    release.on(reached(release.state, 0), "reached-0", at(10))
    stale = reconcile(release.state, at(1000)).state
    assert stale is not None and stale.status is ReleaseStatus.ROLLING_BACK
    assert decide(stale, envelope(reached(state, 0), "reached-0"), at(1001)).commands == []


def test_an_operators_weight_is_a_new_step_with_the_first_steps_time_to_be_ready() -> None:
    release = analysing(0)
    release.on(SetWeight(actor="bob", weight=30), "weight-1", at(120))
    assert release.status() is ReleaseStatus.APPLYING
    assert release.state.phase_started_at == at(120)
    assert release.state.ready_deadline == at(120) + timedelta(seconds=60)
    assert release.state.last_command_at == at(120)
    # Not while nothing is in flight: before the first step is applied, or while promoting.
    promoting = release.state.model_copy(update={"status": ReleaseStatus.PROMOTING})
    weight = SetWeight(actor="bob", weight=20)
    assert decide(promoting, envelope(weight, "weight-2"), at(121)) == machine.NO_CHANGE


def test_a_step_in_place_records_the_canarys_weight() -> None:
    release = analysing(0)
    assert release.state.canary_weight == 25.0
    release.on(PromoteNow(actor="bob"), "promote-1", at(110))
    release.on(PromotionCompleted(target=TARGET, image=NEW_IMAGE), "promoted", at(120))
    assert release.state.canary_weight == 100.0


def test_a_step_fact_for_the_current_step_after_it_moved_on_is_ignored() -> None:
    release = analysing(0)
    again = decide(release.state, envelope(reached(release.state, 0), "reached-0-bis"), at(110))
    assert again == machine.NO_CHANGE
    failed = PhaseFailed(target=TARGET, step=release.state.steps[0], reason="late")
    assert decide(release.state, envelope(failed, "failed-0"), at(110)) == machine.NO_CHANGE


def test_promote_now_or_a_rollback_ends_a_pause_and_restarts_reconciles_patience() -> None:
    for command, status in (
        (PromoteNow(actor="bob"), ReleaseStatus.PROMOTING),
        (AbortRelease(actor="bob"), ReleaseStatus.ROLLING_BACK),
    ):
        release = analysing(0)
        release.on(PauseRelease(actor="alice"), "pause-1", at(110))
        release.on(command, "command-1", at(120))
        assert release.status() is status
        assert not release.state.paused and release.state.paused_at is None
        assert release.state.last_command_at == at(120)


def test_a_rollback_the_planner_never_asked_for_ends_the_release_with_its_reason() -> None:
    release = analysing(0)
    release.on(PauseRelease(actor="alice"), "pause-1", at(110))
    done = RollbackCompleted(
        target=TARGET, reason="slo burn", stable_replicas=4, seconds_to_restore=1
    )
    [outcome] = release.on(done, "rb-done", at(120))
    assert release.status() is ReleaseStatus.ROLLED_BACK
    assert release.state.outcome_reason == "slo burn"
    assert release.state.canary_weight == 0.0 and not release.state.paused
    assert isinstance(outcome.data, ReleaseRolledBack)
    assert outcome.data.summary.startswith("rolled back: slo burn; stable restored to 4")


def test_each_step_and_the_promotion_restart_reconciles_patience() -> None:
    release = analysing(0)
    release.on(verdict(release.state, 0, VerdictResult.PASS), "v-0", at(110))
    assert release.state.last_command_at == at(110)
    release = analysing(2)
    release.on(verdict(release.state, 2, VerdictResult.PASS), "v-2", at(130))
    assert release.status() is ReleaseStatus.PROMOTING
    assert release.state.last_command_at == at(130)


def test_resume_during_a_running_analysis_keeps_reconciles_patience() -> None:
    # The analysis asked for at the step's arrival is still running: its silence is counted
    # from then, not from the resume.
    release = analysing(0)
    asked = release.state.last_command_at
    release.on(PauseRelease(actor="alice"), "pause-1", at(110))
    release.on(ResumeRelease(actor="alice"), "resume-1", at(115))
    assert release.state.last_command_at == asked == at(100)


def test_a_success_carries_the_last_verdicts_evidence() -> None:
    release = analysing(2)
    passed = CHECK.model_copy(update={"value": 0.01, "passed": True})
    final = verdict(release.state, 2, VerdictResult.PASS).model_copy(update={"checks": [passed]})
    release.on(final, "v-2", at(130))
    [succeeded, *_] = release.on(
        PromotionCompleted(target=TARGET, image=NEW_IMAGE), "promoted", at(140)
    )
    assert isinstance(succeeded.data, ReleaseSucceeded)
    assert succeeded.data.evidence == [passed]
    assert succeeded.data.summary == f"{NEW_IMAGE} is stable after 3 step(s)"


def test_a_rollback_after_a_verdict_that_did_not_fail_carries_no_evidence() -> None:
    release = analysing(0)
    short = verdict(release.state, 0, VerdictResult.INSUFFICIENT_DATA)
    release.on(short.model_copy(update={"checks": [CHECK]}), "v-0", at(110))
    release.on(AbortRelease(actor="bob"), "abort-1", at(120))
    done = RollbackCompleted(
        target=TARGET, reason="aborted", stable_replicas=4, seconds_to_restore=1
    )
    [outcome] = release.on(done, "rb-done", at(125))
    assert isinstance(outcome.data, ReleaseRolledBack) and outcome.data.evidence == []
