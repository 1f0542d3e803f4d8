"""A replica's step waits share a budget of reads of the API server (pure parts)."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import pytest

from canaryflow.executor import phases
from canaryflow.runtime import kube


def test_few_waits_read_every_two_seconds_and_many_share_the_budget() -> None:
    assert phases.step_poll_seconds(1) == phases.STEP_POLL_SECONDS
    assert phases.step_poll_seconds(100) == phases.STEP_POLL_SECONDS  # 150 reads/s
    # 1,000 waits of three Deployments each: one read each every 20 s, 150 reads a second.
    assert phases.step_poll_seconds(1000) == pytest.approx(20.0)
    waits = range(1, 2000, 37)
    assert all(
        phases.step_poll_seconds(a) <= phases.step_poll_seconds(b)
        for a, b in itertools.pairwise(waits)
    )


async def test_a_wait_asks_its_interval_again_at_every_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)  # poll_until sleeps through asyncio
    reads = 0
    longest = iter([2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 8.0, 8.0, 8.0, 8.0])

    async def read() -> int:
        nonlocal reads
        reads += 1
        return reads

    value, done = await kube.poll_until(
        read,
        lambda n: n >= 9,
        deadline=datetime.now(UTC) + timedelta(minutes=5),
        interval=lambda: next(longest),
    )

    assert (value, done) == (9, True)
    # Doubling from 0.1 s up to the interval asked at that moment: 2 s, then 8 s.
    assert slept == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 4.0, 8.0]
