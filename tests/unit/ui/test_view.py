"""What the web view shows, from the release state and the release's events (ui/view.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from canaryflow.runtime import operators
from canaryflow.ui import view
from canaryflow_contracts import Envelope, EventData
from canaryflow_contracts.events import (
    AnalysisVerdict,
    ApplyPhase,
    HookCompleted,
    MetricCheck,
    OperatorCommandRefused,
    PauseRelease,
    PhaseReached,
    PlannedStep,
    PromoteNow,
    ReleaseRolledBack,
    RunHook,
    SetWeight,
    TargetRef,
    VerdictAction,
    VerdictResult,
    VersionSpec,
)
from canaryflow_contracts.policy import Hook, HookType, OperatorAction
from canaryflow_contracts.state import ReleaseStatus, Waiting
from tests.unit.support_state import sample_state

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
TARGET = TargetRef(namespace="shop", name="web")
STEP = PlannedStep(index=0, weight=10, hold_seconds=5)


def at(seconds: float, data: EventData, release_id: str = "rel-1") -> Envelope[Any]:
    envelope = Envelope.wrap(data, release_id=release_id, source="canaryflow/test")
    return envelope.model_copy(update={"time": T0 + timedelta(seconds=seconds)})


def comparison(canary: float, baseline: float, estimate: float) -> MetricCheck:
    return MetricCheck(
        metric="errors",
        track="canary",
        query="q",
        value=canary,
        threshold=20,
        comparison="<",
        sample_size=100,
        passed=True,
        method="msprt-rate",
        baseline_query="bq",
        baseline_value=baseline,
        baseline_sample_size=100,
        estimate=estimate,
        lower=estimate - 0.1,
        upper=estimate + 0.1,
    )


def guard(value: float) -> MetricCheck:
    return MetricCheck(
        metric="error-rate",
        track="canary",
        query="q",
        value=value,
        threshold=0.05,
        comparison="<=",
        sample_size=100,
        passed=value <= 0.05,
    )


def verdict(*checks: MetricCheck, result: VerdictResult = VerdictResult.PASS) -> AnalysisVerdict:
    return AnalysisVerdict(
        target=TARGET,
        step=STEP,
        result=result,
        action=VerdictAction.CONTINUE,
        final=False,
        reason="ok",
        checks=list(checks),
    )


def test_the_list_puts_releases_in_flight_first_and_filters_by_namespace_and_status() -> None:
    web = sample_state("web-1").model_copy(update={"created_at": T0})
    newer = sample_state("web-2").model_copy(
        update={"created_at": T0 + timedelta(seconds=5), "paused": True}
    )
    done = sample_state("web-0").model_copy(update={"status": ReleaseStatus.ROLLED_BACK})
    other = sample_state("api-1").model_copy(
        update={"target": TargetRef(namespace="pay", name="api")}
    )
    now = T0 + timedelta(seconds=90)

    every = view.release_list([web, done, newer, other], now)
    assert [r["id"] for r in every["in_flight"]] == ["web-2", "web-1", "api-1"]
    assert [r["id"] for r in every["recent"]] == ["web-0"]
    assert every["namespaces"] == ["pay", "shop"]
    assert every["in_flight"][1]["age_seconds"] == 90

    shop = view.release_list([web, done, newer, other], now, namespace="shop")
    assert {r["id"] for r in shop["in_flight"] + shop["recent"]} == {"web-0", "web-1", "web-2"}
    finished = view.release_list([web, done, newer, other], now, status=view.FINISHED)
    assert (finished["in_flight"], [r["id"] for r in finished["recent"]]) == ([], ["web-0"])
    paused = view.release_list([web, done, newer, other], now, status="paused")
    assert [r["id"] for r in paused["in_flight"]] == ["web-2"]
    rolled = view.release_list([web, done, newer, other], now, status="rolled_back")
    assert [r["id"] for r in rolled["recent"]] == ["web-0"]


def test_each_check_becomes_a_series_canary_beside_baseline_or_against_its_limit() -> None:
    events = [
        at(1, verdict(comparison(0.01, 0.012, -0.1), guard(0.01))),
        at(3, verdict(comparison(0.02, 0.011, 0.8), guard(0.2), result=VerdictResult.FAIL)),
    ]
    series = {s["metric"]: s for s in view.series(events)}

    errors = series["errors"]
    assert errors["kind"] == "comparison"
    assert [(p["canary"], p["baseline"]) for p in errors["points"]] == [
        (0.01, 0.012),
        (0.02, 0.011),
    ]
    assert [p["estimate"] for p in errors["points"]] == [-0.1, 0.8]
    assert errors["points"][1]["lower"] == 0.8 - 0.1
    assert [p["threshold"] for p in errors["points"]] == [None, None]  # e-value bar: not a limit
    rate = series["error-rate"]
    assert rate["kind"] == "guard"
    assert [(p["canary"], p["threshold"], p["passed"]) for p in rate["points"]] == [
        (0.01, 0.05, True),
        (0.2, 0.05, False),
    ]
    assert [p["t"] for p in rate["points"]] == [T0.timestamp() + 1, T0.timestamp() + 3]
    listed = view.verdicts(events)
    assert [(v["result"], len(v["checks"])) for v in listed] == [("pass", 2), ("fail", 2)]


def test_the_weight_over_time_follows_what_was_asked_and_what_was_in_place() -> None:
    version = VersionSpec(image="registry.local/shop/web:v2")
    second = PlannedStep(index=1, weight=30, hold_seconds=5)
    events = [
        at(0, ApplyPhase(target=TARGET, version=version, step=STEP, ready_deadline=T0)),
        at(2, PhaseReached(target=TARGET, step=STEP, canary_weight=9.5,
                           canary_ready=1, stable_ready=9)),
        at(4, SetWeight(actor="ops", weight=60)),
        at(5, ApplyPhase(target=TARGET, version=version, step=second, ready_deadline=T0)),
        at(9, ReleaseRolledBack(target=TARGET, summary="bad")),
    ]  # fmt: skip
    points = view.weight_points(events)
    assert [(p["planned"], p["serving"]) for p in points] == [
        (10, None),
        (10, 9.5),
        (30, 9.5),
        (0, 0),
    ]


def test_a_command_shows_its_refusal_matched_by_its_id_and_whether_it_was_signed() -> None:
    obeyed = at(1, PauseRelease(actor="ops@shop", reason="look"))
    refused = at(2, PromoteNow(actor="mallory", reason="ship"))
    refusal = at(
        3,
        OperatorCommandRefused(
            target=TARGET,
            action=OperatorAction.PROMOTE,
            actor="mallory",
            reason="ship",
            refusal="mallory may not promote releases of this target (spec.operators)",
        ),
    ).model_copy(update={"id": operators.refused_id("rel-1", refused.id)})
    signed = operators.sign(obeyed, Ed25519PrivateKey.generate())
    listed = view.commands([obeyed, refused, refusal], "rel-1")

    assert [(c["action"], c["actor"], c["refused"]) for c in listed] == [
        ("pause", "ops@shop", None),
        ("promote", "mallory", "mallory may not promote releases of this target (spec.operators)"),
    ]
    assert [c["signed"] for c in listed] == [False, False]
    assert [(c["signed"], c["refused"]) for c in view.commands([signed], "rel-1")] == [(True, None)]


def test_hooks_and_gates_show_their_state_and_the_gate_waited_on_offers_open_gate() -> None:
    check = Hook(name="smoke", type=HookType.PRE_ROLLOUT, url="http://hooks/smoke")
    gate = Hook(name="confirm", type=HookType.CONFIRM_PROMOTION)
    state = sample_state().model_copy(
        update={
            "hooks": [check, gate],
            "status": ReleaseStatus.WAITING,
            "waiting": Waiting(
                stage="promotion",
                step_index=0,
                queue=["confirm"],
                then=ReleaseStatus.PROMOTING,
                deadline=T0,
            ),
        }
    )
    version = VersionSpec(image="registry.local/shop/web:v2")
    events = [
        at(0, RunHook(target=TARGET, version=version, hook=check, step_index=0)),
        at(1, HookCompleted(target=TARGET, hook="smoke", step_index=0, ok=True, detail="200")),
    ]
    hooks = view.hooks(state, events)
    assert [(h["name"], h["state"], h["gate"]) for h in hooks] == [
        ("smoke", "passed", False),
        ("confirm", "waiting", True),
    ]
    assert view.actions_for(state) == ["pause", "abort", "promote", "set-weight", "open-gate"]
    assert view.actions_for(state.model_copy(update={"paused": True, "waiting": None})) == [
        "resume",
        "abort",
        "promote",
        "set-weight",
    ]
    assert view.actions_for(state.model_copy(update={"status": ReleaseStatus.SUCCEEDED})) == []
    assert view.actions_for(None) == []


def test_the_release_page_holds_everything_and_links_the_trace() -> None:
    state = sample_state()
    events = [at(1, verdict(guard(0.01))), at(2, PauseRelease(actor="ops@shop"))]
    page = view.release_page("rel-1", state, events, T0, "http://jaeger/trace/abc")
    assert page["trace"] == "http://jaeger/trace/abc"
    assert page["release"]["status"] == "applying"
    assert [e["type"] for e in page["events"]] == ["analysis.verdict", "operator.pause"]
    assert page["events"][1]["summary"] == "ops@shop asks to pause"
    assert [s["state"] for s in page["steps"]] == ["current"]
    nothing = view.release_page("rel-2", None, events, T0)
    assert (nothing["release"], nothing["actions"], nothing["steps"]) == (None, [], [])


def test_a_guard_measured_on_both_tracks_is_one_series_canary_beside_baseline() -> None:
    on_baseline = guard(0.02).model_copy(update={"track": "baseline"})
    events = [at(1, verdict(guard(0.01), on_baseline)), at(3, verdict(guard(0.2), on_baseline))]
    (rate,) = view.series(events)
    assert [(p["canary"], p["baseline"], p["threshold"]) for p in rate["points"]] == [
        (0.01, 0.02, 0.05),
        (0.2, 0.02, 0.05),
    ]
