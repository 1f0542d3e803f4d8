"""Every request gets one answer, and a release ends once, with the four services running.

Given the services (two replicas each) on the real stack, when a system publishes requests
that cannot become the release they name, then each is answered on its own refusal subject
(and, when it breaks the contract, kept among the dead letters with the reason), and a release
whose id another request reuses still ends exactly once, with its own outcome.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from kubernetes import client
from nats.aio.client import Client as NatsClient
from nats.js.api import DeliverPolicy

from canaryflow.cli import main as cli
from canaryflow.demo import shop
from canaryflow_contracts import Envelope, Subjects, envelope_of
from canaryflow_contracts.events import (
    TERMINAL_EVENTS,
    DeadLetter,
    ReleasePlanned,
    ReleaseRejected,
    ReleaseRequested,
    ReleaseSucceeded,
    RequestRefused,
    TargetRef,
    VersionSpec,
)
from tests.e2e.conftest import Releases
from tests.support import StackEnv, async_wait_until

pytestmark = pytest.mark.stack

DEEP = 10_000
# A refusal is published at the first delivery; the retries (0.5 + 2 + 5 + 15 s) come later.
ANSWER_SECONDS = 5.0


def _request(namespace: str, release_id: str, request_id: str) -> dict[str, Any]:
    envelope = Envelope.wrap(
        ReleaseRequested(
            target=TargetRef(namespace=namespace, name="web"),
            version=VersionSpec(image=shop.image("v2")),
            requested_by="e2e-test",
        ),
        release_id=release_id,
        source="tests/e2e",
        id=request_id,
    )
    body: dict[str, Any] = envelope.model_dump(mode="json")
    return body


async def _refusal(
    nc: NatsClient, subjects: Subjects, request_id: str, timeout: float = 20
) -> Envelope[RequestRefused]:
    """The refusal of ``request_id``, read from the stream (so it cannot be missed)."""
    subscription = await nc.jetstream().subscribe(
        subjects.refusal(request_id),
        ordered_consumer=True,
        stream=subjects.events_stream.name,
        deliver_policy=DeliverPolicy.ALL,
    )
    try:
        message = await subscription.next_msg(timeout=timeout)
    finally:
        await subscription.unsubscribe()
    return envelope_of(RequestRefused).model_validate_json(message.data)


async def _dead_letter(nc: NatsClient, subjects: Subjects, subject: str) -> DeadLetter:
    js = nc.jetstream()
    stream = subjects.deadletter_stream.name

    async def find() -> DeadLetter | None:
        info = await js.stream_info(stream)
        for sequence in range(info.state.first_seq, info.state.last_seq + 1):
            stored = await js.get_msg(stream, sequence)
            letter = envelope_of(DeadLetter).model_validate_json(stored.data or b"").data
            if letter.original_subject == subject:
                return letter
        return None

    found: DeadLetter = await async_wait_until(
        find, timeout=20, message=f"a dead letter of {subject}"
    )
    return found


def _broken(namespace: str, case: str) -> tuple[str, bytes, str, str]:
    """Subject tail, body, the request id its refusal carries, and a word of the reason."""
    rid = f"web-{uuid.uuid4().hex[:8]}"
    req = f"req-{uuid.uuid4().hex[:8]}"
    good = _request(namespace, rid, req)
    if case == "nested 10,000 deep at the top":
        return f"v1.{rid}", b"[" * DEEP + b"]" * DEEP, f"hdr-{req}", "deeper than the limit"
    if case == "nested 10,000 deep inside data":
        good["data"]["deep"] = "@"
        nested = "[" * DEEP + "]" * DEEP
        body = json.dumps(good).replace('"@"', nested).encode()
        # Too deep to be read, its envelope id too: the refusal names its Nats-Msg-Id.
        return f"v1.{rid}", body, f"hdr-{req}", "deeper than"
    if case == "a token after the release id":
        return f"v1.{rid}.more", json.dumps(good).encode(), req, "is not of the form"
    if case == "a Cyrillic letter in the release id":
        cyrillic = rid.replace("e", "\u0435")  # "web" with a Cyrillic "ie" (U+0435)
        good["subject"] = cyrillic
        return f"v1.{cyrillic}", json.dumps(good).encode(), req, "not a valid release id"
    if case == "no envelope id":
        del good["id"]
        return f"v1.{rid}", json.dumps(good).encode(), f"hdr-{req}", "id"
    if case == "the envelope's subject differs from the subject's":
        good["subject"] = f"other-{rid}"
        return f"v1.{rid}", json.dumps(good).encode(), req, "differs from the release id"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "nested 10,000 deep at the top",
        "nested 10,000 deep inside data",
        "a token after the release id",
        "a Cyrillic letter in the release id",
        "no envelope id",
        "the envelope's subject differs from the subject's",
    ],
)
async def test_each_broken_request_is_refused_on_its_own_subject_and_dead_lettered(
    case: str, shop_namespace: str, releases: Releases, nats_client: NatsClient
) -> None:
    subjects = releases.subjects
    tail, body, request_id, why = _broken(shop_namespace, case)
    subject = f"{subjects.prefix}.release.requested.{tail}"

    sent = time.monotonic()
    await nats_client.jetstream().publish(
        subject, body, headers={"Nats-Msg-Id": f"hdr-{request_id.removeprefix('hdr-')}"}
    )

    refusal = await _refusal(nats_client, subjects, request_id)
    took = time.monotonic() - sent
    print(f"{case}: refused in {took:.2f} s")
    # At once, not after the retries (a Cyrillic id's rejection reached the dead letters at 22 s)
    assert took < ANSWER_SECONDS, f"{case}: answered after {took:.1f} s"
    assert refusal.data.request_subject == subject
    assert any(why in reason for reason in refusal.data.reasons), refusal.data.reasons
    letter = await _dead_letter(nats_client, subjects, subject)
    assert why in letter.error
    assert letter.payload_bytes == len(body)


async def test_a_reused_release_id_is_refused_and_the_release_ends_once_with_its_outcome(
    shop_namespace: str, releases: Releases, nats_client: NatsClient
) -> None:
    subjects = releases.subjects
    release_id = await releases.request(shop_namespace, shop.image("v2"))
    planned = await releases.events(release_id, until=(ReleasePlanned,), timeout=30)
    first_request = planned[-1].data
    assert isinstance(first_request, ReleasePlanned)

    # Another system reuses the id while the release is in flight (a new request id).
    second = _request(shop_namespace, release_id, f"reuse-{uuid.uuid4().hex[:8]}")
    await nats_client.jetstream().publish(
        subjects.of(ReleaseRequested, release_id),
        json.dumps(second).encode(),
        headers={"Nats-Msg-Id": second["id"]},
    )
    refusal = await _refusal(nats_client, subjects, second["id"])
    assert "already used" in refusal.data.reasons[0], refusal.data.reasons
    assert refusal.data.release_id == release_id

    events = await releases.events(release_id, timeout=240)
    ends = [e for e in events if isinstance(e.data, TERMINAL_EVENTS)]
    assert [type(e.data) for e in ends] == [ReleaseSucceeded], [e.type for e in events]
    assert not [e for e in events if isinstance(e.data, ReleaseRejected | RequestRefused)]
    assert first_request.request_id != second["id"]
    # And nothing terminal is stored for it after the end either.
    js = nats_client.jetstream()
    info = await js.stream_info(
        subjects.events_stream.name, subjects_filter=f"{subjects.prefix}.release.*.v1.{release_id}"
    )
    stored = info.state.subjects or {}
    terminal = [
        s for s in stored if s.split(".")[2] in ("succeeded", "rolled_back", "failed", "rejected")
    ]
    assert terminal == [subjects.of(ReleaseSucceeded, release_id)], stored
    assert stored[terminal[0]] == 1


async def test_the_cli_reports_a_refused_request_instead_of_another_requests_outcome(
    as_operator: None,
    *,
    kube: client.ApiClient,
    shop_namespace: str,
    releases: Releases,
    stack: StackEnv,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a release id already used: its request was rejected (a Deployment with no policy),
    # so the id's events already end with a rejection
    shop.deploy(kube, shop_namespace, name="unmanaged")
    release_id = await releases.request(shop_namespace, shop.image("v2", "unmanaged"), "unmanaged")
    await releases.events(release_id, until=(ReleaseRejected,), timeout=30)

    # When `canaryflow release --watch` reuses it
    code = await cli.run(
        [
            "--nats", stack.nats_url, "--prefix", releases.subjects.prefix,
            "release", "-n", shop_namespace, "-d", "web", "--image", shop.image("v2"),
            "--id", release_id, "--by", "e2e-test", "--watch",
        ]
    )  # fmt: skip

    # Then it says its request was refused, not that "its" release was rejected
    printed = capsys.readouterr().out
    assert code == 1
    assert "request refused, nothing changed" in printed and "already used" in printed, printed
    assert "REJECTED" not in printed, printed
