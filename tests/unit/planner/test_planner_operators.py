"""People steering a release: who may do what, set weight, and what a refusal changes (nothing)."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from canaryflow.planner.machine import Command, decide
from canaryflow.rollback.triggers import abort_refusal
from canaryflow.runtime import operators
from canaryflow_contracts import Envelope, EventData
from canaryflow_contracts.events import (
    AbortRelease,
    ApplyPhase,
    OperatorCommandRefused,
    PauseRelease,
    PromoteNow,
    ReleaseStatusChanged,
    ResumeRelease,
    SetWeight,
    parse_event,
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
    assert abort_refusal(envelope(mallory, "abort-1"), state, at(20)) == planner_reason.refusal
    eve = envelope(AbortRelease(actor="eve@sre.example"), "abort-2")
    assert abort_refusal(eve, state, at(20)) is None


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


# --------------------------------------------------------------------------- proven identity

ALICE_KEY, MALLORY_KEY = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()


def openssh(key: Ed25519PrivateKey) -> str:
    line = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    return f"{line} someone@laptop"


KEYED = [
    OperatorGrant(subject="alice@shop", actions=list(OperatorAction), keys=[openssh(ALICE_KEY)])
]


def signed(data: EventData, event_id: str, key: Ed25519PrivateKey, seconds: float = 19) -> Any:
    """The command as the CLI sends it with ``--key``, dated ``seconds`` after T0, through
    JSON and back (the extensions must survive the wire)."""
    command = Envelope.wrap(data, release_id=RID, source="canaryflow/cli", id=event_id)
    command = operators.sign(command.model_copy(update={"time": at(seconds)}), key)
    return parse_event(command.model_dump_json().encode())


def test_a_grant_with_keys_obeys_only_a_command_its_own_key_signed() -> None:
    state = release(KEYED)
    pause = PauseRelease(actor="alice@shop", reason="look")
    obeyed = decide(state, signed(pause, "p-1", ALICE_KEY), at(20))
    assert obeyed.state is not None and obeyed.state.paused

    forged = {
        "unsigned": (envelope(pause, "p-2"), "and it is not signed"),
        "another key": (signed(pause, "p-3", MALLORY_KEY), "signed by a key not listed"),
        "replayed late": (signed(pause, "p-4", ALICE_KEY, seconds=-400), "signed 420 s ago"),
    }
    for name, (command, why) in forged.items():
        decision = decide(state, command, at(20))
        [notice] = [c.data for c in decision.commands]
        assert isinstance(notice, OperatorCommandRefused), name
        assert why in notice.refusal, (name, notice.refusal)
        assert "only with a signature by one of their keys" in notice.refusal
        assert decision.state is not None and not decision.state.paused, name


def test_a_signed_command_altered_on_the_way_is_refused() -> None:
    state = release(KEYED)
    good = signed(PromoteNow(actor="alice@shop", reason="ship"), "pr-1", ALICE_KEY)
    altered = good.model_copy(update={"data": PromoteNow(actor="alice@shop", reason="other")})
    decision = decide(state, altered, at(20))
    [notice] = [c.data for c in decision.commands]
    assert isinstance(notice, OperatorCommandRefused)
    assert "does not match the command" in notice.refusal
    assert decision.state is not None and decision.state.status is ReleaseStatus.ANALYSING
    # ... and a command for another release cannot borrow the signature either
    moved = good.model_copy(update={"subject": "other-release"})
    _, why = operators.proven_key(moved, at(20))
    assert why is not None and "does not match" in why


def test_the_rollback_service_checks_an_aborts_signature_as_the_planner_does() -> None:
    state = release(KEYED)
    abort = AbortRelease(actor="alice@shop")
    assert abort_refusal(signed(abort, "a-1", ALICE_KEY), state, at(20)) is None
    why = abort_refusal(signed(abort, "a-2", MALLORY_KEY), state, at(20))
    planner = decide(state, signed(abort, "a-2", MALLORY_KEY), at(20)).commands[0].data
    assert isinstance(planner, OperatorCommandRefused) and why == planner.refusal


def test_a_policy_refuses_a_key_that_is_not_an_openssh_ed25519_key() -> None:
    with pytest.raises(ValueError, match="ssh-ed25519"):
        OperatorGrant(subject="a", actions=[OperatorAction.PAUSE], keys=["ssh-rsa AAAAB3Nza"])


# --------------------------------------------------------------------------- command order


def sent_at(data: EventData, event_id: str, seconds: float) -> Envelope[Any]:
    command = envelope(data, event_id)
    return command.model_copy(update={"time": at(seconds)})


def test_a_pause_sent_before_a_resume_but_handled_after_it_does_not_hold_the_release() -> None:
    """Found by reading the handler: the planner handles several messages at once and a
    redelivery comes late, so "pause, then resume" can arrive as "resume, then pause"; obeyed
    as it arrives, the release would stay paused until its pause deadline rolled it back."""
    state = release()
    resume = decide(state, sent_at(ResumeRelease(actor="alice@shop"), "r-1", 12), at(20))
    assert resume.commands == [] and resume.state is not None  # nothing to resume: recorded
    assert not resume.state.paused and resume.state.held_or_resumed_at == at(12)

    late_pause = decide(resume.state, sent_at(PauseRelease(actor="alice@shop"), "p-1", 11), at(21))
    assert late_pause.commands == []
    assert late_pause.state is not None and not late_pause.state.paused
    assert late_pause.state.history[-1].event == "stale-command"
    assert "came first" in late_pause.state.history[-1].detail


def test_pause_and_resume_in_their_order_are_obeyed_and_a_later_pause_holds_again() -> None:
    state = release()
    paused = decide(state, sent_at(PauseRelease(actor="alice@shop"), "p-1", 11), at(20)).state
    assert paused is not None and paused.paused
    resumed = decide(paused, sent_at(ResumeRelease(actor="alice@shop"), "r-1", 12), at(21))
    assert resumed.state is not None and not resumed.state.paused
    assert any(isinstance(c.data, ReleaseStatusChanged) for c in resumed.commands)
    again = decide(resumed.state, sent_at(PauseRelease(actor="alice@shop"), "p-2", 13), at(22))
    assert again.state is not None and again.state.paused
    # A second pause while paused changes nothing and publishes nothing.
    twice = decide(again.state, sent_at(PauseRelease(actor="alice@shop"), "p-3", 14), at(23))
    assert twice.commands == [] and twice.state is not None and twice.state.paused
