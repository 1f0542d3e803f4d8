"""Words for people: how releases, verdicts and events read in the terminal.

Pure functions, so the wording is unit-tested and the same in ``status``, ``watch`` and the demo.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from canaryflow_contracts import Envelope
from canaryflow_contracts.events import (
    BINOMIAL_GUARD,
    AnalysisVerdict,
    ApplyPhase,
    CommandRefused,
    DeadLetter,
    HookCompleted,
    MetricCheck,
    OpenGate,
    OperatorCommand,
    OperatorCommandRefused,
    PhaseFailed,
    PhaseReached,
    PromotionCompleted,
    ReleaseFailed,
    ReleasePlanned,
    ReleaseRejected,
    ReleaseRequested,
    ReleaseRolledBack,
    ReleaseStatusChanged,
    ReleaseSucceeded,
    RequestAnalysis,
    RequestPromotion,
    RollbackCompleted,
    RollbackFailed,
    RollbackRequested,
    RunHook,
    SetWeight,
    VerdictAction,
    VerdictResult,
)
from canaryflow_contracts.state import GroupState, PipelineState, ReleaseState

_RESULT_WORDS = {
    VerdictResult.PASS: "passed",
    VerdictResult.FAIL: "FAILED",
    VerdictResult.INSUFFICIENT_DATA: "not enough data",
    VerdictResult.INCONCLUSIVE: "inconclusive",
}


def _number(value: float | None) -> str:
    if value is None:
        return "no data"
    if value == 0 or 0.001 <= abs(value) < 10000:
        return f"{value:.3g}"
    return f"{value:.2e}"


_ACTION_WORDS = {
    VerdictAction.CONTINUE: "",
    VerdictAction.EXTEND: " → the hold is extended",
    VerdictAction.PAUSE: " → paused for a person's decision",
    VerdictAction.ROLLBACK: " → rolling back",
}


def _percent(value: float | None) -> str:
    return "no data" if value is None else f"{100 * value:.3g} %"


def _change(value: float | None) -> str:
    return "unbounded" if value is None else f"{100 * value:+.3g} %"


def comparison_line(check: MetricCheck) -> str:
    """A canary-against-baseline check in words, e.g.

    ``conversion: canary 3.5 % vs baseline 5 % (lift -30 %, interval -42 % to -16 %) on
    1200/1100 visits; evidence 2.1e+03 against "no worse", threshold 100 — FAILED``.
    """
    outcome = {None: "not settled", True: "ok", False: "FAILED"}[check.passed]
    if check.method == "alert":
        return f"{check.metric}: {check.decision} — {outcome}"
    what = "slower than the worst bucket" if check.method == "msprt-histogram" else ""
    lift = "lift" if check.method == "msprt-business" else "change"
    against = '"no change"' if check.method == "msprt-business" else '"no worse"'
    interval = (
        f", interval {_change(check.lower)} to {_change(check.upper)}"
        if check.lower is not None or check.upper is not None
        else ""
    )
    estimate = (
        f" ({lift} {_change(check.estimate)}{interval})" if check.estimate is not None else ""
    )
    return (
        f"{check.metric}: canary {_percent(check.value)} vs baseline "
        f"{_percent(check.baseline_value)}{' ' + what if what else ''}{estimate} on "
        f"{check.sample_size:.0f}/{(check.baseline_sample_size or 0):.0f} canary/baseline; "
        f"evidence {_number(check.statistic)} against {against}, threshold "
        f"{_number(check.threshold)} — {outcome}: {check.decision}"
    )


def check_line(check: MetricCheck) -> str:
    """E.g. ``error-rate (canary): 0.21 must be <= 0.05 — FAILED, 412 requests``."""
    if check.method and check.method != BINOMIAL_GUARD:
        return comparison_line(check)
    if check.method == BINOMIAL_GUARD:  # above max: failed, or not settled by chance yet
        outcome = "FAILED" if check.passed is False else "not settled"
        return (
            f"{check.metric} ({check.track}): {_number(check.value)} must be <= "
            f"{_number(check.threshold)} — {outcome}, {check.sample_size:.0f} requests: "
            f"{check.decision}"
        )
    outcome = {None: "not judged", True: "ok", False: "FAILED"}[check.passed]
    limit = (
        f" must be {check.comparison} {_number(check.threshold)}"
        if check.threshold is not None and check.comparison != "n/a"
        else ""
    )
    return (
        f"{check.metric} ({check.track}): {_number(check.value)}{limit} — {outcome}, "
        f"{check.sample_size:.0f} requests"
    )


def verdict_lines(
    result: VerdictResult,
    reason: str,
    checks: list[MetricCheck],
    action: VerdictAction | None = None,
) -> list[str]:
    then = _ACTION_WORDS.get(action, "") if action is not None else ""
    return [f"verdict: {_RESULT_WORDS[result]} — {reason}{then}"] + [
        f"  {check_line(check)}" for check in checks
    ]


def _ago(moment: datetime, now: datetime) -> str:
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 120:
        return f"{seconds}s ago"
    return f"{seconds // 60}m ago"


DEFAULT_JAEGER_UI = "http://127.0.0.1:16686"
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def trace_link(traceparent: str, jaeger_ui: str = DEFAULT_JAEGER_UI) -> str:
    """The Jaeger page of the trace a W3C ``traceparent`` belongs to ("" if it is not one)."""
    match = _TRACEPARENT.match(traceparent.strip().lower())
    if match is None or set(match.group(1)) == {"0"}:
        return ""
    return f"{jaeger_ui.rstrip('/')}/trace/{match.group(1)}"


def status_lines(state: ReleaseState, now: datetime, jaeger_ui: str = "") -> list[str]:
    """Everything a person asks about a release in flight, in a few lines."""
    step = state.current_step
    status = state.status.value + (" (paused)" if state.paused else "")
    lines = [
        f"{state.release_id}  {state.target.key()}  {status}",
        f"  versions: stable {state.stable_image or '?'} -> canary {state.version.image}",
        f"  step {step.index + 1} of {len(state.steps)}: target weight {step.weight}%, "
        f"canary serving {state.canary_weight:.0f}%",
        f"  requested by {state.requested_by}, {_ago(state.created_at, now)}; "
        f"last change {_ago(state.updated_at, now)}",
    ]
    if state.last_verdict is not None:
        verdict = state.last_verdict
        lines += [
            "  " + line
            for line in verdict_lines(
                verdict.result, verdict.reason, verdict.checks, verdict.action
            )
        ]
    if state.waiting is not None and state.waiting.queue:
        until = state.waiting.deadline.strftime("%H:%M:%S")
        lines.append(
            f"  waiting ({state.waiting.stage}) for {', '.join(state.waiting.queue)}; "
            f"the current one until {until} UTC"
        )
    lines += operator_lines(state, now)
    if state.outcome_reason:
        lines.append(f"  outcome: {state.outcome_reason}")
    if jaeger_ui and (link := trace_link(state.trace_parent, jaeger_ui)):
        lines.append(f"  trace: {link}")
    return lines


def group_lines(
    group: GroupState, members: dict[str, ReleaseState | None], now: datetime, jaeger_ui: str = ""
) -> list[str]:
    """A release group and each member's release, in dependency order."""
    lines = [
        f"group {group.group_id}  {group.status.value}  ({len(group.members)} members)",
        f"  requested by {group.requested_by}, {_ago(group.created_at, now)}; "
        f"last change {_ago(group.updated_at, now)}",
    ]
    for index, member in enumerate(group.members, start=1):
        release = members.get(member.release_id)
        where = (
            release.status.value + (f" step {release.step_index + 1}/{len(release.steps)}")
            if release is not None
            else ("requested" if member.started_at is not None else "not started")
        )
        lines.append(
            f"  {index}. {member.release_id}  {member.target.key()}  "
            f"{member.version.image}  {where}"
        )
    if group.outcome_reason:
        lines.append(f"  outcome: {group.outcome_reason}")
    if group.rolled_back_order:
        lines.append(f"  rolled back in order: {', '.join(group.rolled_back_order)}")
    if jaeger_ui and (link := trace_link(group.trace_parent, jaeger_ui)):
        lines.append(f"  trace: {link}")
    return lines


def pipeline_lines(
    pipeline: PipelineState,
    releases: dict[str, ReleaseState | None],
    now: datetime,
    jaeger_ui: str = "",
) -> list[str]:
    """A pipeline, its one version, and where each environment is."""
    lines = [
        f"pipeline {pipeline.pipeline_id}  {pipeline.target}  {pipeline.status.value}",
        f"  version: {pipeline.version.image}",
        f"  requested by {pipeline.requested_by}, {_ago(pipeline.created_at, now)}; "
        f"last change {_ago(pipeline.updated_at, now)}",
    ]
    for stage in pipeline.stages:
        release = releases.get(stage.release_id)
        if release is not None:
            where = release.status.value
        elif stage.started_at is not None:
            where = "requested"
        elif stage.gate and stage.gate_opened_at is None:
            where = "behind a gate"
        else:
            where = "not started"
        opened = f" (gate opened by {stage.gate_opened_by})" if stage.gate_opened_by else ""
        lines.append(f"  {stage.name}: {stage.namespace}  {stage.release_id}  {where}{opened}")
    if pipeline.outcome_reason:
        lines.append(f"  outcome: {pipeline.outcome_reason}")
    if jaeger_ui and (link := trace_link(pipeline.trace_parent, jaeger_ui)):
        lines.append(f"  trace: {link}")
    return lines


# History entries that record what a person did (or tried to do) to the release.
OPERATOR_EVENTS = {
    "paused": "paused",
    "resumed": "resumed",
    "aborted": "aborted",
    "promote-now": "promoted now",
    "weight-set": "set the weight",
    "gate-opened": "opened a gate",
    "refused": "REFUSED",
}


def operator_lines(state: ReleaseState, now: datetime, last: int = 3) -> list[str]:
    """The last few things people did to the release: who, what, why, when."""
    entries = [h for h in state.history if h.event in OPERATOR_EVENTS][-last:]
    lines = []
    for entry in entries:
        what = OPERATOR_EVENTS[entry.event]
        detail = f": {entry.detail}" if entry.detail else ""
        lines.append(f"  operator: {entry.actor or '?'} {what}{detail} ({_ago(entry.time, now)})")
    return lines


def _operator_command(data: OperatorCommand) -> str:
    asked = type(data).event_name.replace("_", " ")
    if isinstance(data, SetWeight):
        asked = f"set weight to {data.weight}%"
    if isinstance(data, OpenGate):
        asked = f"open gate {data.gate}"
    return f"{data.actor} asks: {asked}" + (f" ({data.reason})" if data.reason else "")


def event_line(envelope: Envelope[Any]) -> list[str]:
    """One event of a release as ``watch`` prints it."""
    data = envelope.data
    stamp = envelope.time.strftime("%H:%M:%S")
    match data:
        case ReleasePlanned():
            steps = ", ".join(f"{s.weight}% for {s.hold_seconds:g}s" for s in data.steps)
            head = f"planned with policy {data.policy}: {steps}"
        case ReleaseRejected():
            head = "REJECTED: " + "; ".join(data.reasons)
        case PhaseReached():
            head = (
                f"step {data.step.index + 1} in place: canary serves {data.canary_weight:.0f}% "
                f"({data.canary_ready} canary / {data.baseline_ready} baseline / "
                f"{data.stable_ready} stable pods Ready)"
            )
        case PhaseFailed():
            head = f"step {data.step.index + 1} could not be put in place: {data.reason}"
        case AnalysisVerdict():
            lines = verdict_lines(data.result, data.reason, data.checks, data.action)
            kind = "final " if data.final else ""
            return [f"{stamp}  step {data.step.index + 1} {kind}{lines[0]}", *lines[1:]]
        case ReleaseRequested():
            head = f"requested by {data.requested_by}: {data.version.image}"
        case ApplyPhase():
            head = f"executor: putting step {data.step.index + 1} ({data.step.weight}%) in place"
        case RequestAnalysis():
            head = (
                f"metrics-watcher: judging step {data.step.index + 1} for "
                f"{data.step.hold_seconds:g}s ({data.canary_version} vs {data.stable_version})"
            )
        case RequestPromotion():
            head = f"executor: promoting {data.version.image} to stable"
        case PromotionCompleted():
            head = f"promoted: stable runs {data.image}"
        case RollbackRequested():
            head = f"rollback requested by {data.requested_by}: {data.reason}"
        case RollbackCompleted():
            head = (
                f"rolled back: stable restored to {data.stable_replicas} pods in "
                f"{data.seconds_to_restore:.1f}s ({data.reason})"
            )
        case RollbackFailed():
            head = (
                f"rollback {'gave up' if data.final else 'failed'} after {data.attempts} "
                f"attempt(s): {data.reason}"
            )
        case ReleaseFailed():
            left = "; ".join(data.leftovers) or "nothing found"
            head = f"FAILED: {data.summary}. Left to clean up: {left}"
        case ReleaseSucceeded() | ReleaseRolledBack():
            head = f"{envelope.type.split('.')[-2].upper().replace('_', ' ')}: {data.summary}"
        case DeadLetter():
            head = (
                f"dead letter from {data.consumer} after {data.deliveries} attempt(s) on "
                f"{data.original_subject}: {data.error}"
            )
        case ReleaseStatusChanged():
            head = f"{data.status}: {data.detail}"
        case OperatorCommand():
            head = _operator_command(data)
        case OperatorCommandRefused():
            head = f"REFUSED {data.action} by {data.actor}: {data.refusal}"
        case CommandRefused():
            command = data.command.removeprefix("io.canaryflow.")
            head = f"REFUSED {command} from {data.source}: " + "; ".join(data.reasons)
        case RunHook():
            where = data.hook.url or "the bus"
            head = f"{data.hook.type.value} hook {data.hook.name}: called ({where})"
        case HookCompleted():
            outcome = "passed" if data.ok else "FAILED"
            head = f"hook {data.hook} {outcome}" + (f": {data.detail}" if data.detail else "")
        case _:
            head = envelope.type.removeprefix("io.canaryflow.")
    return [f"{stamp}  {head}"]
