"""The planner as a running service on a real NATS server of its own (no cluster, no stack).

Checks the wiring the fakes cannot: the durable consumers, the tolerant request consumer, the
KV state and the published commands, over real JetStream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from canaryflow.planner.app import build_service
from canaryflow.planner.reconcile import ReconcileTimings
from canaryflow.runtime.service import Service
from canaryflow.runtime.settings import Settings
from canaryflow_contracts import Envelope, Subjects, envelope_of
from canaryflow_contracts.events import (
    ApplyPhase,
    DeadLetter,
    PhaseReached,
    PlannedStep,
    ReleaseRequested,
    RequestAnalysis,
    RequestRefused,
    RollbackRequested,
    parse_event,
)
from canaryflow_contracts.state import ReleaseStatus
from tests.unit.planner.factory import NEW_IMAGE, T0, TARGET, FakeCluster, at

NATS_SERVER = Path(sys.executable).parent / "nats-server"
PREFIX = "t_planner"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not NATS_SERVER.exists():
        pytest.skip("nats-server is not installed in the virtualenv")
    port = _free_port()
    store = tmp_path_factory.mktemp("jetstream")
    server = subprocess.Popen(
        [str(NATS_SERVER), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            server.poll()
            if server.returncode is not None:
                pytest.fail("nats-server exited at start")
            time.sleep(0.05)  # waiting for the server to listen, not for time to pass
        yield f"nats://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


async def _eventually(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 10) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class Running:
    def __init__(self, service: Service, nc: NatsClient, clock: Clock) -> None:
        self.service = service
        self.nc = nc
        self.clock = clock
        self.seen: list[Envelope[Any]] = []
        self.subjects = service.settings.subjects

    async def on_message(self, msg: Msg) -> None:
        with contextlib.suppress(ValueError):  # the broken requests some tests send
            self.seen.append(parse_event(msg.data))

    async def publish(self, subject: str, body: dict[str, Any], msg_id: str) -> None:
        await self.nc.jetstream().publish(
            subject, json.dumps(body).encode(), headers={"Nats-Msg-Id": msg_id}
        )

    async def dead_letters(self) -> list[Envelope[DeadLetter]]:
        """Every dead letter of this server's planner, from its stream."""
        js = self.nc.jetstream()
        stream = self.subjects.deadletter_stream.name
        count = (await js.stream_info(stream)).state.messages
        letters = []
        for sequence in range(1, count + 1):
            stored = await js.get_msg(stream, sequence)
            letters.append(envelope_of(DeadLetter).model_validate_json(stored.data or b""))
        return letters

    async def first(
        self, kind: type[Any], release_id: str, timeout: float = 10, event_id: str = ""
    ) -> Envelope[Any]:
        async def check() -> Envelope[Any] | None:
            for envelope in self.seen:
                if (
                    isinstance(envelope.data, kind)
                    and envelope.subject == release_id
                    and envelope.id == (event_id or envelope.id)
                ):
                    return envelope
            return None

        what = f"{kind.__name__} for {release_id}"
        found: Envelope[Any] = await _eventually(check, what, timeout)
        return found


@pytest.fixture
async def running(nats_url: str) -> AsyncIterator[Running]:
    settings = Settings(
        service="planner", nats_url=nats_url, prefix=PREFIX, reconcile_seconds=0.2, max_deliver=3
    )
    clock = Clock()
    service = build_service(
        settings, FakeCluster(), clock=clock, timings=ReconcileTimings(grace_seconds=10)
    )
    await service.start()
    nc = await nats.connect(nats_url)
    running = Running(service, nc, clock)
    await nc.subscribe(f"{PREFIX}.*.*.*.*", cb=running.on_message)
    try:
        yield running
    finally:
        await nc.close()
        await service.stop()


def _request(release_id: str, msg_id: str, **data: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": msg_id,
        "source": "ci/shop",
        "type": ReleaseRequested.event_type(),
        "subject": release_id,
        "data": {
            "target": {"namespace": "shop", "name": "web"},
            "version": {"image": NEW_IMAGE},
            "requested_by": "ci@shop",
            **data,
        },
    }


async def test_a_request_is_planned_applied_and_analysed_over_jetstream(running: Running) -> None:
    subjects: Subjects = running.subjects
    await running.publish(
        subjects.of(ReleaseRequested, "svc-1"), _request("svc-1", "req-svc-1"), "req-svc-1"
    )
    apply = await running.first(ApplyPhase, "svc-1")
    assert apply.id == "svc-1.apply.0"
    stored = await running.service.store.get("svc-1")
    assert stored is not None
    assert stored.state.status is ReleaseStatus.APPLYING

    step = PlannedStep(index=0, weight=10, hold_seconds=30)
    reached = Envelope.wrap(
        PhaseReached(target=TARGET, step=step, canary_weight=25, canary_ready=1, stable_ready=3),
        release_id="svc-1",
        source="canaryflow/executor",
        id="svc-1.reached.0",
    )
    await running.publish(
        subjects.of(PhaseReached, "svc-1"), reached.model_dump(mode="json"), reached.id
    )
    analyse = await running.first(RequestAnalysis, "svc-1")
    assert analyse.data.canary_version == "v2"

    async def analysing() -> bool:
        found = await running.service.store.get("svc-1")
        return found is not None and found.state.status is ReleaseStatus.ANALYSING

    await _eventually(analysing, "the state to say analysing")


async def test_a_malformed_request_is_refused_not_dead_lettered(running: Running) -> None:
    subjects: Subjects = running.subjects
    body = _request("svc-2", "req-svc-2", version={"image": "Not An Image"})
    await running.publish(subjects.of(ReleaseRequested, "svc-2"), body, "req-svc-2")
    refused = await running.first(RequestRefused, "req-svc-2")
    assert refused.data.release_id == "svc-2"
    assert any("version.image" in reason for reason in refused.data.reasons)
    assert await running.service.store.get("svc-2") is None
    assert await running.dead_letters() == []


async def test_a_request_that_is_not_even_json_is_answered_and_kept(running: Running) -> None:
    subjects: Subjects = running.subjects
    await running.nc.jetstream().publish(
        subjects.of(ReleaseRequested, "svc-9"), b"{release: web}", headers={"Nats-Msg-Id": "r9"}
    )
    refused = await running.first(RequestRefused, "r9")
    (reason,) = refused.data.reasons
    assert "JSON" in reason and refused.data.request_id == "r9", reason
    assert await running.service.store.get("svc-9") is None
    # The requester has its answer, and the message itself is kept among the dead letters.
    letter = await _eventually(running.dead_letters, "the request among the dead letters")
    assert "JSON" in letter[0].data.error


DEEP = 10_000
# Each message a requester might send that cannot become a release, with a word of the reason.
BROKEN: dict[str, tuple[str, bytes, str]] = {
    "nested deep at the top": ("deep-top", b"[" * DEEP + b"]" * DEEP, "deeper than"),
    "nested deep in data": (
        "deep-data",
        json.dumps(_request("svc-20", "req-deep-data"))
        .replace('"requested_by"', '"x": ' + "[" * DEEP + "]" * DEEP + ', "requested_by"')
        .encode(),
        "deeper than",
    ),
    "no envelope id": (
        "svc-21",
        json.dumps({k: v for k, v in _request("svc-21", "").items() if k != "id"}).encode(),
        "id",
    ),
    "subject and envelope disagree": (
        "svc-22",
        json.dumps(_request("svc-other", "req-mismatch")).encode(),
        "differs from the release id",
    ),
    "a Cyrillic letter in the release id": (
        "shop-w\u0435b",
        json.dumps(_request("shop-w\u0435b", "req-cyrillic")).encode(),
        "not a valid release id",
    ),
    "a token after the release id": (
        "svc-23.more",
        json.dumps(_request("svc-23", "req-more")).encode(),
        "is not of the form",
    ),
    "another version": (
        "",
        json.dumps(_request("svc-24", "req-v2")).encode(),
        "is not of the form",
    ),
    "no version, no release id": (
        "",
        json.dumps(_request("svc-25", "req-bare")).encode(),
        "is not of the form",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
async def test_every_broken_request_is_refused_and_dead_lettered(
    running: Running, case: str
) -> None:
    tail, body, why = BROKEN[case]
    prefix = f"{PREFIX}.release.requested"
    subject = {
        "another version": f"{prefix}.v2.svc-24",
        "no version, no release id": prefix,
    }.get(case, f"{prefix}.v1.{tail}")
    msg_id = f"hdr-{abs(hash(case))}"
    await running.nc.jetstream().publish(subject, body, headers={"Nats-Msg-Id": msg_id})

    async def refusal() -> Envelope[Any] | None:
        found = [e for e in running.seen if isinstance(e.data, RequestRefused)]
        mine = [e for e in found if e.data.request_subject == subject]
        return mine[0] if mine else None

    refused = await _eventually(refusal, f"a refusal of {case}")
    assert refused.data.request_id in {msg_id, *REQUEST_IDS}, refused.data
    assert any(why in reason for reason in refused.data.reasons), refused.data.reasons
    answers = {type(e.data) for e in running.seen} - {RequestRefused, ReleaseRequested}
    assert not answers, f"only a refusal, nothing for any release: {answers}"

    async def letter() -> list[Envelope[DeadLetter]]:
        letters = await running.dead_letters()
        return [e for e in letters if e.data.original_subject == subject]

    (kept,) = await _eventually(letter, f"{case} among the dead letters")
    assert why in kept.data.error
    assert kept.data.payload_bytes == len(body)


REQUEST_IDS = {
    "req-deep-data",
    "req-mismatch",
    "req-cyrillic",
    "req-more",
    "req-v2",
    "req-bare",
}


async def test_reconcile_asks_for_an_unanswered_step_again_then_rolls_it_back(
    running: Running,
) -> None:
    subjects: Subjects = running.subjects
    await running.publish(
        subjects.of(ReleaseRequested, "svc-3"),
        # Another target: the module's server still holds shop/web for svc-1.
        _request("svc-3", "req-svc-3", target={"namespace": "shop", "name": "api"}),
        "req-svc-3",
    )
    await running.first(ApplyPhase, "svc-3")
    running.clock.now = at(60 + 11)  # the policy's 60 s to be ready, plus the grace
    again = await running.first(ApplyPhase, "svc-3", timeout=3, event_id="svc-3.apply.0.r1")
    assert again.data.ready_deadline == at(60)  # the step's own: the executor extends it
    running.clock.now = at(60 + 2 * 70 + 11)  # two more windows (and graces) of silence
    rollback = await running.first(RollbackRequested, "svc-3", timeout=3)
    assert rollback.data.reason.startswith("step 0 not in place: no executor answered")
