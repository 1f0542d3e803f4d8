"""Who may steer a release: one rule, read by the planner and by the rollback service.

Both consume operator commands (the rollback service takes an abort directly, so that it works
without the planner), so both must refuse the same commands for the same reasons; the rule
lives here once, as pure functions over the policy's grants that the release recorded when it
was planned. Identities are what the command says (``actor``): NATS permissions on the
operator subjects decide who may publish at all.
"""

from __future__ import annotations

import fnmatch
import hashlib

from canaryflow_contracts.events import (
    AbortRelease,
    OpenGate,
    OperatorCommand,
    OperatorCommandRefused,
    PauseRelease,
    PromoteNow,
    ResumeRelease,
    SetWeight,
    TargetRef,
)
from canaryflow_contracts.policy import OperatorAction, OperatorGrant

ACTIONS: dict[type[OperatorCommand], OperatorAction] = {
    PauseRelease: OperatorAction.PAUSE,
    ResumeRelease: OperatorAction.RESUME,
    AbortRelease: OperatorAction.ABORT,
    PromoteNow: OperatorAction.PROMOTE,
    SetWeight: OperatorAction.SET_WEIGHT,
    OpenGate: OperatorAction.OPEN_GATE,
}
# Without a list in the policy: what only ever makes a release safer.
DEFAULT_ACTIONS = frozenset({OperatorAction.PAUSE, OperatorAction.ABORT})


def action_of(command: OperatorCommand) -> OperatorAction:
    for kind, action in ACTIONS.items():
        if isinstance(command, kind):
            return action
    raise ValueError(f"not an operator command: {type(command).__name__}")


def refusal(grants: list[OperatorGrant] | None, actor: str, action: OperatorAction) -> str | None:
    """Why ``actor`` may not do ``action`` under ``grants``; None when they may."""
    if grants is None:
        if action in DEFAULT_ACTIONS:
            return None
        return (
            f"the policy lists no operators, so only pause and abort are allowed; "
            f"{action.value} needs a grant in spec.operators"
        )
    for grant in grants:
        if fnmatch.fnmatchcase(actor, grant.subject) and action in grant.actions:
            return None
    return f"{actor} may not {action.value} releases of this target (spec.operators)"


def refusal_notice(target: TargetRef, command: OperatorCommand, why: str) -> OperatorCommandRefused:
    return OperatorCommandRefused(
        target=target,
        action=action_of(command).value,
        actor=command.actor,
        reason=command.reason,
        refusal=why,
    )


def refused_id(release_id: str, command_event_id: str) -> str:
    """The same id from the planner and the rollback service: JetStream keeps one refusal."""
    digest = hashlib.sha256(command_event_id.encode()).hexdigest()[:12]
    return f"{release_id}.refused.{digest}"
