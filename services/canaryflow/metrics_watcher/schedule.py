"""When the ticks of a step fall, and whether a release still wants them; no I/O.

Ticks are anchored to the analysis request's envelope time, not to when this replica got
the message: a redelivery after a crash resumes the same schedule (and re-publishes the same
deterministic event ids, which JetStream deduplicates) instead of restarting the hold.
"""

from __future__ import annotations

import math

from canaryflow_contracts.state import ReleaseState, ReleaseStatus


def tick_offsets(hold_seconds: float, interval_seconds: float) -> list[float]:
    """Seconds after the anchor at which to measure: every interval, and once at the end.

    The last offset is always the end of the hold, so the final verdict describes the canary
    as it is when the step ends. A hold of zero still measures once.
    """
    if interval_seconds <= 0:
        raise ValueError(f"interval must be positive, got {interval_seconds}")
    hold = max(hold_seconds, 0.0)
    count = math.ceil(hold / interval_seconds)
    offsets = [k * interval_seconds for k in range(count)]
    if not offsets or offsets[-1] < hold:
        offsets.append(hold)
    return offsets


def extended_offsets(hold_seconds: float, interval_seconds: float, extensions: int) -> list[float]:
    """The ticks of a hold extended ``extensions`` times: each extension is another hold
    (at least one interval) measured at the same rhythm, after the end of the last."""
    offsets = tick_offsets(hold_seconds, interval_seconds)
    more = tick_offsets(max(hold_seconds, interval_seconds), interval_seconds)[1:]
    for _ in range(extensions):
        end = offsets[-1]
        offsets += [end + offset for offset in more]
    return offsets


def first_due_tick(offsets: list[float], elapsed_seconds: float) -> int:
    """The tick to run first when ``elapsed_seconds`` of the schedule have already passed.

    The one whose time has most recently come runs at once; earlier ones are skipped (their
    moment is gone, and a later measurement covers the same window).
    """
    elapsed = max(elapsed_seconds, 0.0)
    return max(index for index, offset in enumerate(offsets) if offset <= elapsed)


def still_analysing(state: ReleaseState | None, step_index: int) -> bool:
    """Whether the release still waits for this step's analysis (anything else: stop)."""
    return (
        state is not None
        and state.status is ReleaseStatus.ANALYSING
        and state.step_index == step_index
    )
