"""Hooks and gates: the points where a release waits for something outside canaryflow.

A release waits before any traffic moves (pre-rollout hooks, then confirm-rollout gates), at
each step once it is in place (rollout hooks, before the step is judged) and before promotion
(confirm-promotion gates). While it waits its status is WAITING, and ``Waiting`` says for what:
the hooks and gates still to pass, in the policy's order, and where the release goes after.
Nothing here does I/O: the machine turns these states into commands (RunHook, the next step's
command), the reconcile turns a passed deadline into an expiry or a failure.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from canaryflow_contracts.policy import GateExpiry, Hook, HookType
from canaryflow_contracts.state import ReleaseState, ReleaseStatus, Waiting

PRE_ROLLOUT = "pre-rollout"
ROLLOUT = "rollout"
PROMOTION = "promotion"

STAGES: dict[str, tuple[HookType, ...]] = {
    PRE_ROLLOUT: (HookType.PRE_ROLLOUT, HookType.CONFIRM_ROLLOUT),
    ROLLOUT: (HookType.ROLLOUT,),
    PROMOTION: (HookType.CONFIRM_PROMOTION,),
}
# The gate every member of a release group waits at before promotion, opened by the group
# (GroupPromoteMember) once every member passed; never by a person. Its deadline bounds how
# long a member waits for the others: past it, the member is rolled back, and so the group.
GROUP_GATE = "canaryflow-group"
GROUP_GATE_SECONDS = 3600.0
# Time a webhook gets beyond its attempts before its silence counts as a failure.
WEBHOOK_GRACE_SECONDS = 30.0


def queue_for(hooks: list[Hook], stage: str) -> list[str]:
    """The hooks and gates of ``stage``, hooks before gates, each in the policy's order."""
    kinds = STAGES[stage]
    return [hook.name for kind in kinds for hook in hooks if hook.type is kind]


def hook_named(state: ReleaseState, name: str) -> Hook:
    return next(hook for hook in state.hooks if hook.name == name)


def current(state: ReleaseState) -> Hook | None:
    """The hook or gate the release waits for now, if it waits."""
    if state.status is not ReleaseStatus.WAITING or state.waiting is None:
        return None
    if not state.waiting.queue:
        return None
    return hook_named(state, state.waiting.queue[0])


def deadline_for(hook: Hook, now: datetime) -> datetime:
    """When waiting for ``hook`` stops: a gate's or a bus hook's deadline, a webhook's tries."""
    if hook.url is None:
        return now + timedelta(seconds=hook.deadline_seconds)
    attempts = hook.retries + 1
    return now + timedelta(seconds=hook.timeout_seconds * attempts + WEBHOOK_GRACE_SECONDS)


def enter(state: ReleaseState, stage: str, then: ReleaseStatus, now: datetime) -> ReleaseState:
    """Wait at ``stage`` if the policy has hooks or gates there; else go straight to ``then``."""
    queue = queue_for(state.hooks, stage)
    if not queue:
        return _leave(state, then, now)
    waiting = Waiting(
        stage=stage,
        step_index=state.step_index,
        queue=queue,
        then=then,
        deadline=deadline_for(hook_named(state, queue[0]), now),
    )
    return state.model_copy(update={"status": ReleaseStatus.WAITING, "waiting": waiting})


def passed(state: ReleaseState, now: datetime) -> ReleaseState:
    """The current hook or gate is passed: wait for the next one, or go on."""
    assert state.waiting is not None
    rest = state.waiting.queue[1:]
    if not rest:
        return _leave(state, state.waiting.then, now)
    waiting = state.waiting.model_copy(
        update={"queue": rest, "deadline": deadline_for(hook_named(state, rest[0]), now)}
    )
    return state.model_copy(update={"waiting": waiting})


def _leave(state: ReleaseState, then: ReleaseStatus, now: datetime) -> ReleaseState:
    update: dict[str, object] = {"status": then, "waiting": None, "last_command_at": now}
    if then is ReleaseStatus.APPLYING:
        # The step's time to become ready starts when it is really applied.
        update |= {"phase_started_at": now, "ready_deadline": now + state.ready_window}
    return state.model_copy(update=update)


def expired(state: ReleaseState, now: datetime) -> Hook | None:
    """The hook or gate whose deadline has passed, if the release waits for one."""
    hook = current(state)
    if hook is None or state.waiting is None or now <= state.waiting.deadline:
        return None
    return hook


def expiry_continues(hook: Hook) -> bool:
    """A gate whose policy says go on; everything else that ran out of time fails."""
    return hook.type.gate and hook.on_expiry is GateExpiry.CONTINUE


def group_gate() -> Hook:
    """The gate a group's member waits at, after the policy's own confirm-promotion gates."""
    return Hook(
        name=GROUP_GATE,
        type=HookType.CONFIRM_PROMOTION,
        deadline_seconds=GROUP_GATE_SECONDS,
        on_expiry=GateExpiry.ROLLBACK,
    )


def at_group_gate(state: ReleaseState) -> bool:
    """The release waits for its group to let it be promoted."""
    hook = current(state)
    return hook is not None and hook.name == GROUP_GATE and bool(state.group)
