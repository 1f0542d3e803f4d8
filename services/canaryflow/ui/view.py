"""What the pages show, computed from the release state and the release's events: no I/O.

The web process reads the state (the planner's KV bucket) and replays a release's events from
the events stream; these functions turn them into the JSON the page draws, so what a person
sees (which release is in flight, which verdict said what, which command was refused) is
decided here, and unit-tested, not in the browser. The browser only lays it out and plots it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from canaryflow.runtime import operators
from canaryflow_contracts import Envelope
from canaryflow_contracts.events import (
    AnalysisVerdict,
    ApplyPhase,
    CommandRefused,
    GroupPlanned,
    GroupPromoteMember,
    GroupRejected,
    GroupRequested,
    GroupRolledBack,
    GroupStatusChanged,
    GroupSucceeded,
    HookCompleted,
    MetricCheck,
    OpenGate,
    OpenPipelineGate,
    OperatorCommand,
    OperatorCommandRefused,
    PhaseFailed,
    PhaseReached,
    PipelinePlanned,
    PipelineRequested,
    PipelineStatusChanged,
    PipelineStopped,
    PipelineSucceeded,
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
from canaryflow_contracts.state import (
    GroupMemberState,
    GroupState,
    GroupStatus,
    PipelineStage,
    PipelineState,
    PipelineStatus,
    ReleaseState,
    ReleaseStatus,
)

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
    if isinstance(data, OpenPipelineGate):
        why = f": {data.reason}" if data.reason else ""
        return f"{data.actor} asks to open the gate before {data.environment}{why}"
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
    if isinstance(data, GroupRequested):
        names = ", ".join(m.target.key() for m in data.members)
        return f"{data.requested_by} asks for a group of {len(data.members)}: {names}"
    if isinstance(data, GroupPromoteMember):
        return f"group {data.group}: every member passed, promote {data.target.key()}"
    if isinstance(data, GroupPlanned):
        return "planned: " + ", ".join(m.release_id for m in data.members)
    if isinstance(data, GroupStatusChanged):
        return f"{data.status.value.replace('_', ' ')}: {data.detail}"
    if isinstance(data, GroupSucceeded | GroupRolledBack | PipelineSucceeded):
        return data.summary
    if isinstance(data, GroupRejected):
        return "rejected: " + "; ".join(data.reasons)
    if isinstance(data, PipelineRequested):
        names = ", ".join(e.name for e in data.environments)
        return f"{data.requested_by} asks to move {data.version.image} through {names}"
    if isinstance(data, PipelinePlanned):
        return f"planned {data.version.image}: " + ", ".join(data.releases)
    if isinstance(data, PipelineStatusChanged):
        return f"{data.status.value.replace('_', ' ')}: {data.detail}"
    if isinstance(data, PipelineStopped):
        where = f"stopped at {data.environment}: " if data.environment else "rejected: "
        return where + "; ".join(data.reasons)
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
        "events": _events_json(events),
    }


# --------------------------------------------------------------------------- groups, pipelines
#
# A group or a pipeline is a few ordinary releases the planner starts in order (planner/groups,
# planner/pipelines); its state sits in the same bucket (``group.<id>``, ``pipeline.<id>``) and
# its own events on its id's subject. What a person sees of each member or environment is its
# own release state (its status, step, weight) beside what the group or pipeline asked of it.

Releases = Mapping[str, ReleaseState | None]


def _member_release(release: ReleaseState | None) -> Json | None:
    """What the list and the pages say of a member's release: status, step, weight."""
    if release is None:
        return None
    step = release.current_step
    return {
        "status": release.status.value,
        "paused": release.paused,
        "terminal": release.status.terminal,
        "step": f"{min(release.step_index, len(release.steps) - 1) + 1}/{len(release.steps)}",
        "weight": step.weight,
        "serving": round(release.canary_weight, 1),
        "outcome": release.outcome_reason,
        "waiting": list(release.waiting.queue) if release.waiting else [],
    }


GROUP_GATE = "canaryflow-group"  # the planner's gate a member waits at (planner.waiting)


def _at_group_gate(release: ReleaseState) -> bool:
    waiting = release.waiting
    return (
        release.status is ReleaseStatus.WAITING
        and waiting is not None
        and bool(waiting.queue)
        and waiting.queue[0] == GROUP_GATE
    )


def member_state(group: GroupState, member: GroupMemberState, release: ReleaseState | None) -> str:
    """One word for a member as the group sees it: not started, requested, running, waiting
    (at the group's gate), promoting, then its release's end (succeeded, rolled_back...)."""
    if member.outcome:
        return member.outcome
    if release is not None and release.status.terminal:
        return release.status.value
    if member.started_at is None:
        return "not started"
    if release is None:
        return "requested"
    if member.rollback_sent_at is not None or release.status is ReleaseStatus.ROLLING_BACK:
        return "rolling_back"
    if member.promote_sent_at is not None:
        return "promoting"
    if _at_group_gate(release):
        return "waiting"
    return "running"


def stage_state(pipeline: PipelineState, stage: PipelineStage, release: ReleaseState | None) -> str:
    """One word for an environment: not started, gate waiting, requested, running, or its
    release's end."""
    if stage.outcome:
        return stage.outcome
    if release is not None and release.status.terminal:
        return release.status.value
    if stage.started_at is None:
        waiting = pipeline.status is PipelineStatus.WAITING
        first = next((s for s in pipeline.stages if s.started_at is None), None)
        return "gate waiting" if waiting and first is stage else "not started"
    if release is None:
        return "requested"
    return release.status.value


def _members(group: GroupState, releases: Releases) -> list[Json]:
    found = []
    for index, member in enumerate(group.members):
        release = releases.get(member.release_id)
        found.append(
            {
                "index": index,
                "release_id": member.release_id,
                "namespace": member.target.namespace,
                "target": member.target.name,
                "image": member.version.image,
                "state": member_state(group, member, release),
                "release": _member_release(release),
                "started_at": member.started_at.isoformat() if member.started_at else None,
                "failed": member.release_id == group.failed_member,
            }
        )
    return found


def _stages(pipeline: PipelineState, releases: Releases) -> list[Json]:
    found = []
    for index, stage in enumerate(pipeline.stages):
        release = releases.get(stage.release_id)
        found.append(
            {
                "index": index,
                "name": stage.name,
                "namespace": stage.namespace,
                "release_id": stage.release_id,
                "gate": stage.gate,
                "gate_state": (
                    ""
                    if not stage.gate
                    else "opened"
                    if stage.gate_opened_at is not None
                    else "waiting"
                    if waiting_stage(pipeline) is stage
                    else "closed"
                ),
                "gate_opened_by": stage.gate_opened_by,
                "state": stage_state(pipeline, stage, release),
                "release": _member_release(release),
                "started_at": stage.started_at.isoformat() if stage.started_at else None,
                "stopped": stage.name == pipeline.stopped_at_stage,
            }
        )
    return found


def waiting_stage(pipeline: PipelineState) -> PipelineStage | None:
    """The environment whose gate the pipeline waits at (as ``pipelines.waiting_for``)."""
    if pipeline.status is not PipelineStatus.WAITING:
        return None
    return next((s for s in pipeline.stages if s.started_at is None), None)


def _age(created_at: datetime, now: datetime) -> int:
    return max(0, round((now - created_at).total_seconds()))


def member_ids(whole: GroupState | PipelineState) -> list[str]:
    """The release ids of a group's members or a pipeline's environments, in order."""
    if isinstance(whole, GroupState):
        return [member.release_id for member in whole.members]
    return [stage.release_id for stage in whole.stages]


def group_row(group: GroupState, releases: Releases, now: datetime) -> Json:
    """One line of the groups' list: its members with each one's state, status, age."""
    return {
        "id": group.group_id,
        "status": group.status.value,
        "terminal": group.status.terminal,
        "members": _members(group, releases),
        "requested_by": group.requested_by,
        "reason": group.reason,
        "age_seconds": _age(group.created_at, now),
        "created_at": group.created_at.isoformat(),
        "updated_at": group.updated_at.isoformat(),
        "outcome": group.outcome_reason,
    }


def pipeline_row(pipeline: PipelineState, releases: Releases, now: datetime) -> Json:
    """One line of the pipelines' list: its environments in order with their state."""
    waiting = waiting_stage(pipeline)
    return {
        "id": pipeline.pipeline_id,
        "target": pipeline.target,
        "image": pipeline.version.image,
        "status": pipeline.status.value,
        "terminal": pipeline.status.terminal,
        "environments": _stages(pipeline, releases),
        "waiting_gate": waiting.name if waiting else "",
        "requested_by": pipeline.requested_by,
        "reason": pipeline.reason,
        "age_seconds": _age(pipeline.created_at, now),
        "created_at": pipeline.created_at.isoformat(),
        "updated_at": pipeline.updated_at.isoformat(),
        "outcome": pipeline.outcome_reason,
    }


def _listed(rows: list[Json], parts: str, namespace: str, status: str) -> list[Json]:
    """The releases' filters, as they apply to groups or pipelines (``parts``: the rows' key
    for their members or environments), in flight first (newest first), then the recent
    finished. A namespace keeps a row when one of its parts is there; a status keeps it by its
    own status (in-flight, finished, or the same word; ``paused`` is a release's, keeps none)."""
    kept = []
    for row in rows:
        if namespace and namespace not in {part["namespace"] for part in row[parts]}:
            continue
        if status == IN_FLIGHT and row["terminal"]:
            continue
        if status == FINISHED and not row["terminal"]:
            continue
        if status not in ("", IN_FLIGHT, FINISHED) and row["status"] != status:
            continue
        kept.append(row)
    live = sorted((r for r in kept if not r["terminal"]), key=lambda r: r["created_at"])
    done = sorted((r for r in kept if r["terminal"]), key=lambda r: r["updated_at"])
    return live[::-1] + done[::-1][:RECENT_LIMIT]


def group_list(
    groups: Iterable[GroupState],
    releases: Releases,
    now: datetime,
    namespace: str = "",
    status: str = "",
) -> list[Json]:
    """The list page's groups, with each member's state."""
    rows = [group_row(group, releases, now) for group in groups]
    return _listed(rows, "members", namespace, status)


def pipeline_list(
    pipelines: Iterable[PipelineState],
    releases: Releases,
    now: datetime,
    namespace: str = "",
    status: str = "",
) -> list[Json]:
    """The list page's pipelines, with each environment's state."""
    rows = [pipeline_row(pipeline, releases, now) for pipeline in pipelines]
    return _listed(rows, "environments", namespace, status)


def _events_json(events: Sequence[Envelope[Any]]) -> list[Json]:
    return [
        {
            "id": envelope.id,
            "t": _time(envelope.time),
            "time": envelope.time.isoformat(),
            "type": _short_type(envelope),
            "source": envelope.source,
            "summary": event_summary(envelope),
        }
        for envelope in events
    ]


def _outcome(
    events: Sequence[Envelope[Any]], whole: GroupState | PipelineState | None
) -> Json | None:
    """How it ended, from its outcome event (the reason and, for a stopped pipeline, the
    failing environment's last verdict's checks), or from the state alone: the planner writes
    the state before it publishes the outcome, so a page may read the one before the other."""
    for envelope in reversed(events):
        data = envelope.data
        if isinstance(data, GroupSucceeded | PipelineSucceeded):
            return {"result": "succeeded", "summary": data.summary, "evidence": []}
        if isinstance(data, GroupRolledBack):
            return {
                "result": "rolled_back",
                "summary": data.summary,
                "failed_member": data.failed_member,
                "rolled_back_order": data.rolled_back_order,
                "evidence": [],
            }
        if isinstance(data, PipelineStopped):
            return {
                "result": "stopped" if data.environment else "rejected",
                "summary": "; ".join(data.reasons),
                "environment": data.environment,
                "release_id": data.release_id,
                "evidence": [_check_json(check) for check in data.evidence],
            }
        if isinstance(data, GroupRejected):
            return {"result": "rejected", "summary": "; ".join(data.reasons), "evidence": []}
    if whole is None:
        return None
    if whole.status.terminal:
        summary = whole.outcome_reason or (whole.history[-1].detail if whole.history else "")
        return {"result": whole.status.value, "summary": summary, "evidence": []}
    if whole.outcome_reason:  # a group rolling back: why, before it ended
        return {"result": "", "summary": whole.outcome_reason, "evidence": []}
    return None


def group_page(
    group_id: str,
    group: GroupState | None,
    releases: Releases,
    events: Sequence[Envelope[Any]],
    now: datetime,
    *,
    jaeger_link: str = "",
) -> Json:
    """Everything a group's page shows: its members in order (each linked to its release's
    page), the group's gate (which members wait at it), the outcome and the group's events."""
    row = group_row(group, releases, now) if group is not None else None
    return {
        "kind": "group",
        "id": group_id,
        "group": row,
        "members": row["members"] if row else [],
        "release_ids": member_ids(group) if group else [],
        "gate": {
            "waiting": [m["release_id"] for m in row["members"] if m["state"] == "waiting"],
            "promoting": group.status is GroupStatus.PROMOTING,
        }
        if row and group
        else None,
        "outcome": _outcome(events, group),
        "history": [entry.model_dump(mode="json") for entry in group.history] if group else [],
        "trace": jaeger_link,
        "events": _events_json(events),
    }


def pipeline_page(
    pipeline_id: str,
    pipeline: PipelineState | None,
    releases: Releases,
    events: Sequence[Envelope[Any]],
    now: datetime,
    *,
    jaeger_link: str = "",
) -> Json:
    """Everything a pipeline's page shows: its environments in order with their gates (closed,
    waiting, opened and by whom) and releases, the outcome with its evidence, its events."""
    row = pipeline_row(pipeline, releases, now) if pipeline is not None else None
    return {
        "kind": "pipeline",
        "id": pipeline_id,
        "pipeline": row,
        "environments": row["environments"] if row else [],
        "release_ids": member_ids(pipeline) if pipeline else [],
        "outcome": _outcome(events, pipeline),
        "history": [entry.model_dump(mode="json") for entry in pipeline.history]
        if pipeline
        else [],
        "trace": jaeger_link,
        "events": _events_json(events),
    }
