"""End-to-end fixtures: the four services as real processes on the real stack.

The services are started once per session with their own stream prefix (fresh streams,
consumers and KV bucket), and each test gets a fresh namespace with the sample shop in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client
from nats.aio.client import Client as NatsClient
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from canaryflow.demo import shop
from canaryflow.demo.launcher import ServiceLauncher, delete_jetstream_state
from canaryflow.runtime.signing import verify
from canaryflow_contracts import Envelope, EventData, Subjects
from canaryflow_contracts.events import (
    TERMINAL_EVENTS,
    GroupMember,
    GroupRequested,
    ReleaseRequested,
    TargetRef,
    VersionSpec,
    parse_event,
)
from tests.support import StackEnv
from tests.support.contract import contract_problems


@pytest.fixture(scope="session")
def e2e_prefix() -> str:
    return f"e2e_{uuid.uuid4().hex[:8]}"


SIGNING_KEY = "e2e-signing-key"
"""The executor signs its hook calls and notifications with it; ``endpoint`` verifies them."""


def launcher_for(stack: StackEnv, prefix: str, replicas: int) -> ServiceLauncher:
    """The four services on the stack, on the streams of ``prefix``, logging under the stack."""
    return ServiceLauncher(
        stack.endpoints,
        prefix=prefix,
        log_dir=stack.state_dir / "logs" / f"e2e-{prefix}",
        replicas=replicas,
        extra_env={"CANARYFLOW_SIGNING_KEY": SIGNING_KEY},
    )


@pytest.fixture(scope="session")
def services(stack: StackEnv, kube: client.ApiClient, e2e_prefix: str) -> Iterator[ServiceLauncher]:
    shop.install_crd(kube)
    # Two replicas of every service: work is shared through the durable consumers and the
    # KV compare-and-set, with no leader, so every scenario also tests scale-out.
    launcher = launcher_for(stack, e2e_prefix, int(os.environ.get("CANARYFLOW_E2E_REPLICAS", "2")))
    launcher.start()
    yield launcher
    launcher.stop()


@pytest.fixture(scope="session", autouse=True)
async def _delete_e2e_streams(nats_client: NatsClient, e2e_prefix: str) -> AsyncIterator[None]:
    yield
    await delete_jetstream_state(nats_client, e2e_prefix)


async def stored_bodies(nc: NatsClient, stream: str) -> list[bytes]:
    """Every message body ``stream`` holds, in order (none if the stream was never made)."""
    js = nc.jetstream()
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        return []
    if info.state.messages == 0:
        return []  # an empty stream reports sequence 0, which get_msg refuses
    bodies = []
    for sequence in range(info.state.first_seq, info.state.last_seq + 1):
        with contextlib.suppress(NotFoundError):  # a gap: a message deleted on purpose
            bodies.append((await js.get_msg(stream, sequence)).data or b"")
    return bodies


def published_by_services(bodies: list[bytes]) -> list[dict[str, Any]]:
    """The events the services wrote (source ``canaryflow/...``): the tests' own broken
    inputs, and the requests they publish as an outside system, are theirs to judge."""
    events = []
    for body in bodies:
        with contextlib.suppress(ValueError, RecursionError):
            event = json.loads(body)
            if isinstance(event, dict) and str(event.get("source", "")).startswith("canaryflow/"):
                events.append(event)
    return events


@pytest.fixture(scope="session", autouse=True)
async def _every_event_on_the_bus_follows_the_contract(
    nats_client: NatsClient, e2e_prefix: str, stack: StackEnv, _delete_e2e_streams: None
) -> AsyncIterator[None]:
    """At the end of the run (before the streams go), every event the services published on
    the real bus is checked with the standard tools: its JSON Schema, its AsyncAPI payload
    (the official parser) and the CloudEvents SDK's round trip. A finding fails the run."""
    yield
    subjects = Subjects(e2e_prefix)
    bodies = []
    for stream in (subjects.events_stream.name, subjects.deadletter_stream.name):
        bodies += await stored_bodies(nats_client, stream)
    events = published_by_services(bodies)
    if not events:
        return  # no test of this run started the services
    problems = contract_problems(events)
    types = Counter(str(event["type"]) for event in events)
    report = stack.state_dir / "logs" / f"e2e-{e2e_prefix}" / "contract.txt"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(
        f"{len(events)} events published by the services, {len(types)} types, "
        f"{len(problems)} problems\n"
        + "".join(f"  {count:5d} {kind}\n" for kind, count in sorted(types.items()))
        + "".join(f"problem: {problem}\n" for problem in problems)
    )
    assert problems == [], f"{len(problems)} contract problems (see {report})"


@dataclass
class Releases:
    """Request releases and collect their events, as an external system would over NATS."""

    nc: NatsClient
    subjects: Subjects

    async def request(self, namespace: str, image: str, target: str = "web") -> str:
        release_id = f"{target}-{uuid.uuid4().hex[:8]}"
        envelope = Envelope.wrap(
            ReleaseRequested(
                target=TargetRef(namespace=namespace, name=target),
                version=VersionSpec(image=image),
                requested_by="e2e-test",
            ),
            release_id=release_id,
            source="tests/e2e",
        )
        await self.nc.jetstream().publish(
            self.subjects.of(ReleaseRequested, release_id),
            envelope.model_dump_json().encode(),
            headers={"Nats-Msg-Id": envelope.id},
        )
        return release_id

    async def request_group(self, namespace: str, members: list[tuple[str, str]]) -> str:
        """Publish a GroupRequested for ``members`` ((Deployment, image), dependency order)."""
        group_id = f"group-{uuid.uuid4().hex[:8]}"
        request = GroupRequested(
            members=[
                GroupMember(
                    target=TargetRef(namespace=namespace, name=name),
                    version=VersionSpec(image=image),
                )
                for name, image in members
            ],
            requested_by="e2e-test",
            reason="released as one",
        )
        await self.publish(request, group_id)
        return group_id

    async def publish(self, data: EventData, release_id: str) -> None:
        envelope = Envelope.wrap(data, release_id=release_id, source="tests/e2e")
        await self.nc.jetstream().publish(
            self.subjects.of(type(data), release_id),
            envelope.model_dump_json().encode(),
            headers={"Nats-Msg-Id": envelope.id},
        )

    async def events(
        self,
        release_id: str,
        until: tuple[type[EventData], ...] = TERMINAL_EVENTS,
        timeout: float = 180,
        stop: Callable[[Envelope[EventData]], bool] | None = None,
    ) -> list[Envelope[EventData]]:
        """Every event of the release from its start, up to the first of type ``until``
        (and, with ``stop``, for which ``stop`` holds)."""
        subscription = await self.nc.jetstream().subscribe(
            self.subjects.release(release_id),
            ordered_consumer=True,
            stream=self.subjects.events_stream.name,
            deliver_policy=DeliverPolicy.ALL,
        )
        seen: list[Envelope[EventData]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    kinds = [e.type.removeprefix("io.canaryflow.") for e in seen]
                    raise AssertionError(
                        f"release {release_id} did not reach {[u.__name__ for u in until]} "
                        f"within {timeout:.0f}s; events so far: {kinds}"
                    )
                try:
                    msg = await subscription.next_msg(timeout=min(remaining, 5))
                except TimeoutError:
                    continue
                envelope = parse_event(msg.data)
                seen.append(envelope)
                if isinstance(envelope.data, until) and (stop is None or stop(envelope)):
                    return seen
        finally:
            await subscription.unsubscribe()


@pytest.fixture
async def releases(services: ServiceLauncher, nats_client: NatsClient) -> AsyncIterator[Releases]:
    yield Releases(nats_client, Subjects(services.prefix))


@pytest.fixture
def shop_namespace(kube: client.ApiClient, namespace: str) -> str:
    """The sample shop (10 pods of web:v1 behind a Service with real users) and a quick policy."""
    shop.deploy(kube, namespace)
    shop.set_behaviour(
        kube,
        namespace,
        {
            "v1": {"error_rate": 0.005, "latency_ms": {"median": 40, "p99": 120}},
            "v2": {"error_rate": 0.005, "latency_ms": {"median": 40, "p99": 120}},
            "v2-bad": {"error_rate": 0.2, "latency_ms": {"median": 40, "p99": 120}},
        },
    )
    shop.apply_policy(kube, namespace, shop.quick_policy())
    return namespace


@dataclass
class Endpoint:
    """A webhook receiver on 127.0.0.1 that answers every POST with ``status``."""

    status: int = 200
    calls: list[dict[str, Any]] = field(default_factory=list)  # hook calls (POST /hook)
    notes: list[dict[str, Any]] = field(default_factory=list)  # notifications (POST /notify)
    unverified: list[str] = field(default_factory=list)
    """Why a call's signature (SIGNING_KEY) did not verify, per call that failed: as a
    receiver would check it."""
    base: str = ""

    @property
    def url(self) -> str:
        return f"{self.base}/hook"


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    found = Endpoint()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            refusal = verify(SIGNING_KEY, raw, dict(self.headers.items()))
            if refusal is not None:
                found.unverified.append(f"{self.path}: {refusal}")
            body = json.loads(raw or b"{}")
            if self.path == "/notify":
                found.notes.append(body)
                self.send_response(200)
            else:
                found.calls.append(body)
                self.send_response(found.status)
            self.end_headers()
            self.wfile.write(b"as configured")

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    found.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield found
    server.shutdown()
    thread.join(timeout=5)
