"""Pushed alerts: Alertmanager's payload in, a failed verdict at once or a reasoned refusal out."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from canaryflow.metrics_watcher.alerts import AlertRefused, alert_verdict, parse_alerts
from canaryflow.metrics_watcher.webhook import application, receive
from canaryflow.runtime.store import Versioned
from canaryflow_contracts.events import AnalysisVerdict, TargetRef, VerdictAction, VerdictResult
from canaryflow_contracts.state import ReleaseState, ReleaseStatus
from tests.unit.support_state import sample_state

FIRING: dict[str, Any] = {
    "version": "4",
    "status": "firing",
    "receiver": "canaryflow",
    "groupLabels": {"alertname": "HighErrorRate"},
    "commonLabels": {"severity": "page"},
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "HighErrorRate", "namespace": "shop", "deployment": "web"},
            "annotations": {"summary": "5xx above 5 % for 1m"},
            "startsAt": "2026-11-27T12:00:00Z",
            "fingerprint": "abc123",
        }
    ],
}


def test_a_firing_alert_names_its_target() -> None:
    (alert,) = parse_alerts(FIRING)
    assert alert.name == "HighErrorRate" and alert.target == TargetRef(namespace="shop", name="web")
    assert alert.labels["severity"] == "page" and alert.fingerprint == "abc123"
    assert alert.summary == "5xx above 5 % for 1m"


def test_resolved_alerts_are_not_acted_on() -> None:
    resolved = {**FIRING, "alerts": [{**FIRING["alerts"][0], "status": "resolved"}]}
    assert parse_alerts(resolved) == []


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ([], 400, "not an Alertmanager notification"),
        ({"alerts": "x"}, 400, "not an Alertmanager notification"),
        ({"alerts": [{"status": "weird", "labels": {}}]}, 400, "status 'weird'"),
        (
            {"alerts": [{"status": "firing", "labels": {"alertname": "X"}}]},
            422,
            "carries no target",
        ),
        (
            {"alerts": [{"status": "firing", "labels": {"namespace": "Bad_NS", "target": "w"}}]},
            422,
            "invalid target",
        ),
    ],
)
def test_malformed_alerts_are_refused_with_a_reason(body: Any, status: int, words: str) -> None:
    with pytest.raises(AlertRefused) as refused:
        parse_alerts(body)
    assert refused.value.status == status and words in refused.value.reason


def analysing() -> ReleaseState:
    return sample_state("web-1").model_copy(update={"status": ReleaseStatus.ANALYSING})


def test_the_verdict_fails_the_current_step_at_once() -> None:
    (alert,) = parse_alerts(FIRING)
    verdict, event_id = alert_verdict(alert, analysing())
    assert (verdict.result, verdict.action, verdict.final) == (
        VerdictResult.FAIL,
        VerdictAction.ROLLBACK,
        True,
    )
    assert verdict.target == TargetRef(namespace="shop", name="web")
    assert "HighErrorRate is firing: 5xx above 5 % for 1m" in verdict.reason
    (check,) = verdict.checks
    assert check.metric == "alert:HighErrorRate" and check.passed is False
    assert check.method == "alert" and '"deployment": "web"' in check.query
    assert event_id == "web-1.verdict.0.alert.abc123"


class Store:
    def __init__(self, state: ReleaseState | None) -> None:
        self.state = state

    async def holder_of(self, target: TargetRef) -> str | None:
        return self.state.release_id if self.state and self.state.target == target else None

    async def get(self, release_id: str) -> Versioned | None:
        return Versioned(self.state, 3) if self.state else None


class Sent:
    def __init__(self) -> None:
        self.events: list[tuple[str, AnalysisVerdict, str]] = []

    async def __call__(self, release_id: str, verdict: AnalysisVerdict, event_id: str) -> None:
        self.events.append((release_id, verdict, event_id))


async def test_receive_publishes_for_the_release_in_flight() -> None:
    sent = Sent()
    answer = await receive(FIRING, Store(analysing()), sent)
    assert answer["rolled_back"] == [{"alert": "HighErrorRate", "release_id": "web-1"}]
    assert [event_id for _, _, event_id in sent.events] == ["web-1.verdict.0.alert.abc123"]


@pytest.mark.parametrize(
    "state",
    [None, sample_state("web-1").model_copy(update={"status": ReleaseStatus.SUCCEEDED})],
)
async def test_an_alert_for_no_release_in_flight_is_refused(state: ReleaseState | None) -> None:
    sent = Sent()
    with pytest.raises(AlertRefused) as refused:
        await receive(FIRING, Store(state), sent)
    assert (
        refused.value.status == 404 and "no release in flight for shop/web" in refused.value.reason
    )
    assert sent.events == []


TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_the_http_endpoint_answers_with_status_and_reason() -> None:
    sent = Sent()
    store = Store(analysing())
    async with TestClient(TestServer(application(lambda: store, sent, TOKEN))) as client:
        ok = await client.post("/alerts", json=FIRING, headers=AUTH)
        assert ok.status == 200 and (await ok.json())["rolled_back"][0]["release_id"] == "web-1"
        bad = await client.post("/alerts", data=b"{not json", headers=AUTH)
        assert bad.status == 400 and "not JSON" in (await bad.json())["reason"]
        unknown = await client.post(
            "/alerts",
            json={"alerts": [{"status": "firing", "labels": {"namespace": "x", "target": "y"}}]},
            headers=AUTH,
        )
        assert (
            unknown.status == 404
            and "no release in flight for x/y" in (await unknown.json())["reason"]
        )
    assert len(sent.events) == 1


@pytest.mark.parametrize(
    ("token", "headers", "words"),
    [
        (TOKEN, {}, "no Authorization header"),
        (TOKEN, {"Authorization": "Bearer guessed"}, "not this receiver's"),
        (TOKEN, {"Authorization": f"Basic {TOKEN}"}, "not this receiver's"),
        ("", AUTH, "has no token (CANARYFLOW_ALERTS_TOKEN)"),
    ],
)
async def test_a_call_without_the_receivers_token_is_refused_and_changes_nothing(
    token: str, headers: dict[str, str], words: str
) -> None:
    sent = Sent()
    store = Store(analysing())
    async with TestClient(TestServer(application(lambda: store, sent, token))) as client:
        refused = await client.post("/alerts", json=FIRING, headers=headers)
        assert refused.status == 401 and words in (await refused.json())["reason"]
        health = await client.get("/healthz")
        assert health.status == 200  # probes need no token
    assert sent.events == []
