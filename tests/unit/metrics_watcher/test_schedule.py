"""Tick times within a hold, resuming after a redelivery, and when a release stops wanting them."""

from __future__ import annotations

import pytest

from canaryflow.metrics_watcher.schedule import (
    extended_offsets,
    first_due_tick,
    still_analysing,
    tick_offsets,
)
from canaryflow_contracts.state import ReleaseStatus
from tests.unit.metrics_watcher.fakes import state


@pytest.mark.parametrize(
    ("hold", "interval", "expected"),
    [
        (10, 5, [0, 5, 10]),
        (10, 3, [0, 3, 6, 9, 10]),
        (4, 5, [0, 4]),
        (0, 5, [0]),
    ],
)
def test_ticks_every_interval_and_once_at_the_end(
    hold: float, interval: float, expected: list[float]
) -> None:
    assert tick_offsets(hold, interval) == expected


@pytest.mark.parametrize(
    ("hold", "interval", "extensions", "expected"),
    [
        (10, 5, 0, [0, 5, 10]),
        (10, 5, 2, [0, 5, 10, 15, 20, 25, 30]),
        (4, 5, 1, [0, 4, 9]),  # an extension lasts at least one interval
    ],
)
def test_each_extension_is_another_hold_at_the_same_rhythm(
    hold: float, interval: float, extensions: int, expected: list[float]
) -> None:
    assert extended_offsets(hold, interval, extensions) == expected


def test_the_current_tick_runs_first_after_a_redelivery() -> None:
    offsets = [0.0, 5.0, 10.0]
    assert first_due_tick(offsets, 0.02) == 0
    assert first_due_tick(offsets, -3) == 0  # clock skew: the anchor looks in the future
    assert first_due_tick(offsets, 7) == 1
    assert first_due_tick(offsets, 60) == 2


def test_only_the_analysing_release_at_this_step_is_still_judged() -> None:
    assert still_analysing(state(), 0)
    assert not still_analysing(state(), 1)
    assert not still_analysing(state(ReleaseStatus.ANALYSING, step_index=1), 0)
    assert not still_analysing(state(ReleaseStatus.APPLYING, step_index=1), 1)
    assert not still_analysing(state(ReleaseStatus.ROLLING_BACK), 0)
    assert not still_analysing(None, 0)
