"""Whether a command that changes a workload may be obeyed: plain functions, no I/O.

Anyone who can publish on the bus can write a well-formed command, and a bug in a service,
a replayed old message or a mis-set permission can put one there too. So the executor and
the rollback service never take a command's word for anything. They obey it only when the
planner's state of the release it names (read-only for them) asks for exactly that, now:

- the release exists and is live, in the status that issues the command;
- the command's target, version, step (index, weight, hold), deadline and hook are the ones
  that state holds. That match is the command's proof of freshness: the state changes with
  every transition (a new step, a new deadline, a terminal status), so a replayed or stale
  command stops matching, and a command that matches asks for what the release wants anyway;
- for forward writes, the target's ReleasePolicy exists in the cluster and allows the image
  (the cluster's word, which the bus cannot forge).

The way back needs no policy and trusts no image: a rollback restores only what the
release's own restore point and bundle recorded on the cluster (see rollback.restorer), so
a rollback for a live release is obeyed while the planner is down. Every failed check is a
``Refusal``; all of them are reported together, so one refusal event says everything wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from canaryflow.runtime.policies import Governing
from canaryflow_contracts import EventData
from canaryflow_contracts.events import (
    AnalysisVerdict,
    ApplyPhase,
    PhaseFailed,
    RequestPromotion,
    RunHook,
    TargetRef,
    VersionSpec,
)
from canaryflow_contracts.policy import HookType
from canaryflow_contracts.state import ReleaseState, ReleaseStatus

# The failed checks, one word each, as the refusal event and the metric name them.
UNKNOWN_RELEASE = "unknown-release"
STATUS = "status"
TARGET = "target"
VERSION = "version"
STEP = "step"
HOOK = "hook"
POLICY = "policy"
IMAGE = "image"

_APPLY_STATUSES = (ReleaseStatus.APPLYING, ReleaseStatus.ANALYSING)
_LIVE_STATUSES = tuple(status for status in ReleaseStatus if not status.terminal)


@dataclass(frozen=True)
class Refusal:
    check: str
    reason: str


def apply_refusals(
    release_id: str, command: ApplyPhase, state: ReleaseState | None
) -> list[Refusal]:
    """An ApplyPhase is obeyed for the release's current step while it applies or analyses it.

    ANALYSING counts because a replay of the current step's own command must find the step
    in place and report it again.
    """
    found = _release(release_id, state, command.target, "phase.apply", _APPLY_STATUSES)
    if state is None:
        return found
    found += _version(release_id, state, command.version)
    step, current = command.step, state.current_step
    if step != current:
        found.append(
            Refusal(
                STEP,
                f"release {release_id} is at step {state.step_index} ({current.weight}% for "
                f"{current.hold_seconds:g}s); the command is for step {step.index} "
                f"({step.weight}% for {step.hold_seconds:g}s)",
            )
        )
    elif (
        command.ready_deadline != state.ready_deadline
        or command.canary_resources != state.canary_resources
    ):
        found.append(
            Refusal(
                STEP,
                f"the command's deadline or canary resources are not the ones release "
                f"{release_id} holds for step {step.index} (deadline "
                f"{state.ready_deadline.isoformat()}): a command from an earlier pass",
            )
        )
    return found


def promotion_refusals(
    release_id: str, command: RequestPromotion, state: ReleaseState | None
) -> list[Refusal]:
    """A promotion is obeyed only while the release promotes, and only to its own version."""
    found = _release(
        release_id, state, command.target, "promotion.requested", (ReleaseStatus.PROMOTING,)
    )
    if state is not None:
        found += _version(release_id, state, command.version)
    return found


def hook_refusals(release_id: str, command: RunHook, state: ReleaseState | None) -> list[Refusal]:
    """A webhook is called only when the release runs that very hook now.

    The URL called is the one the release recorded from its policy: a command naming another
    one (a forged hook would make the executor POST anywhere it can reach) is refused.
    """
    hook = command.hook
    final = {
        HookType.POST_ROLLOUT: ReleaseStatus.SUCCEEDED,
        HookType.ROLLBACK: ReleaseStatus.ROLLED_BACK,
    }
    statuses = (final[hook.type],) if hook.type in final else (ReleaseStatus.WAITING,)
    found = _release(release_id, state, command.target, "hook.run", statuses)
    if state is None:
        return found
    found += _version(release_id, state, command.version)
    if hook not in state.hooks:
        names = ", ".join(h.name for h in state.hooks) or "none"
        known = any(h.name == hook.name for h in state.hooks)
        found.append(
            Refusal(
                HOOK,
                f"hook {hook.name!r} differs from the release's own (URL or settings)"
                if known
                else f"release {release_id} has no hook {hook.name!r} (its hooks: {names})",
            )
        )
        return found
    waiting = state.waiting
    if hook.type not in final and waiting is not None and waiting.queue[:1] != [hook.name]:
        current = waiting.queue[0] if waiting.queue else "nothing"
        found.append(
            Refusal(HOOK, f"release {release_id} waits for {current}, not for hook {hook.name!r}")
        )
    step_index = waiting.step_index if waiting is not None else state.step_index
    if command.step_index != step_index:
        found.append(
            Refusal(
                STEP,
                f"release {release_id} runs its hooks at step {step_index}, "
                f"not {command.step_index}",
            )
        )
    return found


def rollback_refusals(
    release_id: str, event: EventData, state: ReleaseState | None
) -> list[Refusal]:
    """A reason to roll back is obeyed for a live release of the target it names.

    Any live status counts: the rollback service acts without waiting for the planner, which
    may not have seen the failure yet, or may be down. A failure report about another step
    than the release's current one is stale, unless the release is already rolling back
    (then restoring is what it wants anyway).
    """
    target = getattr(event, "target", None)  # an abort names the release, not a target
    what = event.subject_stem().rsplit(".", 1)[0]
    found = _release(release_id, state, target, what, _LIVE_STATUSES)
    if state is None or not isinstance(event, AnalysisVerdict | PhaseFailed):
        return found
    if state.status is not ReleaseStatus.ROLLING_BACK and event.step.index != state.step_index:
        found.append(
            Refusal(
                STEP,
                f"release {release_id} is at step {state.step_index}; a failure of step "
                f"{event.step.index} is stale",
            )
        )
    return found


def policy_refusals(target: TargetRef, image: str, policy: Governing) -> list[Refusal]:
    """A forward write needs the target's policy in the cluster, and an image it allows."""
    if policy.spec is None:
        return [Refusal(POLICY, problem) for problem in policy.problems]
    rules = policy.spec.images
    why = rules.refusal(image) if rules is not None else None
    if why is None:
        return []
    return [Refusal(IMAGE, f"{why} (ReleasePolicy {target.namespace}/{policy.name})")]


def _release(
    release_id: str,
    state: ReleaseState | None,
    target: TargetRef | None,
    what: str,
    statuses: tuple[ReleaseStatus, ...],
) -> list[Refusal]:
    if state is None:
        return [
            Refusal(
                UNKNOWN_RELEASE,
                f"no release {release_id} is known: {what} is obeyed only for a live release "
                "whose state asks for it",
            )
        ]
    found = []
    if target is not None and state.target != target:
        found.append(
            Refusal(
                TARGET,
                f"release {release_id} releases {state.target.key()}, not {target.key()}",
            )
        )
    if state.status not in statuses:
        wanted = " or ".join(status.value for status in statuses)
        found.append(
            Refusal(
                STATUS,
                f"release {release_id} is {state.status.value}; {what} is obeyed only while "
                f"it is {wanted}",
            )
        )
    return found


def _version(release_id: str, state: ReleaseState, version: VersionSpec) -> list[Refusal]:
    if version == state.version:
        return []
    if version.image != state.version.image:
        differs = f"image {version.image!r}, not {state.version.image!r}"
    else:
        differs = "the same image with other env, configuration or resources"
    return [Refusal(VERSION, f"release {release_id} releases another version: {differs}")]
