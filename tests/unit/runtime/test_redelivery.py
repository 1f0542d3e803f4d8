"""How JetStream is told to redeliver a message that no handler settled."""

from __future__ import annotations

import pytest

from canaryflow.runtime.bus import server_max_deliver, unsettled_backoff


def test_a_killed_handlers_message_comes_back_after_the_ack_wait_then_ever_later() -> None:
    # The defaults: 1 s ack wait, our handler gives up at its 5th failure.
    backoff = unsettled_backoff(1.0, 5)
    assert backoff == [1.0, 2.0, 5.0, 10.0, 20.0, 40.0]
    # The server takes one value fewer than its deliveries (it refuses more).
    assert len(backoff) == server_max_deliver(5) - 1 == 6
    # Seven deliveries to replicas that die at once span over a minute, not seven seconds.
    assert sum(backoff) == 78.0


@pytest.mark.parametrize(("ack_wait", "max_deliver"), [(30.0, 5), (2.0, 1), (1.0, 12)])
def test_no_wait_is_shorter_than_the_ack_wait_and_the_last_repeats(
    ack_wait: float, max_deliver: int
) -> None:
    backoff = unsettled_backoff(ack_wait, max_deliver)
    assert len(backoff) == server_max_deliver(max_deliver) - 1
    assert backoff[0] == ack_wait
    assert all(wait >= ack_wait for wait in backoff)
    assert backoff == sorted(backoff)
    if max_deliver == 12:
        assert backoff[-4:] == [40.0] * 4
