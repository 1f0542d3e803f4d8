"""JetStream discipline on a real NATS server: nothing lost, nothing handled twice.

Given a service built on the shared runtime, with a fresh stream prefix per test,
these tests publish real messages and watch what the server and the handler do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig
from tests.support import StackEnv, async_wait_until
from tests.unit.support_state import sample_state

from canaryflow.runtime.bus import (
    UNLIMITED_IN_FLIGHT,
    Delivery,
    ensure_streams,
    server_max_deliver,
    unsettled_backoff,
)
from canaryflow.runtime.service import Service
from canaryflow.runtime.settings import Settings
from canaryflow.runtime.store import StaleWrite
from canaryflow_contracts import Envelope, Subjects
from canaryflow_contracts.events import DeadLetter, PauseRelease, parse_event

pytestmark = pytest.mark.stack


def _settings(stack: StackEnv, prefix: str, **changes: Any) -> Settings:
    given: dict[str, Any] = {"max_deliver": 3, "workers": 2, **changes}
    return Settings(
        service="bustest", nats_url=stack.nats_url, prefix=prefix, **stack.nats_settings(), **given
    )


@pytest.fixture
async def service(stack: StackEnv, stream_prefix: str) -> AsyncIterator[Service]:
    yield Service(_settings(stack, stream_prefix))


async def _publish(nc: NatsClient, subjects: Subjects, raw: bytes, msg_id: str) -> None:
    await nc.jetstream().publish(
        subjects.of(PauseRelease, "rel-1"), raw, headers={"Nats-Msg-Id": msg_id}
    )


def _pause(event_id: str = "e-1") -> bytes:
    envelope = Envelope.wrap(
        PauseRelease(actor="tester"), release_id="rel-1", source="tests", id=event_id
    )
    return envelope.model_dump_json().encode()


def _has(items: Sequence[object], count: int) -> Callable[[], Awaitable[bool | None]]:
    async def check() -> bool | None:
        return True if len(items) >= count else None

    return check


async def _dead_letters(nc: NatsClient, subjects: Subjects) -> list[DeadLetter]:
    js = nc.jetstream()
    info = await js.stream_info(subjects.deadletter_stream.name)
    letters = []
    for sequence in range(1, info.state.last_seq + 1):
        message = await js.get_msg(subjects.deadletter_stream.name, sequence)
        data = parse_event(message.data or b"").data
        assert isinstance(data, DeadLetter)
        letters.append(data)
    return letters


async def test_a_failing_handler_is_retried_until_it_succeeds(
    service: Service, nats_client: NatsClient
) -> None:
    attempts: list[int] = []

    async def flaky(envelope: Envelope[PauseRelease], delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        if delivery.attempt < 3:
            raise RuntimeError("transient")

    service.subscribe(PauseRelease, "flaky", flaky)
    await service.start()
    try:
        await _publish(nats_client, service.settings.subjects, _pause(), "m-1")
        await async_wait_until(_has(attempts, 3), timeout=20, message="3 attempts")
        # Acked: JetStream hands an acked message out no more, so what was handled is final.
        await service_acked(nats_client, service, "flaky")
        info = await nats_client.jetstream().consumer_info(
            service.settings.subjects.events_stream.name,
            service.settings.subjects.consumer(service.settings.service, "flaky"),
        )
        assert info.delivered.consumer_seq == 3  # one message, delivered three times
        assert attempts == [1, 2, 3]
        assert await _dead_letters(nats_client, service.settings.subjects) == []
    finally:
        await service.stop()


async def test_a_handler_that_always_fails_is_dead_lettered_with_its_error(
    service: Service, nats_client: NatsClient
) -> None:
    attempts: list[int] = []

    async def broken(envelope: Envelope[PauseRelease], delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        raise RuntimeError("the cluster said no")

    service.subscribe(PauseRelease, "broken", broken)
    await service.start()
    try:
        await _publish(nats_client, service.settings.subjects, _pause(), "m-2")
        subjects = service.settings.subjects

        async def lettered() -> list[DeadLetter] | None:
            return await _dead_letters(nats_client, subjects) or None

        letters = await async_wait_until(lettered, timeout=30, message="a dead letter")
        assert attempts == [1, 2, 3]
        assert letters[0].deliveries == 3
        assert "the cluster said no" in letters[0].error
        assert letters[0].original_subject == subjects.of(PauseRelease, "rel-1")
        assert b'"actor":"tester"' in letters[0].payload.encode()
    finally:
        await service.stop()


async def test_a_malformed_message_is_dead_lettered_at_once(
    service: Service, nats_client: NatsClient
) -> None:
    handled: list[str] = []

    async def handler(envelope: Envelope[PauseRelease], delivery: Delivery) -> None:
        handled.append(envelope.id)

    service.subscribe(PauseRelease, "strict", handler)
    await service.start()
    try:
        await _publish(nats_client, service.settings.subjects, b'{"not": "an event"}', "m-3")
        subjects = service.settings.subjects

        async def lettered() -> list[DeadLetter] | None:
            return await _dead_letters(nats_client, subjects) or None

        letters = await async_wait_until(lettered, timeout=15, message="a dead letter")
        assert letters[0].deliveries == 1
        assert "malformed" in letters[0].error
        assert handled == []
    finally:
        await service.stop()


async def test_a_republished_event_is_stored_and_handled_once(
    service: Service, nats_client: NatsClient
) -> None:
    handled: list[str] = []

    async def handler(envelope: Envelope[PauseRelease], delivery: Delivery) -> None:
        handled.append(envelope.id)

    service.subscribe(PauseRelease, "once", handler)
    await service.start()
    try:
        subject = service.settings.subjects.of(PauseRelease, "rel-1")
        acks = [
            await nats_client.jetstream().publish(
                subject, _pause("same"), headers={"Nats-Msg-Id": "same"}
            )
            for _ in range(3)
        ]
        assert [ack.duplicate for ack in acks] == [None, True, True]
        await async_wait_until(_has(handled, 1), timeout=10, message="the event handled")
        # Acked with nothing pending: there is nothing more the consumer could hand out.
        await service_acked(nats_client, service, "once")
        info = await nats_client.jetstream().stream_info(
            service.settings.subjects.events_stream.name
        )
        assert info.state.messages == 1
        assert handled == ["same"]
    finally:
        await service.stop()


async def test_release_state_writes_are_compare_and_set(service: Service) -> None:
    await service.start()
    try:
        store = service.store
        state = sample_state("rel-cas")
        revision = await store.create(state)
        with pytest.raises(StaleWrite):
            await store.create(state)
        await store.update(state.model_copy(update={"step_index": 1}), revision)
        with pytest.raises(StaleWrite):
            await store.update(state.model_copy(update={"step_index": 2}), revision)
        current = await store.get("rel-cas")
        assert current is not None and current.state.step_index == 1
    finally:
        await service.stop()


async def test_every_release_is_listed_at_its_latest_revision_and_nothing_else(
    service: Service, nats_client: NatsClient, stream_prefix: str
) -> None:
    await service.start()
    try:
        store = service.store
        assert await store.all() == []  # an empty bucket ends the listing too
        first = await store.create(sample_state("rel-a"))
        latest = await store.update(
            sample_state("rel-a").model_copy(update={"step_index": 1}), first
        )
        await store.create(sample_state("rel-b"))
        await store.claim_target(sample_state("rel-b").target, "rel-b")  # a lock, not a release
        await store.create(sample_state("rel-gone"))
        kv = await nats_client.jetstream().key_value(Subjects(stream_prefix).releases_bucket)
        await kv.delete("release.rel-gone")

        listed = {v.state.release_id: v for v in await store.all()}

        assert set(listed) == {"rel-a", "rel-b"}
        assert listed["rel-a"].revision == latest and listed["rel-a"].state.step_index == 1
    finally:
        await service.stop()


async def test_a_body_nested_ten_thousand_deep_is_dead_lettered_at_once_not_lost(
    service: Service, nats_client: NatsClient
) -> None:
    """It made FastStream's JSON decoding raise RecursionError before any handler, until the
    redeliveries ran out and the message was gone."""
    handled: list[str] = []

    async def handler(envelope: Envelope[PauseRelease], delivery: Delivery) -> None:
        handled.append(envelope.id)

    service.subscribe(PauseRelease, "deep", handler)
    await service.start()
    try:
        deep = b'{"data": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
        await _publish(nats_client, service.settings.subjects, deep, "m-4")
        subjects = service.settings.subjects

        async def lettered() -> list[DeadLetter] | None:
            return await _dead_letters(nats_client, subjects) or None

        letters = await async_wait_until(lettered, timeout=15, message="a dead letter")
        assert letters[0].deliveries == 1
        assert "deeper than the limit" in letters[0].error
        assert letters[0].payload_bytes == len(deep) and not letters[0].payload_truncated
        assert letters[0].payload.encode() == deep, "kept whole: it fits in a dead letter"
        assert handled == []
    finally:
        await service.stop()


async def test_a_handler_slower_than_the_ack_wait_keeps_its_message(
    service: Service, nats_client: NatsClient
) -> None:
    # Given a 1 s ack wait (how soon a killed replica's message goes to another one)
    assert service.settings.ack_wait_seconds == 1.0
    attempts: list[int] = []
    done = asyncio.Event()

    async def slow(envelope: Envelope[PauseRelease], delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        await asyncio.sleep(3.5)  # the work itself takes this long, e.g. a slow webhook
        done.set()

    service.subscribe(PauseRelease, "slow", slow)
    await service.start()
    try:
        # When a handler works on its message for more than three ack waits
        await _publish(nats_client, service.settings.subjects, _pause("slow"), "m-slow")
        await asyncio.wait_for(done.wait(), timeout=15)
        await service_acked(nats_client, service, "slow")
        # Then the message was never handed out again while it worked
        assert attempts == [1]
    finally:
        await service.stop()


async def test_a_message_handed_out_again_while_its_handler_runs_is_left_to_that_handler(
    service: Service, nats_client: NatsClient
) -> None:
    # Given a handler whose replica's loop stalls past the ack wait (a starved machine): no
    # heartbeat goes out, so JetStream hands the message out again while the handler runs
    attempts: list[int] = []
    done = asyncio.Event()

    async def stalled(envelope: Envelope[PauseRelease], delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        time.sleep(2.5 * service.settings.ack_wait_seconds)  # noqa: ASYNC251  # the loop stops, on purpose
        await asyncio.sleep(2.0)  # the redelivery arrives while this handler still runs
        done.set()

    service.subscribe(PauseRelease, "stalled", stalled)
    await service.start()
    try:
        await _publish(nats_client, service.settings.subjects, _pause("stall"), "m-stall")
        await asyncio.wait_for(done.wait(), timeout=15)
        await service_acked(nats_client, service, "stalled")
        info = await nats_client.jetstream().consumer_info(
            service.settings.subjects.events_stream.name,
            service.settings.subjects.consumer(service.settings.service, "stalled"),
        )
        # Then it was delivered again, but handled once, and settled by that handler's ack
        deliveries = info.delivered.consumer_seq if info.delivered else 0
        assert deliveries >= 2, "the stall did not make JetStream hand the message out again"
        assert attempts == [1]
        assert info.num_ack_pending == 0
    finally:
        await service.stop()


async def test_a_message_whose_dead_letter_cannot_be_stored_is_redelivered_not_dropped(
    stack: StackEnv, stream_prefix: str, nats_client: NatsClient
) -> None:
    settings = _settings(stack, stream_prefix, ack_wait_seconds=2)
    service = Service(settings)
    subjects = settings.subjects

    async def handler(envelope: Envelope[PauseRelease], delivery: Delivery) -> None:
        raise AssertionError("never called: the message is malformed")

    service.subscribe(PauseRelease, "nodl", handler)
    await service.start()
    js = nats_client.jetstream()
    try:
        # Given no dead-letter stream (deleted by an operator, say) ...
        await js.delete_stream(subjects.deadletter_stream.name)
        await _publish(nats_client, subjects, b"not json", "m-5")

        # ... the message is not dropped: JetStream delivers it again.
        durable = subjects.consumer(settings.service, "nodl")

        async def redelivered() -> bool | None:
            info = await js.consumer_info(subjects.events_stream.name, durable)
            return info.delivered.consumer_seq >= 2 or None

        await async_wait_until(redelivered, timeout=15, message="a redelivery")
        # When the stream is back, the redelivery is dead-lettered with the original error.
        await ensure_streams(js, subjects)

        async def lettered() -> list[DeadLetter] | None:
            return await _dead_letters(nats_client, subjects) or None

        letters = await async_wait_until(lettered, timeout=30, message="a dead letter")
        assert letters[0].deliveries >= 2
        assert "malformed" in letters[0].error
        assert letters[0].payload == "not json"
    finally:
        await service.stop()


async def test_an_existing_consumer_takes_the_ack_wait_of_the_new_version(
    service: Service, nats_client: NatsClient
) -> None:
    # Given a durable consumer made by an older version, with its 30 s ack wait
    subjects = service.settings.subjects
    durable = subjects.consumer(service.settings.service, "upgraded")
    js = nats_client.jetstream()
    await ensure_streams(js, subjects)
    await js.add_consumer(
        subjects.events_stream.name,
        config=ConsumerConfig(
            durable_name=durable,
            filter_subject=subjects.every(PauseRelease),
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30,
            max_deliver=service.settings.max_deliver + 2,
        ),
    )

    async def handler(envelope: Envelope[PauseRelease], delivery: Delivery) -> None:
        return None

    # When this version's service starts on it
    service.subscribe(PauseRelease, "upgraded", handler)
    await service.start()
    try:
        # Then the consumer waits no longer than this version says
        info = await js.consumer_info(subjects.events_stream.name, durable)
        assert info.config.ack_wait == service.settings.ack_wait_seconds
        # ... and the server no longer caps the messages in flight (its default was 1,000)
        assert info.config.max_ack_pending == UNLIMITED_IN_FLIGHT
        # ... and spreads the redeliveries of a message nobody settled over minutes
        settings = service.settings
        assert info.config.backoff == unsettled_backoff(
            settings.ack_wait_seconds, settings.max_deliver
        )
        assert info.config.backoff[-1] > info.config.ack_wait, info.config.backoff
        assert info.config.max_deliver == server_max_deliver(settings.max_deliver)
    finally:
        await service.stop()


async def test_a_handler_given_more_workers_holds_that_many_messages_at_once(
    service: Service, nats_client: NatsClient
) -> None:
    """An analysis holds its message for a whole step: the replica's limit on messages in
    hand is its limit on releases judged at once (16 capped a 40-release run)."""
    # Given a service whose default is 2 workers, and a handler given 60
    assert service.settings.workers == 2
    many = 60
    holding: set[str] = set()
    release = asyncio.Event()

    async def hold(envelope: Envelope[PauseRelease], delivery: Delivery) -> None:
        holding.add(envelope.id)
        await release.wait()

    service.subscribe(PauseRelease, "many", hold, workers=many)
    await service.start()
    try:
        # When that many messages come, each for a release of its own
        js = nats_client.jetstream()
        for index in range(many):
            rid = f"rel-{index}"
            body = Envelope.wrap(
                PauseRelease(actor="tester"), release_id=rid, source="tests", id=f"e-{index}"
            )
            await js.publish(
                service.settings.subjects.of(PauseRelease, rid),
                body.model_dump_json().encode(),
                headers={"Nats-Msg-Id": body.id},
            )
        # Then every one is in hand at once, none waiting for another to finish
        await async_wait_until(
            lambda: _sized(holding, many), timeout=15, message=f"{many} handlers at once"
        )
        release.set()
        await service_acked(nats_client, service, "many")
    finally:
        release.set()
        await service.stop()


async def _sized(items: set[str], count: int) -> bool | None:
    return True if len(items) == count else None


async def test_a_message_that_kills_its_replica_each_time_is_dead_lettered_in_the_end(
    stack: StackEnv, stream_prefix: str, nats_client: NatsClient
) -> None:
    """Our handler dead-letters at its own limit; a message whose handling never ends (it kills
    the process each time) reaches the server's limit instead, where JetStream drops it: its
    max-deliveries advisory makes it a dead letter."""
    settings = _settings(stack, stream_prefix, max_deliver=1, workers=4, ack_wait_seconds=2)
    subjects = settings.subjects
    started: list[int] = []

    async def dies(envelope: Envelope[PauseRelease], delivery: Delivery) -> None:
        started.append(delivery.attempt)
        await asyncio.Event().wait()  # the replica is stopped in the middle of this

    def replica() -> Service:
        service = Service(settings)
        service.subscribe(PauseRelease, "poison", dies)
        return service

    await ensure_streams(nats_client.jetstream(), subjects)
    await _publish(nats_client, subjects, _pause("e-poison"), "m-6")
    # JetStream delivers it up to max_deliver + 2 times; each time its replica dies with it.
    for delivery in range(1, settings.max_deliver + 3):
        victim = replica()
        await victim.start()
        await async_wait_until(_has(started, delivery), timeout=20, message=f"delivery {delivery}")
        await victim.stop()

    survivor = replica()
    await survivor.start()
    try:

        async def lettered() -> list[DeadLetter] | None:
            return await _dead_letters(nats_client, subjects) or None

        letters = await async_wait_until(lettered, timeout=30, message="a dead letter")
        assert len(letters) == 1
        assert letters[0].deliveries == settings.max_deliver + 2 == len(started)
        assert "never settled" in letters[0].error
        assert b'"actor":"tester"' in letters[0].payload.encode()
        assert started == [1, 2, 3], "the survivor was not given it again"
    finally:
        await survivor.stop()


async def service_acked(nc: NatsClient, service: Service, handler: str) -> None:
    durable = service.settings.subjects.consumer(service.settings.service, handler)
    stream = service.settings.subjects.events_stream.name

    async def acked() -> bool | None:
        info = await nc.jetstream().consumer_info(stream, durable)
        return True if info.num_ack_pending == 0 and info.num_pending == 0 else None

    await async_wait_until(acked, timeout=10, message=f"{durable} to ack its message")
