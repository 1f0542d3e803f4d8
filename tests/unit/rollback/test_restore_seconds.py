"""What ``canaryflow_restore_seconds`` and ``seconds_to_restore`` measure: trigger to traffic
back on stable, at the moment the attempt saw it, whatever came after."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from canaryflow.rollback.restorer import Restored, restore_seconds_of

VERDICT = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)


def test_a_restore_counts_to_when_traffic_was_back_not_to_when_the_attempt_ended() -> None:
    back = VERDICT + timedelta(seconds=0.39)
    restored = Restored(10, "restored stable's size", True, traffic_back_at=back)
    # The attempt went on cleaning up (or was a redelivery that waited) long after.
    assert restore_seconds_of(restored, VERDICT, VERDICT + timedelta(seconds=30)) == 0.39


def test_an_attempt_that_found_traffic_back_gives_only_an_upper_bound() -> None:
    restored = Restored(10, "stable already restored", False)
    assert restore_seconds_of(restored, VERDICT, VERDICT + timedelta(seconds=1.5)) == 1.5


def test_a_trigger_stamped_by_a_clock_ahead_of_ours_never_gives_a_negative_time() -> None:
    restored = Restored(10, "restored", True, traffic_back_at=VERDICT - timedelta(seconds=0.2))
    assert restore_seconds_of(restored, VERDICT, VERDICT) == 0.0
