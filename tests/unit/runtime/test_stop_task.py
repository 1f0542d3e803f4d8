"""A service's background loop stops even when a cancellation is lost on its way.

Python 3.11's ``asyncio.wait_for`` returns the reply instead of raising when the task is
cancelled just as the reply arrives; the loop below swallows its first cancellation the same
way and then waits an hour, as the planner's reconcile loop did.
"""

from __future__ import annotations

import asyncio
import time

from canaryflow.runtime.service import stop_task


async def _loop_that_loses_one_cancellation(passes: list[str]) -> None:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        passes.append("cancellation lost")  # what the 3.11 race does: carry on
    passes.append("next pass")
    await asyncio.sleep(3600)


async def test_a_loop_that_lost_a_cancellation_is_cancelled_again() -> None:
    passes: list[str] = []
    task = asyncio.create_task(_loop_that_loses_one_cancellation(passes))
    await asyncio.sleep(0)
    started = time.monotonic()

    await asyncio.wait_for(stop_task(task, retry_seconds=0.05), timeout=5)

    assert task.cancelled()
    assert passes == ["cancellation lost", "next pass"]
    assert time.monotonic() - started < 1


async def test_a_loop_that_honours_cancellation_stops_at_once() -> None:
    task = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    started = time.monotonic()

    await stop_task(task, retry_seconds=5)

    assert task.cancelled()
    assert time.monotonic() - started < 1
