"""The planner's cluster reader never holds the event loop.

A request's handler reads the target and its policies; while it does, the consumer's
heartbeat (bus.Heartbeat, every third of a 1 s ack wait) must keep firing, or JetStream hands
the request to another replica and it is handled several times. The kubernetes client's first
use imports its API modules and models lazily: seconds of CPU on a busy machine.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from canaryflow.planner import validation
from canaryflow.planner.validation import KubeClusterReader

SLOW_FIRST_USE = 0.6  # seconds the fake client's making holds whoever makes it


class _NotFoundApi:
    def __init__(self, api: object) -> None:
        time.sleep(SLOW_FIRST_USE / 3)  # a lazy import of the API module, on first use

    def __getattr__(self, name: str) -> Any:
        def missing(*args: object, **kwargs: object) -> object:
            raise ApiException(status=404, reason="Not Found")

        return missing


def _slow_client(kubeconfig: str | None) -> object:
    time.sleep(SLOW_FIRST_USE)
    return object()


async def _longest_stall(work: Any) -> float:
    """The longest the loop went without running a 10 ms timer while ``work`` ran."""
    stalls: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            stalls.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    try:
        result = await work
    finally:
        done.set()
        await ticker
    assert result in (None, [])
    return max(stalls)


@pytest.mark.parametrize("read", ["deployment", "release_policies"])
async def test_first_read_leaves_the_event_loop_free(
    read: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(validation, "api_client", _slow_client)
    for name in ("AppsV1Api", "CoreV1Api", "CustomObjectsApi"):
        monkeypatch.setattr(client, name, _NotFoundApi)
    reader = KubeClusterReader("kubeconfig")
    work = (
        reader.deployment("shop", "web")
        if read == "deployment"
        else reader.release_policies("shop")
    )
    assert await _longest_stall(work) < SLOW_FIRST_USE / 2
