"""make chaos's notification receiver drops what a careful receiver drops, and no more."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from canaryflow.demo.chaos import Receiver, duplicate_notes, rollback_cause
from canaryflow.runtime.signing import IDEMPOTENCY_HEADER

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
