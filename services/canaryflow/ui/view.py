"""What the pages show, computed from the release state and the release's events: no I/O.

The web process reads the state (the planner's KV bucket) and replays a release's events from
the events stream; these functions turn them into the JSON the page draws, so what a person
sees (which release is in flight, which verdict said what, which command was refused) is
decided here, and unit-tested, not in the browser. The browser only lays it out and plots it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from canaryflow.runtime import operators
from canaryflow_contracts import Envelope
from canaryflow_contracts.events import (
    AnalysisVerdict,
    ApplyPhase,
    CommandRefused,
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
    ReleaseRolledBack,
    ReleaseStatusChanged,
    ReleaseSucceeded,
    RollbackCompleted,
    RollbackFailed,
    RollbackRequested,
    RunHook,
    SetWeight,
)
from canaryflow_contracts.state import ReleaseState, ReleaseStatus

Json = dict[str, Any]

IN_FLIGHT, FINISHED = "in-flight", "finished"
# The status filter's choices: every status, and the two groups.
STATUS_FILTERS = (IN_FLIGHT, FINISHED, *(status.value for status in ReleaseStatus))
RECENT_LIMIT = 50  # finished releases listed, newest first


def _time(moment: datetime) -> float:
    """Seconds since the epoch, what the charts' time axes take."""
    return moment.timestamp()


def release_row(state: ReleaseState, now: datetime) -> Json:
    """One line of the list: target, versions, step, weight, status, age."""
    step = state.current_step
    return {
        "id": state.release_id,
        "namespace": state.target.namespace,
        "target": state.target.name,
        "stable": state.stable_image,
        "canary": state.version.image,
        "step": f"{min(state.step_index, len(state.steps) - 1) + 1}/{len(state.steps)}",
        "weight": step.weight,
        "serving": round(state.canary_weight, 1),
        "status": state.status.value,
        "paused": state.paused,
        "terminal": state.status.terminal,
        "requested_by": state.requested_by,
        "age_seconds": max(0, round((now - state.created_at).total_seconds())),
        "created_at": state.created_at.isoformat(),
        "updated_at": state.updated_at.isoformat(),
        "outcome": state.outcome_reason,
    }


def matches(state: ReleaseState, namespace: str = "", status: str = "") -> bool:
    """Whether the list's filters keep ``state`` (an empty filter keeps everything)."""
    if namespace and state.target.namespace != namespace:
        return False
    if not status:
        return True
    if status == IN_FLIGHT:
        return not state.status.terminal
    if status == FINISHED:
        return state.status.terminal
    if status == "paused":
        return state.paused
    return state.status.value == status


def release_list(
    states: Iterable[ReleaseState], now: datetime, namespace: str = "", status: str = ""
) -> Json:
    """The list page: in flight first (newest first), then the most recent finished ones."""
    every = list(states)
    kept = [state for state in every if matches(state, namespace, status)]
    in_flight = sorted(
        (s for s in kept if not s.status.terminal), key=lambda s: s.created_at, reverse=True
    )
    recent = sorted(
        (s for s in kept if s.status.terminal), key=lambda s: s.updated_at, reverse=True
    )[:RECENT_LIMIT]
    return {
        "in_flight": [release_row(state, now) for state in in_flight],
        "recent": [release_row(state, now) for state in recent],
        "namespaces": sorted({state.target.namespace for state in every}),
        "statuses": list(STATUS_FILTERS),
        "filter": {"namespace": namespace, "status": status},
    }


# --------------------------------------------------------------------------- one release


def event_summary(envelope: Envelope[Any]) -> str:
    """One line about an event, for the page's event log."""
    data = envelope.data
    if isinstance(data, ApplyPhase):
        return f"apply step {data.step.index + 1}: canary at {data.step.weight} %"
    if isinstance(data, PhaseReached):
        return f"step {data.step.index + 1} in place: canary serving {data.canary_weight:.0f} %"
    if isinstance(data, PhaseFailed):
        return f"step {data.step.index + 1} not in place: {data.reason}"
    if isinstance(data, AnalysisVerdict):
        final = "final " if data.final else ""
        return f"{final}verdict {data.result.value} ({data.action.value}): {data.reason}"
    if isinstance(data, ReleaseStatusChanged):
        return f"{data.status.value}: {data.detail}"
    if isinstance(data, OperatorCommand):
        extra = f" to {data.weight} %" if isinstance(data, SetWeight) else ""
        extra += f" gate {data.gate}" if isinstance(data, OpenGate) else ""
        why = f": {data.reason}" if data.reason else ""
        return f"{data.actor} asks to {type(data).event_name.replace('_', ' ')}{extra}{why}"
    if isinstance(data, OperatorCommandRefused):
        return f"{data.action.value} by {data.actor} refused: {data.refusal}"
    if isinstance(data, ReleaseSucceeded | ReleaseRolledBack | ReleaseFailed):
        return data.summary
    if isinstance(data, ReleaseRejected):
        return "rejected: " + "; ".join(data.reasons)
    if isinstance(data, ReleasePlanned):
        weights = ", ".join(f"{step.weight} %" for step in data.steps)
        return f"planned under policy {data.policy}: steps {weights}"
    if isinstance(data, RollbackRequested | RollbackCompleted | RollbackFailed):
        return data.reason
    if isinstance(data, RunHook):
        return f"run {data.hook.type.value} {data.hook.name}"
    if isinstance(data, HookCompleted):
        return f"{data.hook} {'passed' if data.ok else 'failed'}" + (
            f": {data.detail}" if data.detail else ""
        )
    if isinstance(data, PromotionCompleted):
        return f"stable runs {data.image}"
    if isinstance(data, CommandRefused):
        return f"{data.command} refused: " + "; ".join(data.reasons)
    return ""


def _short_type(envelope: Envelope[Any]) -> str:
    return envelope.type.removeprefix("io.canaryflow.").rsplit(".v", 1)[0]


def weight_points(events: Sequence[Envelope[Any]]) -> list[Json]:
    """The canary's share over time: what the planner asked (``planned``) and what was in
    place (``serving``), a point per event that changed one of them."""
    points: list[Json] = []
    planned: float | None = None
    serving: float | None = None
    for envelope in events:
        data = envelope.data
        if isinstance(data, ApplyPhase):
            planned = data.step.weight
        elif isinstance(data, PhaseReached):
            planned, serving = data.step.weight, data.canary_weight
        elif isinstance(data, SetWeight):
            continue  # the planner's ApplyPhase that follows says it took it
        elif isinstance(data, PromotionCompleted | ReleaseSucceeded):
            planned = serving = 100
        elif isinstance(data, RollbackCompleted | ReleaseRolledBack):
            planned = serving = 0
        else:
            continue
        points.append({"t": _time(envelope.time), "planned": planned, "serving": serving})
    return points


def _check_json(check: MetricCheck) -> Json:
    return check.model_dump(mode="json")


def verdicts(events: Sequence[Envelope[Any]]) -> list[Json]:
    """Every verdict, oldest first, with its evidence."""
    found = []
    for envelope in events:
        data = envelope.data
        if isinstance(data, AnalysisVerdict):
            found.append(
                {
                    "id": envelope.id,
                    "t": _time(envelope.time),
                    "time": envelope.time.isoformat(),
                    "step": data.step.index,
                    "weight": data.step.weight,
                    "result": data.result.value,
                    "action": data.action.value,
                    "final": data.final,
                    "reason": data.reason,
                    "checks": [_check_json(check) for check in data.checks],
                }
            )
    return found


def series(events: Sequence[Envelope[Any]]) -> list[Json]:
    """Per metric (a comparison or a guard), its values over time, one point per verdict.

    A comparison (``method`` set, a baseline value) gives canary and baseline side by side and
    the estimated relative change with its interval (the lift of a business metric). A guard
    gives the canary's value against its limit, beside the same guard measured on the baseline
    (the verdict carries one check per track)."""
    by_metric: dict[str, Json] = {}
    for envelope in events:
        data = envelope.data
        if not isinstance(data, AnalysisVerdict):
            continue
        points: dict[str, Json] = {}
        for check in data.checks:
            if check.method == "alert":
                continue  # an alert is a fact, not a number over time
            comparison = check.baseline_query != "" or check.baseline_value is not None
            entry = by_metric.setdefault(
                check.metric,
                {
                    "metric": check.metric,
                    "method": check.method,
                    "kind": "comparison" if comparison else "guard",
                    "points": [],
                },
            )
            point = points.get(check.metric)
            if point is None:
                point = points[check.metric] = {
                    "t": _time(envelope.time),
                    "step": data.step.index,
                    "canary": None,
                    "baseline": None,
                    "threshold": None,
                    "estimate": None,
                    "lower": None,
                    "upper": None,
                    "statistic": None,
                    "passed": None,
                }
                entry["points"].append(point)
            if check.track != "canary":
                point["baseline"] = check.value
                continue
            point.update(
                canary=check.value,
                threshold=None if comparison else check.threshold,
                estimate=check.estimate,
                lower=check.lower,
                upper=check.upper,
                statistic=check.statistic,
                passed=check.passed,
            )
            if comparison:
                point["baseline"] = check.baseline_value
    return list(by_metric.values())


def commands(events: Sequence[Envelope[Any]], release_id: str) -> list[Json]:
    """Every operator command, with who, why, whether it was signed, and its refusal if any.

    A refusal's envelope id is derived from the command's (``operators.refused_id``), which is
    how a refusal is matched to its command even when the same person sent several."""
    refusals = {
        envelope.id: envelope.data
        for envelope in events
        if isinstance(envelope.data, OperatorCommandRefused)
    }
    found = []
    for envelope in events:
        data = envelope.data
        if not isinstance(data, OperatorCommand):
            continue
        refused = refusals.get(operators.refused_id(release_id, envelope.id))
        found.append(
            {
                "id": envelope.id,
                "t": _time(envelope.time),
                "time": envelope.time.isoformat(),
                "action": operators.action_of(data).value,
                "actor": data.actor,
                "reason": data.reason,
                "source": envelope.source,
                "signed": operators.KEY_EXTENSION in envelope.extensions,
                "weight": data.weight if isinstance(data, SetWeight) else None,
                "gate": data.gate if isinstance(data, OpenGate) else None,
                "refused": refused.refusal if refused is not None else None,
            }
        )
    return found


def hooks(state: ReleaseState | None, events: Sequence[Envelope[Any]]) -> list[Json]:
    """The policy's hooks and gates with their state: waiting (the release waits on it now),
    running, passed, failed, opened, or not reached."""
    results: dict[str, str] = {}
    details: dict[str, str] = {}
    for envelope in events:
        data = envelope.data
        if isinstance(data, RunHook):
            results[data.hook.name] = "running"
        elif isinstance(data, HookCompleted):
            results[data.hook] = "passed" if data.ok else "failed"
            details[data.hook] = data.detail
        elif isinstance(data, OpenGate):
            results.setdefault(data.gate, "asked to open")
    waiting_on = state.waiting.queue[0] if state is not None and state.waiting else None
    found = []
    for hook in state.hooks if state is not None else []:
        result = results.get(hook.name, "not reached")
        if hook.name == waiting_on:
            result = "waiting"
        elif hook.type.gate and result in ("running", "asked to open"):
            result = "opened" if result == "asked to open" else result
        found.append(
            {
                "name": hook.name,
                "type": hook.type.value,
                "gate": hook.type.gate,
                "state": result,
                "detail": details.get(hook.name, ""),
            }
        )
    return found


def _steps(state: ReleaseState) -> list[Json]:
    return [
        {
            "index": step.index,
            "weight": step.weight,
            "hold_seconds": step.hold_seconds,
            "state": "done"
            if step.index < state.step_index or state.status is ReleaseStatus.SUCCEEDED
            else "current"
            if step.index == state.step_index and not state.status.terminal
            else "next",
        }
        for step in state.steps
    ]


def actions_for(state: ReleaseState | None) -> list[str]:
    """The buttons that make sense for a release as it is now (the planner still decides).

    None for a finished release; resume only when paused, pause only when not; open-gate only
    while it waits on a gate."""
    if state is None or state.status.terminal:
        return []
    shown = ["resume" if state.paused else "pause", "abort", "promote", "set-weight"]
    if state.waiting is not None and state.waiting.queue:
        gates = {hook.name for hook in state.hooks if hook.type.gate}
        if state.waiting.queue[0] in gates:
            shown.append("open-gate")
    return shown


def release_page(
    release_id: str,
    state: ReleaseState | None,
    events: Sequence[Envelope[Any]],
    now: datetime,
    jaeger_link: str = "",
) -> Json:
    """Everything the release page shows. ``state`` may be None (the planner's record is gone
    or not written yet): the page then shows what the events tell."""
    return {
        "id": release_id,
        "release": release_row(state, now) if state is not None else None,
        "steps": _steps(state) if state is not None else [],
        "waiting": state.waiting.model_dump(mode="json")
        if state is not None and state.waiting
        else None,
        "history": [entry.model_dump(mode="json") for entry in state.history]
        if state is not None
        else [],
        "trace": jaeger_link,
        "weights": weight_points(events),
        "verdicts": verdicts(events),
        "series": series(events),
        "commands": commands(events, release_id),
        "hooks": hooks(state, events),
        "actions": actions_for(state),
        "events": [
            {
                "id": envelope.id,
                "t": _time(envelope.time),
                "time": envelope.time.isoformat(),
                "type": _short_type(envelope),
                "source": envelope.source,
                "summary": event_summary(envelope),
            }
            for envelope in events
        ],
    }
