"""make chaos judges from the outside: what its receiver drops, and what it calls a violation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from canaryflow.demo.chaos import (
    Receiver,
    abort_came_too_early,
    duplicate_notes,
    rollback_cause,
)
from canaryflow.runtime.signing import IDEMPOTENCY_HEADER
from canaryflow_contracts import Envelope
from canaryflow_contracts.events import (
    AbortRelease,
    CommandRefused,
    PlannedStep,
    ReleasePlanned,
    TargetRef,
    VersionSpec,
)

STARTED = {"releaseId": "r1", "kind": "started", "eventType": "planned", "time": "t"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


def _post(receiver: Receiver, note: dict[str, Any], key: str | None) -> None:
    headers = {IDEMPOTENCY_HEADER: key} if key is not None else {}
    body = json.dumps({"metadata": {"event_payload": note}})
    assert httpx.post(receiver.url, content=body, headers=headers).status_code == 200


def test_a_repeat_with_the_same_key_is_dropped_and_counted(receiver: Receiver) -> None:
    _post(receiver, STARTED, "r1.planned")
    _post(receiver, STARTED, "r1.planned")

    assert receiver.notes == [STARTED]
    assert receiver.repeats == [STARTED]
    assert duplicate_notes(receiver.notes) == []


@pytest.mark.parametrize("keys", [("r1.planned", "r1.planned-again"), (None, None)])
def test_the_same_news_under_two_keys_or_none_is_a_violation(
    receiver: Receiver, keys: tuple[str | None, str | None]
) -> None:
    for key in keys:
        _post(receiver, STARTED, key)

    assert receiver.repeats == []
    assert duplicate_notes(receiver.notes) == [
        "notification ('r1', 'started', 'planned', 't') sent 2 times"
    ]


@pytest.mark.parametrize(
    ("summary", "cause"),
    [
        ("rolled back: aborted by alice@example: wrong build; stable restored", "operator abort"),
        ("rolled back: paused for longer than 90s; stable back", "paused past its deadline"),
        ("rolled back: step 0: fail: error-rate 0.2 above max 0.05", "analysis failed"),
        ("rolled back: step 1 failed: pods not Ready by the deadline; stable", "step failed"),
        ("rolled back: something new; stable restored", "something new"),
    ],
)
def test_a_rollback_is_put_down_to_the_kind_of_reason_its_summary_gives(
    summary: str, cause: str
) -> None:
    assert rollback_cause(summary) == cause


def _events(abort_before_planned: bool, refused_as: list[str]) -> list[Envelope[Any]]:
    target = TargetRef(namespace="chaos", name="t2")
    t0 = datetime(2026, 12, 7, 13, 44, tzinfo=UTC)
    abort = Envelope.wrap(
        AbortRelease(actor="chaos@campaign"), release_id="t2-1", source="chaos", time=t0
    )
    planned = Envelope.wrap(
        ReleasePlanned(
            target=target,
            version=VersionSpec(image="registry.local/shop/t2:v2"),
            policy="p",
            steps=[PlannedStep(index=0, weight=25, hold_seconds=8)],
        ),
        release_id="t2-1",
        source="canaryflow/planner",
        time=t0 + timedelta(seconds=30 if abort_before_planned else -30),
    )
    refused = Envelope.wrap(
        CommandRefused(
            command=AbortRelease.event_type(),
            command_id=abort.id,
            source="chaos",
            reasons=["no release t2-1 is known"],
            checks=refused_as,
        ),
        release_id="t2-1",
        source="canaryflow/rollback",
        time=t0,
    )
    return [abort, refused, planned]


def test_an_abort_refused_before_the_release_was_planned_is_no_abort() -> None:
    assert abort_came_too_early(_events(abort_before_planned=True, refused_as=["unknown-release"]))


@pytest.mark.parametrize(("before", "checks"), [(False, ["unknown-release"]), (True, ["status"])])
def test_an_abort_of_a_live_release_still_counts(before: bool, checks: list[str]) -> None:
    """Refused once the release was planned, or for another reason: the check stands."""
    assert not abort_came_too_early(_events(abort_before_planned=before, refused_as=checks))
