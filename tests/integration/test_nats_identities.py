"""The stack's NATS refuses what an identity may not do (canaryflow_contracts.identities).

Each test connects as one of the stack's identities (TLS, its NKey) and tries something its
permissions do not allow; the server answers with a permissions violation, and the admin
connection confirms nothing reached the events stream. The pure rules are unit-tested in
tests/unit/contracts/test_identities.py; here is the server's word.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js.api import ConsumerConfig
from tests.support import StackEnv
from tests.support.samples import one_of_each

from canaryflow.runtime.bus import ensure_streams
from canaryflow.runtime.settings import nats_servers
from canaryflow_contracts import Envelope, EventData, Subjects
from canaryflow_contracts.events import (
    AnalysisVerdict,
    ApplyPhase,
    ReleaseRequested,
    TargetRef,
    VersionSpec,
)
from canaryflow_contracts.identities import inbox_prefix

pytestmark = pytest.mark.stack

E = TypeVar("E", bound=EventData)


class Violations:
    """The asynchronous errors the server sent a connection."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def record(self, error: Exception) -> None:
        self.seen.append(str(error))

    async def wait_for(self, text: str, timeout: float = 5) -> str:
        for _ in range(int(timeout / 0.05)):
            found = [seen for seen in self.seen if text in seen.lower()]
            if found:
                return found[0]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {text!r} from the server; it said {self.seen}")


@asynccontextmanager
async def connected(stack: StackEnv, identity: str) -> AsyncIterator[tuple[NatsClient, Violations]]:
    violations = Violations()
    nc = await nats.connect(
        nats_servers(stack.nats_url),
        **stack.nats_access(identity).client_options(),
        error_cb=violations.record,
        max_reconnect_attempts=1,
    )
    try:
        yield nc, violations
    finally:
        await nc.close()


@pytest.fixture
async def subjects(nats_client: NatsClient, stream_prefix: str, stack: StackEnv) -> Subjects:
    found = Subjects(stream_prefix)
    await ensure_streams(nats_client.jetstream(), found, stack.stream_replicas)
    return found


async def _stored(nats_client: NatsClient, subjects: Subjects, subject: str) -> int:
    info = await nats_client.jetstream().stream_info(
        subjects.events_stream.name, subjects_filter=subject
    )
    return sum((info.state.subjects or {}).values())


def _sample(event: type[E]) -> E:
    (found,) = [data for data in one_of_each() if isinstance(data, event)]
    return found


def _verdict(release_id: str) -> bytes:
    verdict = _sample(AnalysisVerdict)
    return Envelope.wrap(verdict, release_id=release_id, source="test").model_dump_json().encode()


async def test_a_requester_cannot_publish_a_verdict_and_can_request_a_release(
    stack: StackEnv, nats_client: NatsClient, subjects: Subjects
) -> None:
    release_id = f"rel-{uuid.uuid4().hex[:8]}"
    verdict_subject = subjects.of(AnalysisVerdict, release_id)
    request = ReleaseRequested(
        target=TargetRef(namespace="shop", name="web"),
        version=VersionSpec(image="web:v2"),
        requested_by="test-requester",
    )
    body = Envelope.wrap(request, release_id=release_id, source="test").model_dump_json()

    async with connected(stack, "requester") as (nc, violations):
        await nc.publish(verdict_subject, _verdict(release_id))
        said = await violations.wait_for("permissions violation")
        ack = await nc.jetstream().publish(subjects.of(ReleaseRequested, release_id), body.encode())

    assert verdict_subject in said
    assert await _stored(nats_client, subjects, verdict_subject) == 0
    assert ack.stream == subjects.events_stream.name


async def test_the_metrics_watcher_cannot_publish_an_apply_phase_but_may_a_verdict(
    stack: StackEnv, nats_client: NatsClient, subjects: Subjects
) -> None:
    release_id = f"rel-{uuid.uuid4().hex[:8]}"
    apply_subject = subjects.of(ApplyPhase, release_id)
    command = _sample(ApplyPhase)
    body = Envelope.wrap(command, release_id=release_id, source="test").model_dump_json()

    async with connected(stack, "metrics-watcher") as (nc, violations):
        await nc.publish(apply_subject, body.encode())
        said = await violations.wait_for("permissions violation")
        ack = await nc.jetstream().publish(
            subjects.of(AnalysisVerdict, release_id), _verdict(release_id)
        )

    assert apply_subject in said
    assert await _stored(nats_client, subjects, apply_subject) == 0
    assert ack.seq > 0


async def test_no_identity_but_the_planner_writes_release_state(
    stack: StackEnv, nats_client: NatsClient, subjects: Subjects
) -> None:
    key = f"$KV.{subjects.releases_bucket}.release.rel-{uuid.uuid4().hex[:8]}"
    for identity in ("executor", "metrics-watcher", "rollback", "requester", "operator"):
        async with connected(stack, identity) as (nc, violations):
            await nc.publish(key, b"{}")
            said = await violations.wait_for("permissions violation")
        # nats-py lower-cases the server's error text; the bucket's name is upper case.
        assert key.lower() in said.lower(), identity
    async with connected(stack, "planner") as (nc, violations):
        ack = await nc.jetstream().publish(key, b"{}")
    assert ack.stream == f"KV_{subjects.releases_bucket}"
    assert violations.seen == []


async def test_a_requester_cannot_take_a_services_durable_consumer(
    stack: StackEnv, subjects: Subjects
) -> None:
    """The one consumer subject a requester may use creates server-named consumers only."""
    stream = subjects.events_stream.name
    async with connected(stack, "requester") as (nc, violations):
        js = nc.jetstream()
        # Naming the consumer in the subject is not allowed at all...
        with pytest.raises((asyncio.TimeoutError, NatsError)):
            await js.add_consumer(stream, ConsumerConfig(name="executor_apply"), timeout=2)
        await violations.wait_for("permissions violation")
        # ...and a durable name in the request on the allowed subject is refused by JetStream.
        answer = await nc.request(
            f"$JS.API.CONSUMER.CREATE.{stream}",
            json.dumps(
                {"stream_name": stream, "config": {"durable_name": "executor_apply"}}
            ).encode(),
            timeout=5,
        )
    error = json.loads(answer.data).get("error")
    assert error is not None, answer.data
    assert "durable" in error["description"].lower(), error


async def test_an_identity_cannot_read_another_identitys_replies(stack: StackEnv) -> None:
    async with connected(stack, "requester") as (nc, violations):
        await nc.subscribe(f"{inbox_prefix('planner')}.>")
        said = await violations.wait_for("permissions violation")
    assert "subscription" in said.lower(), said


async def test_a_client_without_a_key_or_not_trusting_the_stacks_ca_is_turned_away(
    stack: StackEnv,
) -> None:
    access = stack.nats_access()
    anonymous = {k: v for k, v in access.client_options().items() if k != "nkeys_seed"}
    # allow_reconnect=False: nats-py otherwise retries a refused first connect for ever.
    with pytest.raises(NatsError, match=r"(?i)authorization violation"):
        await nats.connect(
            nats_servers(stack.nats_url), **anonymous, allow_reconnect=False, connect_timeout=3
        )
    plain = [url.replace("tls://", "nats://") for url in nats_servers(stack.nats_url)]
    untrusting = ssl.create_default_context()  # the system's CAs: not the stack's
    with pytest.raises(ssl.SSLCertVerificationError):
        await nats.connect(
            plain, tls=untrusting, nkeys_seed=access.nkey_seed, allow_reconnect=False
        )
