"""A string JSON can spell but not carry (a lone surrogate) is refused where it comes in."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from canaryflow_contracts.events import ReleaseRequested, parse_event
from canaryflow_contracts.policy import ReleasePolicySpec

LONE = json.loads('"\\ud800"')  # what json.loads makes of a lone surrogate escape


def test_a_policy_with_a_lone_surrogate_is_refused_naming_the_field() -> None:
    """Found by the property tests: accepted, then it crashed whoever wrote it back as JSON."""
    spec = {
        "targetRef": "web",
        "steps": [{"weight": 10, "holdSeconds": 5}],
        "analysis": {"compare": [{"name": "errors", "template": "errors"}]},
        "images": {"allowedPrefixes": ["registry.example/", LONE]},
    }
    with pytest.raises(ValidationError, match=r"images\.allowedPrefixes[\s\S]*lone surrogate"):
        ReleasePolicySpec.model_validate(spec)


def test_an_event_with_one_is_refused_and_a_good_one_still_reads() -> None:
    good = {
        "specversion": "1.0",
        "id": "r-1",
        "source": "ci",
        "type": ReleaseRequested.event_type(),
        "subject": "web-1",
        "data": {
            "target": {"namespace": "shop", "name": "web"},
            "version": {"image": "registry.example/web:v2"},
            "requested_by": "ci",
        },
    }
    assert parse_event(json.dumps(good)).data.requested_by == "ci"
    bad = json.dumps(good).replace('"requested_by": "ci"', '"requested_by": "\\ud800"')
    with pytest.raises(ValidationError):  # pydantic's own JSON parser refuses it already
        parse_event(bad)
    # ... and so is a body Python's json module decoded (it accepts the escape)
    data = json.loads(json.dumps(good))["data"]
    data["requested_by"] = LONE
    with pytest.raises(ValidationError, match="requested_by"):
        ReleaseRequested.model_validate(data)
