"""JetStream calls are tried again while the server does not answer, and only for so long."""

from __future__ import annotations

import nats.errors
import pytest

from canaryflow.runtime.bus import until_jetstream_answers


async def test_a_call_that_times_out_twice_is_tried_until_it_answers() -> None:
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise nats.errors.TimeoutError
        return "stored"

    assert await until_jetstream_answers("publish", call, seconds=5) == "stored"
    assert calls == 3


async def test_a_call_that_never_answers_fails_once_the_time_is_up() -> None:
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        raise nats.errors.TimeoutError

    with pytest.raises(nats.errors.TimeoutError):
        await until_jetstream_answers("publish", call, seconds=0.5)
    assert 2 <= calls <= 5


async def test_other_errors_are_not_tried_again() -> None:
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        raise ValueError("bad subject")

    with pytest.raises(ValueError):
        await until_jetstream_answers("publish", call, seconds=5)
    assert calls == 1


class _Subscriber:
    def __init__(self) -> None:
        self.subscriptions = 0

    async def start(self) -> None:
        self.subscriptions += 1

    async def stop(self) -> None:
        self.subscriptions = 0


class _Broker:
    """Binds its first subscriber, then times out on the second's consumer, once."""

    def __init__(self) -> None:
        self.subscribers = [_Subscriber(), _Subscriber()]
        self.attempts = 0

    async def start(self) -> None:
        self.attempts += 1
        await self.subscribers[0].start()
        if self.attempts == 1:
            raise nats.errors.TimeoutError
        await self.subscribers[1].start()


async def test_binding_consumers_again_after_a_timeout_subscribes_each_once() -> None:
    from types import SimpleNamespace

    from canaryflow.runtime.service import Service

    broker = _Broker()
    service = SimpleNamespace(broker=broker)

    start = Service._start_consuming.__get__(service)
    await until_jetstream_answers("bind the consumers", start, seconds=5)

    assert broker.attempts == 2
    assert [s.subscriptions for s in broker.subscribers] == [1, 1]
