"""A command that changes a workload is obeyed only when a live release asks for exactly it.

Each case is a command someone could put on the bus (forged, replayed, stale or mistaken)
beside the state the planner holds; the test names which checks refuse it, and that the
command the planner itself would publish for that state is obeyed.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from canaryflow.runtime import authority
from canaryflow.runtime.policies import PolicyObject, governing
from canaryflow_contracts.events import (
    AbortRelease,
    AnalysisVerdict,
    ApplyPhase,
    ContainerResources,
    EnvVar,
    PhaseFailed,
    PlannedStep,
    RequestPromotion,
    RollbackRequested,
    RunHook,
    TargetRef,
    VerdictAction,
    VerdictResult,
)
from canaryflow_contracts.policy import Hook, HookType, ImageRules
from canaryflow_contracts.state import ReleaseState, ReleaseStatus, Waiting
from tests.unit.support_state import sample_state

RID = "rel-1"
TARGET = TargetRef(namespace="shop", name="web")
OTHER = TargetRef(namespace="shop", name="cart")
STEPS = [
    PlannedStep(index=0, weight=10, hold_seconds=30),
    PlannedStep(index=1, weight=50, hold_seconds=60),
]
SMOKE = Hook(name="smoke", type=HookType.ROLLOUT, url="http://hooks.example/smoke")
NOTIFY_DONE = Hook(name="done", type=HookType.POST_ROLLOUT, url="http://hooks.example/done")


def state(status: ReleaseStatus = ReleaseStatus.APPLYING, step_index: int = 0) -> ReleaseState:
    return sample_state(RID).model_copy(
        update={
            "status": status,
            "step_index": step_index,
            "steps": STEPS,
            "hooks": [SMOKE, NOTIFY_DONE],
            "canary_resources": ContainerResources(limits={"cpu": "500m"}),
        }
    )


def apply_of(current: ReleaseState, **changes: object) -> ApplyPhase:
    """The ApplyPhase the planner publishes for ``current`` (as planner.machine builds it)."""
    fields: dict[str, object] = {
        "target": current.target,
        "version": current.version,
        "step": current.current_step,
        "ready_deadline": current.ready_deadline,
        "canary_resources": current.canary_resources,
    }
    return ApplyPhase.model_validate({**fields, **changes})


def checks(refusals: list[authority.Refusal]) -> set[str]:
    return {refusal.check for refusal in refusals}


# --------------------------------------------------------------------------- phase.apply


@pytest.mark.parametrize("status", [ReleaseStatus.APPLYING, ReleaseStatus.ANALYSING])
def test_the_planners_own_apply_is_obeyed(status: ReleaseStatus) -> None:
    current = state(status, step_index=1)
    assert authority.apply_refusals(RID, apply_of(current), current) == []


def test_an_apply_for_no_release_is_refused() -> None:
    refusals = authority.apply_refusals(RID, apply_of(state()), None)
    assert checks(refusals) == {authority.UNKNOWN_RELEASE}
    assert f"no release {RID} is known" in refusals[0].reason


def test_an_apply_with_another_image_is_refused() -> None:
    current = state()
    evil = current.version.model_copy(update={"image": "registry.local/shop/web:evil"})
    refusals = authority.apply_refusals(RID, apply_of(current, version=evil), current)
    assert checks(refusals) == {authority.VERSION}
    assert "'registry.local/shop/web:evil', not 'registry.local/shop/web:v2'" in refusals[0].reason


def test_an_apply_with_the_same_image_and_other_env_is_refused() -> None:
    current = state()
    changed = current.version.model_copy(update={"env": [EnvVar(name="DEBUG", value="1")]})
    refusals = authority.apply_refusals(RID, apply_of(current, version=changed), current)
    assert checks(refusals) == {authority.VERSION}
    assert "other env" in refusals[0].reason


def test_an_apply_for_another_target_is_refused() -> None:
    current = state()
    refusals = authority.apply_refusals(RID, apply_of(current, target=OTHER), current)
    assert checks(refusals) == {authority.TARGET}
    assert "releases shop/web, not shop/cart" in refusals[0].reason


def test_a_stale_apply_of_an_earlier_step_is_refused() -> None:
    earlier = state(ReleaseStatus.APPLYING, step_index=0)
    now_at_step_1 = state(ReleaseStatus.APPLYING, step_index=1)
    refusals = authority.apply_refusals(RID, apply_of(earlier), now_at_step_1)
    assert checks(refusals) == {authority.STEP}
    assert "is at step 1 (50% for 60s); the command is for step 0 (10% for 30s)" in (
        refusals[0].reason
    )


def test_an_apply_with_the_right_index_and_another_weight_is_refused() -> None:
    current = state()
    heavier = PlannedStep(index=0, weight=90, hold_seconds=30)
    assert checks(authority.apply_refusals(RID, apply_of(current, step=heavier), current)) == {
        authority.STEP
    }


def test_an_apply_from_an_earlier_pass_of_the_same_step_is_refused() -> None:
    """An operator set the weight back to a step's own: the old command's deadline is gone."""
    current = state()
    old = apply_of(current, ready_deadline=current.ready_deadline - timedelta(minutes=5))
    refusals = authority.apply_refusals(RID, old, current)
    assert checks(refusals) == {authority.STEP}
    assert "an earlier pass" in refusals[0].reason
    no_limits = apply_of(current, canary_resources=None)
    assert checks(authority.apply_refusals(RID, no_limits, current)) == {authority.STEP}


@pytest.mark.parametrize(
    "status",
    [
        ReleaseStatus.WAITING,
        ReleaseStatus.PROMOTING,
        ReleaseStatus.ROLLING_BACK,
        ReleaseStatus.SUCCEEDED,
        ReleaseStatus.ROLLED_BACK,
        ReleaseStatus.FAILED,
        ReleaseStatus.REJECTED,
    ],
)
def test_an_apply_outside_applying_or_analysing_is_refused(status: ReleaseStatus) -> None:
    current = state(status)
    refusals = authority.apply_refusals(RID, apply_of(current), current)
    assert checks(refusals) == {authority.STATUS}
    assert f"is {status.value}; phase.apply is obeyed only while it is applying or analysing" in (
        refusals[0].reason
    )


def test_every_problem_is_reported_at_once() -> None:
    current = state(ReleaseStatus.SUCCEEDED, step_index=1)
    evil = current.version.model_copy(update={"image": "evil.example/x:1"})
    forged = apply_of(state(), target=OTHER, version=evil)
    assert checks(authority.apply_refusals(RID, forged, current)) == {
        authority.TARGET,
        authority.STATUS,
        authority.VERSION,
        authority.STEP,
    }


# --------------------------------------------------------------------------- promotion


def test_promotion_is_obeyed_only_while_promoting_and_only_to_the_releases_version() -> None:
    current = state(ReleaseStatus.PROMOTING, step_index=1)
    own = RequestPromotion(target=TARGET, version=current.version)
    assert authority.promotion_refusals(RID, own, current) == []
    evil = RequestPromotion(
        target=TARGET, version=current.version.model_copy(update={"image": "x.example/web:evil"})
    )
    assert checks(authority.promotion_refusals(RID, evil, current)) == {authority.VERSION}
    assert checks(authority.promotion_refusals(RID, own, None)) == {authority.UNKNOWN_RELEASE}
    for status in (ReleaseStatus.ANALYSING, ReleaseStatus.ROLLED_BACK, ReleaseStatus.SUCCEEDED):
        assert checks(authority.promotion_refusals(RID, own, state(status))) == {authority.STATUS}


# --------------------------------------------------------------------------- hooks


def waiting_for(hook: str, step_index: int = 0) -> ReleaseState:
    at = state()
    wait = Waiting(
        stage="rollout",
        step_index=step_index,
        queue=[hook],
        then=ReleaseStatus.ANALYSING,
        deadline=at.phase_started_at,
    )
    return at.model_copy(update={"status": ReleaseStatus.WAITING, "waiting": wait})


def test_a_hook_is_called_only_when_the_release_runs_that_very_hook() -> None:
    current = waiting_for("smoke")
    own = RunHook(target=TARGET, version=current.version, hook=SMOKE, step_index=0)
    assert authority.hook_refusals(RID, own, current) == []
    elsewhere = SMOKE.model_copy(update={"url": "http://169.254.169.254/latest/meta-data"})
    forged = own.model_copy(update={"hook": elsewhere})
    refusals = authority.hook_refusals(RID, forged, current)
    assert checks(refusals) == {authority.HOOK}
    assert "differs from the release's own" in refusals[0].reason
    unknown = own.model_copy(update={"hook": SMOKE.model_copy(update={"name": "load"})})
    assert "has no hook 'load' (its hooks: smoke, done)" in (
        authority.hook_refusals(RID, unknown, current)[0].reason
    )
    later = own.model_copy(update={"step_index": 1})
    assert checks(authority.hook_refusals(RID, later, current)) == {authority.STEP}
    assert checks(authority.hook_refusals(RID, own, waiting_for("gate"))) == {authority.HOOK}
    assert checks(authority.hook_refusals(RID, own, state(ReleaseStatus.ANALYSING))) == {
        authority.STATUS
    }
    assert checks(authority.hook_refusals(RID, own, None)) == {authority.UNKNOWN_RELEASE}


def test_a_final_hook_runs_only_once_the_release_is_over_that_way() -> None:
    done = state(ReleaseStatus.SUCCEEDED)
    command = RunHook(target=TARGET, version=done.version, hook=NOTIFY_DONE, step_index=0)
    assert authority.hook_refusals(RID, command, done) == []
    assert checks(authority.hook_refusals(RID, command, state(ReleaseStatus.ROLLED_BACK))) == {
        authority.STATUS
    }


# --------------------------------------------------------------------------- the way back


def failing(step_index: int, target: TargetRef = TARGET) -> AnalysisVerdict:
    return AnalysisVerdict(
        target=target,
        step=STEPS[step_index],
        result=VerdictResult.FAIL,
        action=VerdictAction.ROLLBACK,
        final=True,
        reason="errors",
        checks=[],
    )


@pytest.mark.parametrize(
    "status",
    [
        ReleaseStatus.APPLYING,
        ReleaseStatus.ANALYSING,
        ReleaseStatus.WAITING,
        ReleaseStatus.PROMOTING,
        ReleaseStatus.ROLLING_BACK,
    ],
)
def test_a_live_release_is_rolled_back_whatever_the_planner_has_seen(status: ReleaseStatus) -> None:
    current = state(status, step_index=1)
    requested = RollbackRequested(target=TARGET, reason="promotion failed", requested_by="x")
    for trigger in (
        failing(1),
        PhaseFailed(target=TARGET, step=STEPS[1], reason="late"),
        requested,
    ):
        assert authority.rollback_refusals(RID, trigger, current) == []
    assert authority.rollback_refusals(RID, AbortRelease(actor="alice"), current) == []


@pytest.mark.parametrize(
    "status",
    [
        ReleaseStatus.SUCCEEDED,
        ReleaseStatus.ROLLED_BACK,
        ReleaseStatus.FAILED,
        ReleaseStatus.REJECTED,
    ],
)
def test_a_release_that_is_over_is_not_rolled_back(status: ReleaseStatus) -> None:
    requested = RollbackRequested(target=TARGET, reason="replayed", requested_by="x")
    refusals = authority.rollback_refusals(RID, requested, state(status))
    assert checks(refusals) == {authority.STATUS}
    assert "rollback.requested is obeyed only while it is applying or analysing or promoting" in (
        refusals[0].reason
    )
    assert checks(authority.rollback_refusals(RID, AbortRelease(actor="a"), state(status))) == {
        authority.STATUS
    }


def test_a_rollback_for_no_release_or_another_target_is_refused() -> None:
    requested = RollbackRequested(target=OTHER, reason="forged", requested_by="mallory")
    assert checks(authority.rollback_refusals(RID, requested, None)) == {authority.UNKNOWN_RELEASE}
    assert checks(authority.rollback_refusals(RID, AbortRelease(actor="a"), None)) == {
        authority.UNKNOWN_RELEASE
    }
    refusals = authority.rollback_refusals(RID, requested, state(ReleaseStatus.ANALYSING))
    assert checks(refusals) == {authority.TARGET}
    assert checks(authority.rollback_refusals(RID, failing(0, OTHER), state())) == {
        authority.TARGET
    }


def test_a_failure_of_an_earlier_step_is_stale_unless_the_release_already_rolls_back() -> None:
    at_step_1 = state(ReleaseStatus.ANALYSING, step_index=1)
    refusals = authority.rollback_refusals(RID, failing(0), at_step_1)
    assert checks(refusals) == {authority.STEP}
    assert "a failure of step 0 is stale" in refusals[0].reason
    late = PhaseFailed(target=TARGET, step=STEPS[0], reason="late")
    assert checks(authority.rollback_refusals(RID, late, at_step_1)) == {authority.STEP}
    rolling = state(ReleaseStatus.ROLLING_BACK, step_index=1)
    assert authority.rollback_refusals(RID, failing(0), rolling) == []


# --------------------------------------------------------------------------- policy


POLICY_SPEC = {
    "targetRef": "web",
    "steps": [{"weight": 10, "holdSeconds": 30}],
    "analysis": {"metrics": [{"name": "e", "template": "error-rate", "max": 0.1}]},
}


def test_a_target_without_a_policy_is_never_written() -> None:
    found = governing("shop", "web", [PolicyObject("cart", {**POLICY_SPEC, "targetRef": "cart"})])
    refusals = authority.policy_refusals(TARGET, "registry.local/shop/web:v2", found)
    assert checks(refusals) == {authority.POLICY}
    assert "no ReleasePolicy in namespace shop has targetRef 'web'" in refusals[0].reason
    invalid = governing("shop", "web", [PolicyObject("web", {"targetRef": "web"})])
    assert checks(authority.policy_refusals(TARGET, "x/y:1", invalid)) == {authority.POLICY}


def test_the_policy_decides_which_images_may_run() -> None:
    rules = {"allowedPrefixes": ["registry.local/shop"], "requireDigest": True}
    found = governing("shop", "web", [PolicyObject("web", {**POLICY_SPEC, "images": rules})])
    digest = "@sha256:" + "a" * 64
    assert authority.policy_refusals(TARGET, f"registry.local/shop/web:v2{digest}", found) == []
    unpinned = authority.policy_refusals(TARGET, "registry.local/shop/web:v2", found)
    assert checks(unpinned) == {authority.IMAGE}
    assert "not pinned by digest" in unpinned[0].reason and "ReleasePolicy shop/web" in (
        unpinned[0].reason
    )
    elsewhere = authority.policy_refusals(TARGET, f"registry.local/shop-evil/web{digest}", found)
    assert "is not under any allowed prefix (registry.local/shop)" in elsewhere[0].reason
    unrestricted = governing("shop", "web", [PolicyObject("web", POLICY_SPEC)])
    assert authority.policy_refusals(TARGET, "anything.example/x:1", unrestricted) == []


@pytest.mark.parametrize(
    ("prefix", "image", "allowed"),
    [
        ("registry.local/shop", "registry.local/shop/web:v2", True),
        ("registry.local/shop", "registry.local/shop:v2", True),
        ("registry.local/shop", "registry.local/shop", True),
        ("registry.local/shop", "registry.local/shopping/web:v2", False),
        ("registry.local/shop", "registry.local/shop-evil/web:v2", False),
        ("registry.local/", "registry.local/anything/at/all:1", True),
        ("registry.local/", "registry.localhost/x:1", False),
        ("registry.local/shop/web", "registry.local/shop/web@sha256:" + "b" * 64, True),
    ],
)
def test_an_allowed_prefix_matches_on_a_path_boundary(
    prefix: str, image: str, allowed: bool
) -> None:
    rules = ImageRules(allowed_prefixes=[prefix])
    assert (rules.refusal(image) is None) is allowed
    assert ImageRules().refusal(image) is None


# --------------------------------------------------------------------------- the words


def refused(check: str, reason: str) -> authority.Refusal:
    return authority.Refusal(check, reason)


def test_a_refusal_names_the_release_the_command_and_what_its_state_asks_for() -> None:
    # What the refusal event tells the person or system that sent the command, word for word.
    own = RequestPromotion(target=TARGET, version=state().version)
    assert authority.promotion_refusals(RID, own, None) == [
        refused(
            authority.UNKNOWN_RELEASE,
            "no release rel-1 is known: promotion.requested is obeyed only for a live release "
            "whose state asks for it",
        )
    ]
    same_image = state().version.model_copy(update={"env": [EnvVar(name="DEBUG", value="1")]})
    forged = RequestPromotion(target=OTHER, version=same_image)
    assert authority.promotion_refusals(RID, forged, state(ReleaseStatus.ANALYSING)) == [
        refused(authority.TARGET, "release rel-1 releases shop/web, not shop/cart"),
        refused(
            authority.STATUS,
            "release rel-1 is analysing; promotion.requested is obeyed only while it is promoting",
        ),
        refused(
            authority.VERSION,
            "release rel-1 releases another version: the same image with other env, "
            "configuration or resources",
        ),
    ]
    other_image = state().version.model_copy(update={"image": "x.example/web:evil"})
    assert authority.apply_refusals(RID, apply_of(state(), version=other_image), state()) == [
        refused(
            authority.VERSION,
            "release rel-1 releases another version: image 'x.example/web:evil', "
            "not 'registry.local/shop/web:v2'",
        )
    ]
    trigger = failing(0, OTHER)
    assert authority.rollback_refusals(RID, trigger, state(ReleaseStatus.SUCCEEDED)) == [
        refused(authority.TARGET, "release rel-1 releases shop/web, not shop/cart"),
        refused(
            authority.STATUS,
            "release rel-1 is succeeded; analysis.verdict is obeyed only while it is applying "
            "or analysing or promoting or waiting or rolling_back",
        ),
    ]


def test_a_hook_refusal_says_which_hook_and_step_the_release_waits_for() -> None:
    current = waiting_for("smoke")
    own = RunHook(target=OTHER, version=current.version, hook=SMOKE, step_index=1)
    evil = current.version.model_copy(update={"image": "x.example/web:evil"})
    assert authority.hook_refusals(RID, own.model_copy(update={"version": evil}), current) == [
        refused(authority.TARGET, "release rel-1 releases shop/web, not shop/cart"),
        refused(
            authority.VERSION,
            "release rel-1 releases another version: image 'x.example/web:evil', "
            "not 'registry.local/shop/web:v2'",
        ),
        refused(authority.STEP, "release rel-1 runs its hooks at step 0, not 1"),
    ]
    assert authority.hook_refusals(RID, own, state(ReleaseStatus.ANALYSING))[1] == refused(
        authority.STATUS, "release rel-1 is analysing; hook.run is obeyed only while it is waiting"
    )
    hookless = current.model_copy(update={"hooks": []})
    assert authority.hook_refusals(RID, own.model_copy(update={"target": TARGET}), hookless) == [
        refused(authority.HOOK, "release rel-1 has no hook 'smoke' (its hooks: none)")
    ]
    at_step_0 = own.model_copy(update={"target": TARGET, "step_index": 0})
    assert authority.hook_refusals(RID, at_step_0, waiting_for("gate")) == [
        refused(authority.HOOK, "release rel-1 waits for gate, not for hook 'smoke'")
    ]


def test_the_hook_first_in_the_queue_is_the_one_that_runs() -> None:
    current = waiting_for("smoke")
    assert current.waiting is not None
    command = RunHook(target=TARGET, version=current.version, hook=SMOKE, step_index=0)
    queued = current.model_copy(
        update={"waiting": current.waiting.model_copy(update={"queue": ["smoke", "gate"]})}
    )
    assert authority.hook_refusals(RID, command, queued) == []
    drained = current.model_copy(
        update={"waiting": current.waiting.model_copy(update={"queue": []})}
    )
    assert authority.hook_refusals(RID, command, drained) == [
        refused(authority.HOOK, "release rel-1 waits for nothing, not for hook 'smoke'")
    ]


def test_a_hook_runs_at_the_step_the_release_waits_at_not_the_step_it_moved_to() -> None:
    # The state's own step has moved on (a gate between steps); the wait names the step.
    current = waiting_for("smoke", step_index=0).model_copy(update={"step_index": 1})
    command = RunHook(target=TARGET, version=current.version, hook=SMOKE, step_index=0)
    assert authority.hook_refusals(RID, command, current) == []
