"""Polling with a deadline: the only way stack tests wait.

Why: servers converge asynchronously (a pod becomes Ready, a scrape lands, a span is
flushed). Sleeping a fixed time is either flaky or slow; polling until a condition holds,
with a timeout whose failure message says what was last observed, is neither.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold within the timeout."""


class _Deadline:
    """Bookkeeping shared by the sync and async loops: the last attempt and the deadline."""

    def __init__(self, timeout: float, message: str) -> None:
        self.timeout, self.message = timeout, message
        self.end = time.monotonic() + timeout

    def settle(self, value: object, error: BaseException | None) -> bool:
        """True when ``value`` ends the wait; raises WaitTimeout when time is up."""
        if value:
            return True
        if time.monotonic() >= self.end:
            text = f"timed out after {self.timeout:.0f} s waiting for {self.message}"
            text += f"; last value: {value!r}"
            if error is not None:
                text += f"; last error: {type(error).__name__}: {error}"
            raise WaitTimeout(text)
        return False


def wait_until(
    check: Callable[[], T | None],
    *,
    timeout: float,
    message: str,
    interval: float = 0.2,
) -> T:
    """Call ``check`` until it returns a truthy value, and return that value.

    Exceptions raised by ``check`` count as "not yet" (the last one is reported on timeout),
    except AssertionError, which fails at once: a check that asserts has seen a wrong answer.
    """
    deadline = _Deadline(timeout, message)
    while True:
        error: BaseException | None = None
        try:
            value = check()
        except AssertionError:
            raise
        except Exception as exc:
            value, error = None, exc
        if deadline.settle(value, error) and value is not None:
            return value
        time.sleep(interval)


async def async_wait_until(
    check: Callable[[], Awaitable[T | None]],
    *,
    timeout: float,
    message: str,
    interval: float = 0.2,
) -> T:
    """The asyncio form of :func:`wait_until`."""
    deadline = _Deadline(timeout, message)
    while True:
        error: BaseException | None = None
        try:
            value = await check()
        except AssertionError:
            raise
        except Exception as exc:
            value, error = None, exc
        if deadline.settle(value, error) and value is not None:
            return value
        await asyncio.sleep(interval)
