"""How releases and verdicts read for a person."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from canaryflow.cli import render
from canaryflow_contracts import Envelope
from canaryflow_contracts.events import (
    AnalysisVerdict,
    CommandRefused,
    DeadLetter,
    MetricCheck,
    PlannedStep,
    RollbackCompleted,
    TargetRef,
    VerdictAction,
    VerdictResult,
)
from canaryflow_contracts.state import VerdictSummary
from tests.unit.support_state import sample_state

ERRORS = MetricCheck(
    metric="error-rate",
    track="canary",
    query='sum(rate(http_requests_total{code=~"5.."}[10s]))',
    value=0.2134,
    threshold=0.05,
    comparison="<=",
    sample_size=412,
    passed=False,
)


def test_a_failed_check_says_value_limit_and_sample() -> None:
    assert render.check_line(ERRORS) == (
        "error-rate (canary): 0.213 must be <= 0.05 — FAILED, 412 requests"
    )


def test_an_error_rate_guard_judged_against_chance_says_so() -> None:
    guard = ERRORS.model_copy(
        update={
            "method": "binomial-guard",
            "p_value": 4.1e-8,
            "decision": "above max beyond chance (p=4.1e-08 < 0.01)",
        }
    )
    unsettled = guard.model_copy(
        update={"value": 2 / 34, "sample_size": 34, "passed": None, "decision": "within chance"}
    )
    assert render.check_line(guard) == (
        "error-rate (canary): 0.213 must be <= 0.05 — FAILED, 412 requests: "
        "above max beyond chance (p=4.1e-08 < 0.01)"
    )
    assert render.check_line(unsettled) == (
        "error-rate (canary): 0.0588 must be <= 0.05 — not settled, 34 requests: within chance"
    )


def test_a_check_without_data_says_so() -> None:
    check = ERRORS.model_copy(update={"value": None, "passed": None, "sample_size": 3})
    assert render.check_line(check) == (
        "error-rate (canary): no data must be <= 0.05 — not judged, 3 requests"
    )


def test_status_shows_target_versions_step_weight_and_last_verdict() -> None:
    state = sample_state().model_copy(
        update={
            "canary_weight": 10.0,
            "last_verdict": VerdictSummary(
                step_index=0,
                result=VerdictResult.FAIL,
                final=True,
                reason="error-rate above its limit",
                checks=[ERRORS],
            ),
        }
    )
    lines = render.status_lines(state, state.updated_at + timedelta(seconds=30))
    text = "\n".join(lines)
    assert lines[0] == "rel-1  shop/web  applying"
    assert "stable registry.local/shop/web:v1 -> canary registry.local/shop/web:v2" in text
    assert "step 1 of 1: target weight 10%, canary serving 10%" in text
    assert "verdict: FAILED — error-rate above its limit" in text
    assert "0.213 must be <= 0.05" in text
    assert "last change 30s ago" in text


def test_watch_lines_for_a_verdict_and_a_rollback() -> None:
    step = PlannedStep(index=1, weight=30, hold_seconds=8)
    target = TargetRef(namespace="shop", name="web")
    verdict = Envelope.wrap(
        AnalysisVerdict(
            target=target,
            step=step,
            result=VerdictResult.FAIL,
            action=VerdictAction.ROLLBACK,
            final=True,
            reason="error-rate above its limit",
            checks=[ERRORS],
        ),
        release_id="rel-1",
        source="test",
        time=datetime(2026, 11, 27, 12, 0, 5, tzinfo=UTC),
    )
    lines = render.event_line(verdict)
    assert lines[0] == (
        "12:00:05  step 2 final verdict: FAILED — error-rate above its limit → rolling back"
    )
    assert lines[1].strip().startswith("error-rate (canary): 0.213")
    done = Envelope.wrap(
        RollbackCompleted(
            target=target, reason="analysis failed", stable_replicas=10, seconds_to_restore=1.234
        ),
        release_id="rel-1",
        source="test",
        time=datetime(2026, 11, 27, 12, 0, 7, tzinfo=UTC),
    )
    assert render.event_line(done) == [
        "12:00:07  rolled back: stable restored to 10 pods in 1.2s (analysis failed)"
    ]


def test_a_dead_letter_names_consumer_attempts_subject_and_error() -> None:
    letter = Envelope.wrap(
        DeadLetter(
            consumer="executor_apply",
            original_subject="canaryflow.phase.apply.v1.rel-1",
            deliveries=5,
            error="ApiException: (403) Forbidden",
            payload="{}",
        ),
        release_id="rel-1",
        source="canaryflow/executor",
        time=datetime(2026, 11, 27, 12, 1, 0, tzinfo=UTC),
    )
    assert render.event_line(letter) == [
        "12:01:00  dead letter from executor_apply after 5 attempt(s) on "
        "canaryflow.phase.apply.v1.rel-1: ApiException: (403) Forbidden"
    ]


def test_a_refused_command_names_what_who_and_why() -> None:
    refused = Envelope.wrap(
        CommandRefused(
            command="io.canaryflow.phase.apply.v1",
            command_id="c-1",
            source="mallory",
            reasons=["no release rel-1 is known: phase.apply is obeyed only for a live release"],
            checks=["unknown-release"],
        ),
        release_id="rel-1",
        source="canaryflow/executor",
        time=datetime(2026, 11, 27, 12, 2, 0, tzinfo=UTC),
    )
    assert render.event_line(refused) == [
        "12:02:00  REFUSED phase.apply.v1 from mallory: no release rel-1 is known: "
        "phase.apply is obeyed only for a live release"
    ]
