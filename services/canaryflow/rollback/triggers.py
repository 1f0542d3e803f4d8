"""Why a release is rolled back, and whether an abort may be given: no I/O here.

Whether a trigger is obeyed at all (a live release of that target) is ``runtime.authority``'s.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, assert_never

from canaryflow.runtime import operators
from canaryflow_contracts import Envelope, EventData
from canaryflow_contracts.events import (
    AbortRelease,
    AnalysisVerdict,
    PhaseFailed,
    RollbackRequested,
)
from canaryflow_contracts.state import ReleaseState

RollbackTrigger = AnalysisVerdict | PhaseFailed | RollbackRequested | AbortRelease
"""The events the rollback service consumes, each a reason to roll back. ``reason_of`` words each
one, and mypy proves it (``assert_never``)."""


def reason_of(event: EventData) -> str:
    """Why the release is being rolled back, in the words its outcome will carry."""
    if not isinstance(event, RollbackTrigger):
        raise TypeError(f"{event.event_type()} is not a reason to roll back")
    match event:
        case AnalysisVerdict():
            return f"analysis failed at step {event.step.index}: {event.reason}"
        case PhaseFailed():
            return f"step {event.step.index} failed: {event.reason}"
        case RollbackRequested():
            return event.reason or f"requested by {event.requested_by}"
        case AbortRelease():
            return event.described()
        case _:
            assert_never(event)


def abort_refusal(abort: Envelope[Any], state: ReleaseState, now: datetime) -> str | None:
    """Why this abort may not act (the policy's operators, its signature); None when it may.

    The planner refuses the same abort for the same reason; the rollback service checks too
    because it acts on an abort without waiting for the planner.
    """
    return operators.command_refusal(state.operators, abort, now)
