"""One notification per event and receiver, one hook run per command, however many deliveries
there are.

Found by the fault campaign (``make chaos``): two executor replicas both sent "Release ...
started" for the same event, 0.4 s apart, because JetStream handed the event to the second
one while the first was still sending; and by the suite on a loaded machine: a failing smoke
hook called by both executor replicas. The ledger is a real JetStream KV bucket here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig

from canaryflow.executor.ledger import CLAIM, SideEffectLedger, ledger_key

pytestmark = pytest.mark.stack


@pytest.fixture
async def bucket(nats_client: NatsClient, stream_prefix: str) -> AsyncIterator[str]:
    name = f"{stream_prefix.upper()}_LEDGER"
    await nats_client.jetstream().create_key_value(KeyValueConfig(bucket=name, history=1))
    yield name
    await nats_client.jetstream().delete_key_value(name)


async def _ledger(nc: NatsClient, bucket: str, lease: float = 5.0) -> SideEffectLedger:
    ledger = SideEffectLedger(lease)
    await ledger.open(nc.jetstream(), bucket)
    return ledger


async def test_two_deliveries_at_once_send_once(nats_client: NatsClient, bucket: str) -> None:
    sent: list[str] = []

    async def slow_send() -> None:
        await asyncio.sleep(1.0)  # the second delivery arrives while the first is sending
        sent.append("hello")

    key = ledger_key("notified", "rel-1.planned", "http://receiver/notify")
    first, second = await _ledger(nats_client, bucket), await _ledger(nats_client, bucket)
    results = await asyncio.gather(first.once(key, slow_send), second.once(key, slow_send))

    assert sent == ["hello"]
    assert sorted(results) == [False, True]
    # A redelivery after both is answered from the ledger at once.
    assert await first.once(key, slow_send) is False
    assert sent == ["hello"]


async def test_a_failed_send_is_tried_again_by_the_next_delivery(
    nats_client: NatsClient, bucket: str
) -> None:
    ledger = await _ledger(nats_client, bucket)
    key = ledger_key("notified", "rel-1.succeeded", "http://receiver/notify")

    async def refused() -> None:
        raise RuntimeError("HTTP 500")

    with pytest.raises(RuntimeError):
        await ledger.once(key, refused)
    sent: list[int] = []

    async def accepted() -> None:
        sent.append(1)

    assert await ledger.once(key, accepted) is True
    assert sent == [1]


async def test_a_sender_that_died_mid_send_is_taken_over_after_the_lease(
    nats_client: NatsClient, bucket: str
) -> None:
    key = ledger_key("notified", "rel-1.rolled-back", "http://receiver/notify")
    # What a replica killed after claiming leaves behind: a claim nobody will finish.
    kv = await nats_client.jetstream().key_value(bucket)
    loop = asyncio.get_running_loop()
    await kv.create(key, CLAIM + f" {time.time():.3f}".encode())
    ledger = await _ledger(nats_client, bucket, lease=1.5)
    sent: list[int] = []

    async def send() -> None:
        sent.append(1)

    started = loop.time()
    assert await ledger.once(key, send) is True
    waited = loop.time() - started
    assert sent == [1]
    assert 1.0 <= waited <= 4.0, f"took over after {waited:.2f}s for a 1.5 s lease"


async def test_a_call_with_a_lease_of_its_own_takes_over_after_that_lease(
    nats_client: NatsClient, bucket: str
) -> None:
    """A hook's run may take far longer than a notification: its lease comes with the call."""
    key = ledger_key("hook", "rel-1.hook.smoke.0", "http://receiver/smoke")
    kv = await nats_client.jetstream().key_value(bucket)
    await kv.create(key, CLAIM + f" {time.time():.3f}".encode())
    ledger = await _ledger(nats_client, bucket, lease=60.0)
    ran: list[int] = []

    async def run() -> None:
        ran.append(1)

    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await ledger.once(key, run, lease_seconds=1.0) is True
    waited = loop.time() - started
    assert ran == [1]
    assert 0.6 <= waited <= 4.0, f"took over after {waited:.2f}s for a 1 s lease (default 60 s)"
