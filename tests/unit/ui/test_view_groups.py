"""What the web view shows of groups and pipelines (ui/view.py), from states the planner's
own pure decisions produce (planner/groups.py, planner/pipelines.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from canaryflow.planner import groups, pipelines, waiting
from canaryflow.ui import view
from canaryflow_contracts import Envelope, EventData
from canaryflow_contracts.events import (
    GroupMember,
    GroupRequested,
    PipelineEnvironment,
    PipelineRequested,
    TargetRef,
    VerdictResult,
    VersionSpec,
)
from canaryflow_contracts.state import (
    GroupState,
    GroupStatus,
    HistoryEntry,
    PipelineState,
    ReleaseState,
    ReleaseStatus,
    VerdictSummary,
    Waiting,
)
from tests.support.samples import THRESHOLD_CHECK, one_of_each
from tests.unit.support_state import sample_state

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
V2 = VersionSpec(image="registry.local/shop/web:v2")


def request(data: EventData, subject: str) -> Envelope[Any]:
    envelope = Envelope.wrap(data, release_id=subject, source="canaryflow/test")
    return envelope.model_copy(update={"time": T0})


def release(release_id: str, status: ReleaseStatus, **update: Any) -> ReleaseState:
    return sample_state(release_id).model_copy(update={"status": status, **update})


def at_gate(release_id: str, group_id: str) -> ReleaseState:
    queue = Waiting(
        stage="promotion",
        step_index=0,
        queue=[view.GROUP_GATE],
        then=ReleaseStatus.PROMOTING,
        deadline=T0 + timedelta(hours=1),
    )
    gate = waiting.group_gate()
    return release(release_id, ReleaseStatus.WAITING, waiting=queue, group=group_id, hooks=[gate])


def test_the_view_knows_the_planners_group_gate() -> None:
    assert view.GROUP_GATE == waiting.GROUP_GATE


def two_members() -> tuple[GroupState, list[Envelope[Any]]]:
    asked = GroupRequested(
        members=[
            GroupMember(target=TargetRef(namespace="shop", name="api"), version=V2),
            GroupMember(target=TargetRef(namespace="shop", name="web"), version=V2),
        ],
        requested_by="ops",
        reason="checkout v2",
    )
    event = request(asked, "grp")
    planned = groups.plan("grp", event, T0)
    assert planned.state is not None
    started = groups.advance(planned.state, {}, T0 + timedelta(seconds=1))
    assert started.state is not None
    return started.state, [event]


def test_a_group_lists_its_members_in_order_with_each_ones_state() -> None:
    group, _ = two_members()
    running = {"grp-m1": release("grp-m1", ReleaseStatus.ANALYSING)}
    row = view.group_row(group, running, T0 + timedelta(seconds=90))
    assert (row["id"], row["status"], row["age_seconds"]) == ("grp", "running", 90)
    assert [(m["release_id"], m["state"]) for m in row["members"]] == [
        ("grp-m1", "running"),
        ("grp-m2", "not started"),
    ]
    assert row["members"][0]["release"]["status"] == "analysing"
    assert row["members"][1]["release"] is None
    # Its request not admitted yet: requested, not running.
    assert view.group_row(group, {}, T0)["members"][0]["state"] == "requested"


def test_a_member_at_the_groups_gate_waits_and_the_page_says_so() -> None:
    group, events = two_members()
    ready = {"grp-m1": at_gate("grp-m1", "grp")}
    moved = groups.advance(group, ready, T0 + timedelta(seconds=5))
    assert moved.state is not None
    page = view.group_page("grp", moved.state, ready, events, T0 + timedelta(seconds=6))
    assert [m["state"] for m in page["members"]] == ["waiting", "requested"]
    assert page["gate"] == {"waiting": ["grp-m1"], "promoting": False}
    assert page["release_ids"] == ["grp-m1", "grp-m2"]
    assert page["outcome"] is None
    assert "ops asks for a group of 2: shop/api, shop/web" in page["events"][0]["summary"]


def test_a_rolled_back_group_names_the_failed_member_and_the_order() -> None:
    group, events = two_members()
    failed = {
        "grp-m1": at_gate("grp-m1", "grp"),
        "grp-m2": release("grp-m2", ReleaseStatus.ROLLED_BACK, outcome_reason="errors 20 %"),
    }
    group = group.model_copy(
        update={
            "members": [group.members[0], group.members[1].model_copy(update={"started_at": T0})]
        }
    )
    now = T0 + timedelta(seconds=9)
    step = groups.advance(group, failed, now)
    assert step.state is not None
    back = {**failed, "grp-m1": release("grp-m1", ReleaseStatus.ROLLED_BACK)}
    done = groups.advance(step.state, back, now)
    assert done.state is not None
    outcome_events = [request(c.data, "grp") for c in step.commands + done.commands]
    page = view.group_page("grp", done.state, back, events + outcome_events, now)
    assert page["group"]["status"] == "rolled_back"
    assert [m["state"] for m in page["members"]] == ["rolled_back", "rolled_back"]
    assert [m["failed"] for m in page["members"]] == [False, True]
    outcome = page["outcome"]
    assert outcome["result"] == "rolled_back"
    assert outcome["failed_member"] == "grp-m2"
    assert outcome["rolled_back_order"] == ["grp-m2", "grp-m1"]
    assert "errors 20 %" in outcome["summary"]


def three_environments() -> tuple[PipelineState, list[Envelope[Any]]]:
    asked = PipelineRequested(
        target="web",
        version=V2,
        environments=[
            PipelineEnvironment(name="test", namespace="shop-test"),
            PipelineEnvironment(name="staging", namespace="shop-staging"),
            PipelineEnvironment(name="prod", namespace="shop", gate=True),
        ],
        requested_by="ops",
    )
    event = request(asked, "pipe")
    planned = pipelines.plan("pipe", event, T0)
    assert planned.state is not None
    started = pipelines.advance(planned.state, {}, T0)
    assert started.state is not None
    return started.state, [event]


def test_a_pipeline_waits_at_a_gate_then_says_who_opened_it() -> None:
    pipeline, events = three_environments()
    done = {
        "pipe-e1": release("pipe-e1", ReleaseStatus.SUCCEEDED),
        "pipe-e2": release("pipe-e2", ReleaseStatus.SUCCEEDED),
    }
    pipeline = pipeline.model_copy(
        update={
            "stages": [
                pipeline.stages[0],
                pipeline.stages[1].model_copy(update={"started_at": T0}),
                pipeline.stages[2],
            ]
        }
    )
    waiting = pipelines.advance(pipeline, done, T0 + timedelta(seconds=30))
    assert waiting.state is not None
    page = view.pipeline_page("pipe", waiting.state, done, events, T0 + timedelta(seconds=31))
    assert [(e["name"], e["state"], e["gate_state"]) for e in page["environments"]] == [
        ("test", "succeeded", ""),
        ("staging", "succeeded", ""),
        ("prod", "gate waiting", "waiting"),
    ]
    assert page["pipeline"]["waiting_gate"] == "prod"
    opened = pipelines.open_gate(waiting.state, "prod", "ops@shop", "", T0 + timedelta(seconds=40))
    assert opened.state is not None
    row = view.pipeline_row(opened.state, done, T0 + timedelta(seconds=41))
    prod = row["environments"][2]
    assert (prod["gate_state"], prod["gate_opened_by"], prod["state"]) == (
        "opened",
        "ops@shop",
        "not started",
    )


def test_a_stopped_pipeline_shows_where_why_and_the_evidence() -> None:
    pipeline, events = three_environments()
    check = THRESHOLD_CHECK.model_copy(update={"metric": "error-rate", "passed": False})
    verdict = VerdictSummary(
        step_index=0, result=VerdictResult.FAIL, final=True, reason="bad", checks=[check]
    )
    failed = {
        "pipe-e1": release(
            "pipe-e1",
            ReleaseStatus.ROLLED_BACK,
            outcome_reason="error-rate 0.2",
            last_verdict=verdict,
        )
    }
    stopped = pipelines.advance(pipeline, failed, T0 + timedelta(seconds=20))
    assert stopped.state is not None
    outcome_events = [request(c.data, "pipe") for c in stopped.commands]
    page = view.pipeline_page("pipe", stopped.state, failed, events + outcome_events, T0)
    assert [e["state"] for e in page["environments"]] == [
        "rolled_back",
        "not started",
        "not started",
    ]
    assert [e["stopped"] for e in page["environments"]] == [True, False, False]
    outcome = page["outcome"]
    assert (outcome["result"], outcome["environment"], outcome["release_id"]) == (
        "stopped",
        "test",
        "pipe-e1",
    )
    assert "never started: staging, prod" in outcome["summary"]
    assert outcome["evidence"][0]["metric"] == "error-rate"
    assert page["events"][-1]["summary"].startswith("stopped at test: ")


def test_groups_and_pipelines_are_filtered_like_releases() -> None:
    group, _ = two_members()
    pipeline, _ = three_environments()
    ended = group.model_copy(update={"group_id": "old", "status": GroupStatus.SUCCEEDED})
    every = [group, ended]
    assert [g["id"] for g in view.group_list(every, {}, T0)] == ["grp", "old"]
    assert [g["id"] for g in view.group_list(every, {}, T0, status=view.IN_FLIGHT)] == ["grp"]
    assert [g["id"] for g in view.group_list(every, {}, T0, status="succeeded")] == ["old"]
    assert view.group_list(every, {}, T0, namespace="elsewhere") == []
    assert [p["id"] for p in view.pipeline_list([pipeline], {}, T0, "shop-staging")] == ["pipe"]
    assert view.pipeline_list([pipeline], {}, T0, status=view.FINISHED) == []
    assert view.pipeline_list([pipeline], {}, T0, status="paused") == []


def test_an_ended_group_read_before_its_outcome_event_still_says_how_it_ended() -> None:
    group, events = two_members()
    last = HistoryEntry(time=T0, event="succeeded", detail="2 member(s) promoted in order: a, b")
    promoted = group.model_copy(
        update={"status": GroupStatus.SUCCEEDED, "history": [*group.history, last]}
    )
    outcome = view.group_page("grp", promoted, {}, events, T0)["outcome"]
    assert outcome == {
        "result": "succeeded",
        "summary": "2 member(s) promoted in order: a, b",
        "evidence": [],
    }


def test_every_group_and_pipeline_event_has_a_line_in_the_event_log() -> None:
    wholes = [data for data in one_of_each() if type(data).event_domain in ("group", "pipeline")]
    assert len(wholes) >= 8
    for data in wholes:
        assert view.event_summary(request(data, "grp")), type(data).__name__
