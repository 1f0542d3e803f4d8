"""A release state written by a newer version is read by an older one (a rolling upgrade)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from canaryflow_contracts.policy import OperatorAction, OperatorGrant
from canaryflow_contracts.state import HistoryEntry, read_state
from tests.unit.support_state import sample_state


def test_fields_of_a_newer_version_are_dropped_at_any_depth_and_the_rest_is_kept() -> None:
    """Found by make chaos: a planner one commit newer wrote a field the rollback services
    did not know, and every rollback of the run was dead-lettered."""
    base = sample_state("web-1")
    state = base.model_copy(
        update={
            "operators": [OperatorGrant(subject="a@b", actions=[OperatorAction.ABORT])],
            "history": [HistoryEntry(time=base.created_at, event="planned", detail="p")],
        }
    )
    stored = json.loads(state.model_dump_json())
    stored["a_field_from_the_future"] = {"x": 1}
    stored["operators"][0]["proof"] = "also new"
    stored["history"][0]["by_whom"] = "new too"

    assert read_state(json.dumps(stored)) == state


def test_anything_else_invalid_is_still_refused() -> None:
    stored = json.loads(sample_state("web-1").model_dump_json())
    stored["from_the_future"] = True
    stored["step_index"] = "not a number"
    with pytest.raises(ValidationError, match="step_index"):
        read_state(json.dumps(stored))
