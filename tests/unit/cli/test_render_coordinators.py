"""`canaryflow status` shows groups and pipelines with the state of every member."""

from __future__ import annotations

from datetime import timedelta

from canaryflow.cli import render
from canaryflow.planner import groups, pipelines
from canaryflow_contracts import Envelope
from canaryflow_contracts.events import (
    GroupMember,
    GroupRequested,
    PipelineEnvironment,
    PipelineRequested,
    TargetRef,
    VersionSpec,
)
from canaryflow_contracts.state import ReleaseState, ReleaseStatus
from tests.unit.planner.factory import T0, accepted

V2 = VersionSpec(image="registry.local/shop/web:v2")


def test_a_group_shows_each_member_in_order_with_where_its_release_is() -> None:
    request = GroupRequested(
        members=[
            GroupMember(target=TargetRef(namespace="shop", name="api"), version=V2),
            GroupMember(target=TargetRef(namespace="shop", name="web"), version=V2),
        ],
        requested_by="ci",
    )
    planned = groups.plan("g1", Envelope.wrap(request, release_id="g1", source="t"), T0).state
    assert planned is not None
    started = groups.advance(planned, {}, T0).state
    assert started is not None
    first = accepted().model_copy(update={"release_id": "g1-m1", "status": ReleaseStatus.ANALYSING})

    lines = render.group_lines(started, {"g1-m1": first}, T0 + timedelta(seconds=5))

    assert lines[0] == "group g1  running  (2 members)"
    assert lines[2].startswith(
        "  1. g1-m1  shop/api  registry.local/shop/web:v2  analysing step 1/"
    )
    assert lines[3] == "  2. g1-m2  shop/web  registry.local/shop/web:v2  not started"


def test_a_pipeline_shows_its_version_once_and_each_environment() -> None:
    request = PipelineRequested(
        target="web",
        version=V2,
        environments=[
            PipelineEnvironment(name="test", namespace="shop-test"),
            PipelineEnvironment(name="production", namespace="shop", gate=True),
        ],
        requested_by="ci",
    )
    planned = pipelines.plan("p1", Envelope.wrap(request, release_id="p1", source="t"), T0).state
    assert planned is not None
    started = pipelines.advance(planned, {}, T0).state
    assert started is not None
    test_release: ReleaseState = accepted().model_copy(
        update={"release_id": "p1-e1", "status": ReleaseStatus.SUCCEEDED}
    )
    waiting = pipelines.advance(started, {"p1-e1": test_release}, T0).state
    assert waiting is not None

    lines = render.pipeline_lines(waiting, {"p1-e1": test_release}, T0)

    assert lines[:2] == ["pipeline p1  web  waiting", "  version: registry.local/shop/web:v2"]
    assert "  test: shop-test  p1-e1  succeeded" in lines
    assert "  production: shop  p1-e2  behind a gate" in lines
