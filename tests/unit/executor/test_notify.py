"""Notifications: which events people hear about, in what words, and the Slack-shaped payload."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest

from canaryflow.executor.notify import slack_payload
from canaryflow.executor.notify.base import destinations, notification_for
from canaryflow.executor.notify.webhook import NotificationFailed, WebhookNotifier
from canaryflow.runtime.signing import IDEMPOTENCY_HEADER, verify
from canaryflow_contracts import Envelope, EventData
from canaryflow_contracts.events import (
    CommandRefused,
    MetricCheck,
    OperatorCommandRefused,
    PhaseReached,
    PlannedStep,
    ReleaseRolledBack,
    ReleaseStatusChanged,
    TargetRef,
)
from canaryflow_contracts.policy import Notify, NotifyOn

TARGET = TargetRef(namespace="shop", name="web")
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def envelope(data: EventData) -> Envelope[EventData]:
    return Envelope.wrap(data, release_id="web-1", source="test", id="e-1").model_copy(
        update={"time": NOW}
    )


ROLLED_BACK = ReleaseRolledBack(
    target=TARGET,
    summary="rolled back: analysis failed at step 1",
    evidence=[
        MetricCheck(
            metric="error-rate",
            track="canary",
            query="q",
            value=0.2,
            threshold=0.05,
            comparison="<=",
            sample_size=400,
            passed=False,
        )
    ],
)


def test_a_rollback_is_told_with_its_evidence() -> None:
    found = notification_for(envelope(ROLLED_BACK))
    assert found is not None
    assert found.kind is NotifyOn.ROLLED_BACK and found.severity == "danger"
    assert found.title == "Release web-1 of shop/web rolled back"
    assert "error-rate (canary) 0.2 vs 0.05" in found.text


def test_routine_events_are_not_told() -> None:
    step = PlannedStep(index=0, weight=10, hold_seconds=5)
    reached = PhaseReached(
        target=TARGET, step=step, canary_weight=10, canary_ready=1, stable_ready=9
    )
    applying = ReleaseStatusChanged(target=TARGET, status="applying", detail="step 2 of 3")
    assert notification_for(envelope(reached)) is None
    assert notification_for(envelope(applying)) is None


def test_the_policy_chooses_what_each_receiver_hears_and_global_receivers_hear_everything() -> None:
    refused = OperatorCommandRefused(
        target=TARGET, action="abort", actor="mallory", refusal="not allowed"
    )
    found = notification_for(envelope(refused))
    assert found is not None and found.kind is NotifyOn.REFUSED
    targets = [
        Notify(url="http://chat/all"),
        Notify(url="http://chat/outcomes", on=[NotifyOn.ROLLED_BACK]),
    ]
    assert destinations(found, targets, ["http://ops/all", "http://chat/all"]) == [
        "http://chat/all",
        "http://ops/all",
    ]


def test_a_refused_command_is_news_and_one_without_a_target_is_not() -> None:
    refused = CommandRefused(
        command="io.canaryflow.promotion.requested.v1",
        command_id="c-1",
        source="mallory",
        target=TARGET,
        reasons=["no release web-1 is known", "no ReleasePolicy"],
        checks=["policy", "unknown-release"],
    )
    found = notification_for(envelope(refused))
    assert found is not None and found.kind is NotifyOn.REFUSED and found.severity == "danger"
    assert found.title == "A promotion.requested.v1 for release web-1 of shop/web was refused"
    assert found.text == "no release web-1 is known; no ReleasePolicy"
    assert found.facts == {"source": "mallory", "command_id": "c-1"}
    assert notification_for(envelope(refused.model_copy(update={"target": None}))) is None


def test_the_payload_is_a_slack_message_with_the_event_in_its_metadata() -> None:
    found = notification_for(envelope(ROLLED_BACK))
    assert found is not None
    payload = slack_payload(found)
    assert payload["text"].startswith(":rotating_light: Release web-1 of shop/web rolled back")
    section, context = payload["blocks"]
    assert section["type"] == "section" and section["text"]["type"] == "mrkdwn"
    assert "*Release web-1 of shop/web rolled back*" in section["text"]["text"]
    assert context["type"] == "context"
    assert payload["metadata"]["event_type"] == "canaryflow_rolled_back"
    event = payload["metadata"]["event_payload"]
    assert event["releaseId"] == "web-1" and event["kind"] == "rolled-back"
    assert event["eventType"] == "io.canaryflow.release.rolled_back.v1"
    json.dumps(payload)  # plain JSON all the way down


def test_slack_markup_in_a_release_is_shown_as_text() -> None:
    status = ReleaseStatusChanged(target=TARGET, status="paused", detail="<!channel> & co")
    found = notification_for(envelope(status))
    assert found is not None
    assert "&lt;!channel&gt; &amp; co" in slack_payload(found)["blocks"][0]["text"]["text"]


async def test_a_receiver_that_refuses_makes_the_delivery_fail() -> None:
    found = notification_for(envelope(ROLLED_BACK))
    assert found is not None
    received: list[dict[str, object]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        received.append(json.loads(request.content))
        return httpx.Response(200 if len(received) == 1 else 404, text="no_service")

    notifier = WebhookNotifier(httpx.AsyncClient(transport=httpx.MockTransport(answer)))
    await notifier.send("http://chat/hook", found)
    with pytest.raises(NotificationFailed, match="HTTP 404: no_service"):
        await notifier.send("http://chat/hook", found)
    assert received[0]["text"] == slack_payload(found)["text"]


async def test_a_notification_is_signed_when_the_executor_has_a_key() -> None:
    found = notification_for(envelope(ROLLED_BACK))
    assert found is not None
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    await WebhookNotifier(client, signing_key="chat-key").send("http://chat/hook", found)

    (request,) = seen
    assert verify("chat-key", request.content, request.headers) is None
    assert "does not match" in str(verify("guess", request.content, request.headers))


async def test_every_repeat_of_a_notification_carries_its_events_id_as_idempotency_key() -> None:
    """The ledger cannot stop a repeat when the executor dies between the receiver's answer
    and recording it; the receiver can, by this key (and the payload says it too)."""
    event = envelope(ROLLED_BACK)
    found = notification_for(event)
    assert found is not None
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    notifier = WebhookNotifier(httpx.AsyncClient(transport=httpx.MockTransport(answer)))
    await notifier.send("http://chat/hook", found)
    await notifier.send("http://chat/hook", found)  # the repeat after a kill

    assert [r.headers[IDEMPOTENCY_HEADER] for r in seen] == [event.id, event.id]
    metadata = json.loads(seen[0].content)["metadata"]["event_payload"]
    assert metadata["eventId"] == event.id
