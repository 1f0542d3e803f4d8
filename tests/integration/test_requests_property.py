"""Every message on the public request subjects gets an answer: a property, on the real planner.

Given the planner running as its own process on the stack's NATS and Kubernetes API, with a
fresh prefix, Hypothesis draws batches of requests, valid and mutated (fields dropped or of the
wrong type, deep nesting, bytes cut or replaced, subjects outside the grammar, release ids that
are not valid, envelope subjects that disagree, reused release ids, duplicates, no id, no
Nats-Msg-Id), publishes each batch at once, and checks that every message gets an answer:
a refusal, a release planned or rejected carrying its request id, a dead letter of its stream
sequence, or the server's own duplicate acknowledgement. Each release id also ends at most
once. The requests name namespaces that do not exist, so nothing reaches the cluster.

Why Hypothesis: the inputs that broke the planner (a body nested 10,000 deep, a Cyrillic
letter in an id, a token after the id) were each found by hand; generating and mutating many
finds the next one, and a failure shrinks to the smallest batch that shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from tests.support import StackEnv

from canaryflow.demo.launcher import ServiceLauncher
from canaryflow.runtime.decoding import check_limits
from canaryflow.runtime.nats_access import NatsAccess
from canaryflow.runtime.settings import nats_servers
from canaryflow_contracts import Subjects
from canaryflow_contracts.events import ReleaseRequested

pytestmark = pytest.mark.stack

T = TypeVar("T")
# Messages per example and examples: about 4,000 messages, in about two minutes on 2 cores.
BATCH = (20, 60)
EXAMPLES = 120
# An answer normally comes within a second; a planner that fails on a message retries it for
# about 23 s (0.5 + 2 + 5 + 15) before it dead-letters it.
ANSWER_TIMEOUT = 40.0

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Tokens a NATS subject can carry that are not release ids: upper case, non-ASCII, too long...
BAD_TOKENS = st.sampled_from(
    [
        "Web-1",
        "shop-w\u0435b",
        "-web",
        "web-",
        "a" * 64,
        "web_1",
        "\u00e9t\u00e9",
        "x\u200by",
        "%41",
    ]
) | st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters=".*>"
    ),
    min_size=1,
    max_size=12,
)
TOP_KEYS = ["id", "source", "type", "subject", "data", "specversion", "time"]
DATA_KEYS = ["target", "version", "requested_by", "overrides", "reason"]


@dataclass(frozen=True)
class Spec:
    """One message to send, as drawn; ``materialise`` turns it into subject, headers, body."""

    subject_shape: str  # ok, more (a token after the id), v2, bare (no id), prefix (no version)
    release: str  # fresh, reuse (an earlier message's id), bad (a token that is not an id)
    bad_token: str
    reuse_of: int
    envelope_id: str  # fresh, missing, earlier (a duplicate of an earlier message's id), odd
    header: bool  # a Nats-Msg-Id header
    mutation: str
    key: str
    value: Any
    depth: int
    cut: int
    noise: bytes


MUTATIONS = [
    "none",
    "drop",
    "set",
    "drop-data",
    "set-data",
    "extra",
    "mismatch",
    "deep-top",
    "deep-data",
    "cut",
    "noise",
    "long-reason",
]


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    mutation = draw(st.sampled_from(MUTATIONS))
    return Spec(
        subject_shape=draw(st.sampled_from(["ok"] * 6 + ["more", "v2", "bare", "prefix"])),
        release=draw(st.sampled_from(["fresh"] * 4 + ["reuse", "bad"])),
        bad_token=draw(BAD_TOKENS),
        reuse_of=draw(st.integers(0, 100)),
        envelope_id=draw(st.sampled_from(["fresh"] * 6 + ["missing", "earlier", "odd"])),
        header=draw(st.booleans() | st.just(True)),
        mutation=mutation,
        key=draw(st.sampled_from(DATA_KEYS if "data" in mutation else TOP_KEYS)),
        value=draw(JSON),
        depth=draw(st.sampled_from([33, 100, 10_000])),
        cut=draw(st.integers(0, 400)),
        noise=draw(st.binary(max_size=64)),
    )


@dataclass
class Sent:
    subject: str
    key: str  # the request id its answer names
    release_id: str | None
    sequence: int = 0
    duplicate: bool = False


@dataclass
class Answers:
    """Everything the planner published on this prefix, as it arrives."""

    by_request: dict[str, list[str]] = field(default_factory=dict)
    dead_sequences: set[int] = field(default_factory=set)
    # Per release id, the distinct planned/rejected events (by Nats-Msg-Id: a core
    # subscription also sees a re-publication JetStream drops as a duplicate).
    firsts: dict[str, set[str]] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_message(self, msg: Msg) -> None:
        self.arrived.set()
        parts = msg.subject.split(".")
        if parts[1] == "deadletter":
            envelope_id = json.loads(msg.data)["id"]  # dl-<stream sequence>-<consumer>
            self.dead_sequences.add(int(envelope_id.split("-")[1]))
            return
        kind = ".".join(parts[1:3])
        if kind in ("request.refused", "release.planned", "release.rejected"):
            data = json.loads(msg.data)["data"]
            self.by_request.setdefault(data["request_id"], []).append(kind)
            if kind != "request.refused":
                event_id = (msg.headers or {}).get("Nats-Msg-Id", "")
                self.firsts.setdefault(parts[-1], set()).add(event_id)


class Bus:
    """A NATS connection on an event loop of its own, for Hypothesis's synchronous examples."""

    def __init__(self, url: str, subjects: Subjects, access: NatsAccess) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.subjects = subjects
        self.answers = Answers()
        self.nc: NatsClient = self.run(nats.connect(nats_servers(url), **access.client_options()))
        self.run(self.nc.subscribe(f"{subjects.prefix}.>", cb=self.answers.on_message))

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.nc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


def _request(release_id: str, request_id: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": request_id,
        "source": "tests/property",
        "type": ReleaseRequested.event_type(),
        "subject": release_id,
        "data": {
            # A namespace that does not exist: the planner rejects, the cluster is untouched.
            "target": {"namespace": f"absent-{release_id[:40]}", "name": "web"},
            "version": {"image": "registry.local/web:v2"},
            "requested_by": "property-test",
        },
    }


def _readable_id(body: bytes) -> str | None:
    """The envelope id a reader finds in ``body``: a non-empty string ``id`` of a JSON object
    within the decoding limits."""
    try:
        check_limits(body)
        found = json.loads(body).get("id")
    except (ValueError, AttributeError, RecursionError):
        return None
    return found if isinstance(found, str) and found else None


def _nest(value: Any, depth: int) -> bytes:
    return b"[" * depth + json.dumps(value).encode() + b"]" * depth


def materialise(
    spec: Spec, earlier: list[tuple[str | None, str | None]], prefix: str
) -> tuple[str, dict[str, str], bytes, str | None, str | None]:
    """Subject, headers, body, the release id and the envelope id of one drawn message."""
    release_id: str | None
    if spec.release == "reuse" and any(rid for rid, _ in earlier):
        ids = [rid for rid, _ in earlier if rid]
        release_id = ids[spec.reuse_of % len(ids)]
    elif spec.release == "bad":
        release_id = spec.bad_token
    else:
        release_id = f"p-{uuid.uuid4().hex[:12]}"
    request_id: str | None = uuid.uuid4().hex
    if spec.envelope_id == "missing":
        request_id = None
    elif spec.envelope_id == "earlier" and any(eid for _, eid in earlier):
        ids = [eid for _, eid in earlier if eid]
        request_id = ids[spec.reuse_of % len(ids)]
    elif spec.envelope_id == "odd":
        request_id = f"Req {uuid.uuid4()}/\u00e9"
    envelope = _request(release_id, request_id or "")
    if request_id is None:
        del envelope["id"]
    data = envelope["data"]
    body: bytes | None = None
    match spec.mutation:
        case "drop":
            envelope.pop(spec.key, None)
        case "set":
            envelope[spec.key] = spec.value
        case "drop-data":
            data.pop(spec.key, None)
        case "set-data":
            data[spec.key] = spec.value
        case "extra":
            envelope["extension"] = spec.value
        case "mismatch":
            envelope["subject"] = f"other-{uuid.uuid4().hex[:8]}"
        case "long-reason":
            data["reason"] = "r" * 3000
        case "deep-top":
            body = _nest(envelope, spec.depth)
        case "deep-data":
            text = json.dumps(envelope)
            body = text.replace(
                '"data": {', '"data": {"deep": ' + "[" * spec.depth + "]" * spec.depth + ", ", 1
            ).encode()
        case "cut":
            body = json.dumps(envelope).encode()[: spec.cut]
        case "noise":
            body = spec.noise + json.dumps(envelope).encode()[spec.cut :]
    if body is None:
        body = json.dumps(envelope).encode()
    head = f"{prefix}.release.requested"
    subject = {
        "ok": f"{head}.v1.{release_id}",
        "more": f"{head}.v1.{release_id}.more",
        "v2": f"{head}.v2.{release_id}",
        "bare": f"{head}.v1",
        "prefix": head,
    }[spec.subject_shape]
    headers = {"Nats-Msg-Id": f"hdr-{uuid.uuid4().hex}"} if spec.header else {}
    return subject, headers, body, release_id, request_id


async def _send(bus: Bus, batch: list[Spec]) -> list[Sent]:
    js = bus.nc.jetstream()
    stream = bus.subjects.events_stream.name
    sent: list[Sent] = []
    publishes = []
    earlier: list[tuple[str | None, str | None]] = []
    for spec in batch:
        subject, headers, body, release_id, request_id = materialise(
            spec, earlier, bus.subjects.prefix
        )
        earlier.append((release_id, request_id))
        # As docs/requests.md says: the answer names the envelope id if the body has a readable
        # one (a mutation may have replaced it), else the Nats-Msg-Id, else the stream position.
        key = _readable_id(body) or headers.get("Nats-Msg-Id") or ""
        sent.append(Sent(subject, key, release_id))
        publishes.append(js.publish(subject, body, headers=headers or None, stream=stream))
    # All at once: the planner sees the batch as concurrent requests (reuses race each other).
    acks = await asyncio.gather(*publishes)
    for item, ack in zip(sent, acks, strict=True):
        item.sequence = ack.seq
        item.duplicate = bool(ack.duplicate)
        item.key = item.key or f"{stream}:{ack.seq}"
    return sent


def _unanswered(bus: Bus, sent: list[Sent]) -> list[Sent]:
    """Messages with no answer yet. Messages that share a request id (a duplicate sent again)
    need as many answers naming it as there are of them."""
    answers = bus.answers
    waiting = [m for m in sent if not m.duplicate and m.sequence not in answers.dead_sequences]
    missing = []
    for key in {m.key for m in waiting}:
        asking = [m for m in waiting if m.key == key]
        missing += asking[len(answers.by_request.get(key, [])) :]
    return missing


async def _wait_for_answers(bus: Bus, sent: list[Sent]) -> list[Sent]:
    deadline = bus.loop.time() + ANSWER_TIMEOUT
    while (missing := _unanswered(bus, sent)) and (left := deadline - bus.loop.time()) > 0:
        bus.answers.arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(bus.answers.arrived.wait(), timeout=left)
    return missing


async def _consumer_state(bus: Bus) -> str:
    """Where the planner's request consumer is, for a failure's message."""
    stream = bus.subjects.events_stream.name
    info = await bus.nc.jetstream().consumer_info(
        stream, bus.subjects.consumer("planner", "requested")
    )
    return (
        f"consumer: delivered up to #{info.delivered.stream_seq}, acked up to "
        f"#{info.ack_floor.stream_seq}, {info.num_ack_pending} unacked, "
        f"{info.num_redelivered} redelivered, {info.num_pending} not yet delivered"
    )


@pytest.fixture(scope="module")
def planner(stack: StackEnv) -> Iterator[ServiceLauncher]:
    prefix = f"pbt_{uuid.uuid4().hex[:8]}"
    launcher = ServiceLauncher(
        stack.endpoints,
        prefix=prefix,
        log_dir=stack.state_dir / "logs" / f"property-{prefix}",
        # Thousands of refused requests would be thousands of traces in the shared Jaeger.
        extra_env={"OTEL_SDK_DISABLED": "true"},
    )
    launcher.start(("planner",))
    try:
        yield launcher
    finally:
        launcher.stop()


@pytest.fixture(scope="module")
def bus(stack: StackEnv, planner: ServiceLauncher) -> Iterator[Bus]:
    connection = Bus(stack.nats_url, Subjects(planner.prefix), stack.nats_access())
    try:
        yield connection
    finally:
        from canaryflow.demo.launcher import delete_jetstream_state

        connection.run(delete_jetstream_state(connection.nc, planner.prefix))
        connection.close()


def test_every_request_message_gets_an_answer_and_a_release_ends_once(bus: Bus) -> None:
    total: list[int] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        # No shrinking: each step of it would wait out an answer timeout on the shared stack;
        # a failure lists every unanswered message (subject, request id) instead.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.lists(specs(), min_size=BATCH[0], max_size=BATCH[1]))
    def every_message_is_answered(batch: list[Spec]) -> None:
        sent = bus.run(_send(bus, batch))
        total.append(len(sent))
        missing = bus.run(_wait_for_answers(bus, sent), timeout=ANSWER_TIMEOUT + 10)
        assert not missing, [
            f"no answer within {ANSWER_TIMEOUT:.0f}s to #{m.sequence} on {m.subject!r} "
            f"(request id {m.key!r})"
            for m in missing
        ] + [bus.run(_consumer_state(bus))]
        twice = {rid: ids for rid, ids in bus.answers.firsts.items() if len(ids) > 1}
        assert not twice, f"releases planned or rejected more than once: {twice}"

    every_message_is_answered()
    print(f"{sum(total)} messages in {len(total)} batches, every one answered")
    assert sum(total) >= 2000
