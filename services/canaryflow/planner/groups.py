"""Release groups: several Deployments released as one unit, with no I/O.

Why it is built on releases and not inside them: each member is an ordinary release (its own
policy, canary, judgement, rollback, trust checks in the executor and the rollback service),
with one more gate before promotion (``waiting.GROUP_GATE``). The group only decides when a
member starts, when it leaves that gate, and when it is rolled back:

- members start one by one, in the order of the request (dependency order): the next starts
  once the previous one passed its canary and waits at the gate;
- when every member waits there, they are promoted one by one, in the same order;
- when any member fails (rolled back, failed, rejected), the started ones still in flight are
  rolled back one by one, the last started first, each once the one after it is back.

``advance`` is level-triggered: it reads the members' release states (not the events that
changed them), so a lost, late or duplicate event, a restart or the reconcile pass all lead
to the same decisions. Each command is decided once (its ``*_at`` field is written with the
state, compare-and-set) under a deterministic id; ``reissue`` sends again one that the
member never reacted to (a crash between the write and the publish).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum

import canaryflow.planner.waiting as waits
from canaryflow.planner.machine import SOURCE, Command
from canaryflow_contracts import Envelope
from canaryflow_contracts.events import (
    GroupMemberRef,
    GroupPlanned,
    GroupPromoteMember,
    GroupRejected,
    GroupRequested,
    GroupRolledBack,
    GroupStatusChanged,
    GroupSucceeded,
    GroupTransition,
    OpenPipelineGate,
    PipelineRequested,
    ReleaseFailed,
    ReleaseRejected,
    ReleaseRequested,
    ReleaseRolledBack,
    ReleaseStatusChanged,
    ReleaseSucceeded,
    RollbackRequested,
)
from canaryflow_contracts.identifiers import is_release_id
from canaryflow_contracts.state import (
    HISTORY_LIMIT,
    GroupMemberState,
    GroupState,
    GroupStatus,
    HistoryEntry,
    ReleaseState,
    ReleaseStatus,
)

# A member is the release '<group id>-m<i>' (i up to 10): the id must stay a release id.
MAX_GROUP_ID = 59
# A command the member has not reacted to after this long is sent again (same id).
REISSUE_SECONDS = 30.0


MemberEvent = (
    ReleaseStatusChanged | ReleaseSucceeded | ReleaseRolledBack | ReleaseFailed | ReleaseRejected
)
"""What may move a group: a member at the group's gate (a status change) or ended. Each only
makes the group read its members again (``advance``)."""

GroupEvent = GroupRequested | PipelineRequested | OpenPipelineGate | MemberEvent
"""Every event the planner handles for groups and pipelines (``group_app``, ``pipeline_app``),
besides ``DecidedEvent``."""


@dataclass(frozen=True)
class GroupDecision:
    state: GroupState | None  # None: nothing to write
    commands: list[Command] = field(default_factory=list)


class Kind(Enum):
    """Where a member's release is, as the group reads it."""

    UNKNOWN = "unknown"  # no release state (not started, or its request not yet admitted)
    RUNNING = "running"
    READY = "ready"  # at the group's gate
    ROLLING = "rolling"  # its own rollback is under way
    PROMOTED = "promoted"
    ENDED = "ended"  # rolled back, failed or rejected


def kind_of(release: ReleaseState | None) -> Kind:
    if release is None:
        return Kind.UNKNOWN
    status = release.status
    if status is ReleaseStatus.SUCCEEDED:
        return Kind.PROMOTED
    if status in (ReleaseStatus.ROLLED_BACK, ReleaseStatus.FAILED, ReleaseStatus.REJECTED):
        return Kind.ENDED
    if status is ReleaseStatus.ROLLING_BACK:
        return Kind.ROLLING
    return Kind.READY if waits.at_group_gate(release) else Kind.RUNNING


def member_id(group_id: str, index: int) -> str:
    """The release id of the member at ``index`` (from 0)."""
    return f"{group_id}-m{index + 1}"


# --------------------------------------------------------------------------- requests


def check(group_id: str, request: GroupRequested) -> list[str]:
    """Why the group cannot be planned as asked (nothing about the cluster: each member is
    checked against its policy by the planner's admission)."""
    reasons = []
    if len(group_id) > MAX_GROUP_ID or not is_release_id(member_id(group_id, 9)):
        reasons.append(f"group id {group_id!r} is longer than {MAX_GROUP_ID} characters")
    keys = [member.target.key() for member in request.members]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:
        reasons.append(f"a Deployment may be a member once: {', '.join(twice)}")
    return reasons


def plan(group_id: str, event: Envelope[GroupRequested], now: datetime) -> GroupDecision:
    """The new group (RUNNING, nothing started yet) and its planned event; ``advance`` starts
    the first member."""
    request = event.data
    state = GroupState(
        group_id=group_id,
        members=_members_of(group_id, request),
        status=GroupStatus.RUNNING,
        requested_by=request.requested_by,
        reason=request.reason,
        request_id=event.id,
        created_at=now,
        updated_at=now,
        history=[HistoryEntry(time=now, event="requested", detail=request.reason)],
    )
    planned = GroupPlanned(members=_refs(state), request_id=event.id)
    return GroupDecision(state, [Command(planned, f"{group_id}.planned", group_id)])


def _members_of(group_id: str, request: GroupRequested) -> list[GroupMemberState]:
    return [
        GroupMemberState(release_id=member_id(group_id, i), target=m.target, version=m.version)
        for i, m in enumerate(request.members)
    ]


def reject(
    group_id: str, event: Envelope[GroupRequested], reasons: list[str], now: datetime
) -> GroupDecision:
    """A group that will not run: stored as REJECTED (its id stays used), and announced."""
    request = event.data
    state = GroupState(
        group_id=group_id,
        members=_members_of(group_id, request),
        status=GroupStatus.REJECTED,
        requested_by=request.requested_by,
        reason=request.reason,
        request_id=event.id,
        outcome_reason="; ".join(reasons),
        created_at=now,
        updated_at=now,
        history=[HistoryEntry(time=now, event="rejected", detail=r) for r in reasons],
    )
    rejected = GroupRejected(reasons=reasons, request_id=event.id)
    return GroupDecision(state, [Command(rejected, f"{group_id}.rejected", group_id)])


def listed(group: GroupState | None, release_id: str, request: ReleaseRequested) -> str | None:
    """Why a member request naming ``group`` may not be admitted; None when it may."""
    if group is None:
        return f"group {request.group} does not exist"
    member = next((m for m in group.members if m.release_id == release_id), None)
    if member is None:
        return f"release {release_id} is not a member of group {group.group_id}"
    if member.target != request.target or member.version != request.version:
        return f"release {release_id} differs from the member group {group.group_id} lists"
    if member.started_at is None or group.status is not GroupStatus.RUNNING:
        return f"group {group.group_id} did not start member {release_id}"
    return None


# --------------------------------------------------------------------------- transitions


def advance(
    group: GroupState, releases: Mapping[str, ReleaseState | None], now: datetime
) -> GroupDecision:
    """Every transition the members' states call for, and the commands they publish."""
    if group.status.terminal:
        return GroupDecision(None)
    state = group
    commands: list[Command] = []
    # Each step changes one member or the status; bounded so a bug cannot loop forever.
    for _ in range(4 * len(group.members) + 4):
        stepped = _step(state, releases, now)
        if stepped is None:
            break
        state, more = stepped
        commands += more
    if state == group:
        return GroupDecision(None)
    return GroupDecision(state.model_copy(update={"updated_at": now}), commands)


Step = tuple[GroupState, list[Command]]


def _step(
    group: GroupState, releases: Mapping[str, ReleaseState | None], now: datetime
) -> Step | None:
    kinds = [kind_of(releases.get(m.release_id)) for m in group.members]
    if group.status in (GroupStatus.RUNNING, GroupStatus.PROMOTING):
        for member, kind in zip(group.members, kinds, strict=True):
            if kind in (Kind.ENDED, Kind.ROLLING):
                release = releases.get(member.release_id)
                assert release is not None
                return _failed(group, member, release, now)
    if group.status is GroupStatus.RUNNING:
        return _running(group, kinds, now)
    if group.status is GroupStatus.PROMOTING:
        return _promoting(group, kinds, now)
    if group.status is GroupStatus.ROLLING_BACK:
        return _rolling_back(group, kinds, releases, now)
    return None


def _running(group: GroupState, kinds: list[Kind], now: datetime) -> Step | None:
    for index, (member, kind) in enumerate(zip(group.members, kinds, strict=True)):
        if member.started_at is None:
            started = _member(group, index, started_at=now)
            detail = f"member {index + 1} of {len(group.members)} started: {member.target.key()}"
            return _log(started, now, "member-started", detail), [
                start_command(group, index),
                _status(group, index, GroupTransition.MEMBER_STARTED, detail),
            ]
        if kind is not Kind.READY:
            return None  # the members after it wait for it
        if member.ready_at is None:
            ready = _member(group, index, ready_at=now)
            detail = f"{member.release_id} passed its canary and waits for the group"
            return _log(ready, now, "member-waiting", detail), [
                _status(group, index, GroupTransition.MEMBER_WAITING, detail)
            ]
    detail = f"every member passed: promoting {len(group.members)} member(s) in order"
    promoting = _log(group, now, "promoting", detail).model_copy(
        update={"status": GroupStatus.PROMOTING}
    )
    return promoting, [_status(group, 0, GroupTransition.PROMOTING, detail)]


def _promoting(group: GroupState, kinds: list[Kind], now: datetime) -> Step | None:
    for index, (member, kind) in enumerate(zip(group.members, kinds, strict=True)):
        if kind is Kind.PROMOTED:
            if not member.outcome:
                done = _member(group, index, outcome=ReleaseStatus.SUCCEEDED.value)
                detail = f"{member.release_id} promoted"
                return _log(done, now, "member-promoted", detail), [
                    _status(group, index, GroupTransition.MEMBER_PROMOTED, detail)
                ]
            continue
        if member.promote_sent_at is None:
            sent = _member(group, index, promote_sent_at=now)
            return sent, [promote_command(group, index)]
        return None  # the next member is promoted once this one is
    summary = f"{len(group.members)} member(s) promoted in order: " + ", ".join(
        m.target.key() for m in group.members
    )
    succeeded = _log(group, now, "succeeded", summary).model_copy(
        update={"status": GroupStatus.SUCCEEDED}
    )
    outcome = GroupSucceeded(summary=summary, members=_refs(group))
    return succeeded, [Command(outcome, f"{group.group_id}.succeeded", group.group_id)]


def _failed(
    group: GroupState, member: GroupMemberState, release: ReleaseState, now: datetime
) -> Step:
    why = release.outcome_reason or release.status.value
    reason = f"member {member.release_id} ({member.target.key()}) {release.status.value}: {why}"
    rolling = _log(group, now, "rolling-back", reason).model_copy(
        update={
            "status": GroupStatus.ROLLING_BACK,
            "failed_member": member.release_id,
            "outcome_reason": reason,
        }
    )
    index = group.members.index(member)
    return rolling, [_status(group, index, GroupTransition.ROLLING_BACK, reason)]


def _rolling_back(
    group: GroupState,
    kinds: list[Kind],
    releases: Mapping[str, ReleaseState | None],
    now: datetime,
) -> Step | None:
    started = [i for i, m in enumerate(group.members) if m.started_at is not None]
    for index in reversed(started):
        member, kind = group.members[index], kinds[index]
        if member.outcome:
            continue
        if kind in (Kind.ENDED, Kind.PROMOTED):
            release = releases.get(member.release_id)
            assert release is not None
            status = release.status
            order = group.rolled_back_order
            if status is ReleaseStatus.ROLLED_BACK:
                order = [*order, member.release_id]
            ended = _member(group, index, outcome=status.value).model_copy(
                update={"rolled_back_order": order}
            )
            detail = f"{member.release_id} {status.value}"
            transition = (
                GroupTransition.MEMBER_ROLLED_BACK
                if status is ReleaseStatus.ROLLED_BACK
                else GroupTransition.ROLLING_BACK
            )
            return _log(ended, now, "member-ended", detail), [
                _status(group, index, transition, detail, "ended")
            ]
        if kind in (Kind.RUNNING, Kind.READY) and member.rollback_sent_at is None:
            sent = _member(group, index, rollback_sent_at=now)
            return sent, [rollback_command(group, index)]
        return None  # in flight (or its request not admitted yet): the earlier ones wait
    summary = f"rolled back: {group.outcome_reason}; order: " + (
        ", ".join(group.rolled_back_order) or "none"
    )
    ended = _log(group, now, "rolled-back", summary).model_copy(
        update={"status": GroupStatus.ROLLED_BACK}
    )
    outcome = GroupRolledBack(
        summary=summary,
        members=_refs(group),
        failed_member=group.failed_member,
        reason=group.outcome_reason,
        rolled_back_order=group.rolled_back_order,
    )
    return ended, [Command(outcome, f"{group.group_id}.rolled-back", group.group_id)]


def reissue(
    group: GroupState, releases: Mapping[str, ReleaseState | None], now: datetime
) -> list[Command]:
    """Commands decided earlier that their member never reacted to: sent again, same ids."""
    if group.status.terminal:
        return []
    late = now - timedelta(seconds=REISSUE_SECONDS)
    again = []
    for index, member in enumerate(group.members):
        kind = kind_of(releases.get(member.release_id))
        if member.started_at is not None and member.started_at < late and kind is Kind.UNKNOWN:
            again.append(start_command(group, index))
        sent = member.promote_sent_at
        if sent is not None and sent < late and kind is Kind.READY:
            again.append(promote_command(group, index))
        sent = member.rollback_sent_at
        if sent is not None and sent < late and kind in (Kind.RUNNING, Kind.READY):
            again.append(rollback_command(group, index))
    return again


# --------------------------------------------------------------------------- commands


def start_command(group: GroupState, index: int) -> Command:
    """The member's release request, exactly the version the group was asked for."""
    member = group.members[index]
    why = f"group {group.group_id}, member {index + 1} of {len(group.members)}"
    request = ReleaseRequested(
        target=member.target,
        version=member.version,
        requested_by=group.requested_by,
        reason=f"{why}: {group.reason}" if group.reason else why,
        group=group.group_id,
    )
    return Command(request, f"{group.group_id}.start.{index + 1}", member.release_id)


def promote_command(group: GroupState, index: int) -> Command:
    member = group.members[index]
    promote = GroupPromoteMember(group=group.group_id, target=member.target)
    return Command(promote, f"{group.group_id}.promote.{index + 1}", member.release_id)


def rollback_command(group: GroupState, index: int) -> Command:
    member = group.members[index]
    rollback = RollbackRequested(
        target=member.target,
        reason=f"group {group.group_id}: {group.outcome_reason}",
        requested_by=SOURCE,
    )
    return Command(rollback, f"{group.group_id}.rollback.{index + 1}", member.release_id)


def _status(
    group: GroupState, index: int, status: GroupTransition, detail: str, key: str = ""
) -> Command:
    member = group.members[index]
    changed = GroupStatusChanged(
        status=status, member=member.release_id, target=member.target, detail=detail
    )
    event_id = f"{group.group_id}.{key or status.value}.{index + 1}"
    return Command(changed, event_id, group.group_id)


def _refs(group: GroupState) -> list[GroupMemberRef]:
    return [GroupMemberRef(release_id=m.release_id, target=m.target) for m in group.members]


def _member(group: GroupState, index: int, **update: object) -> GroupState:
    members = list(group.members)
    members[index] = members[index].model_copy(update=update)
    return group.model_copy(update={"members": members})


def _log(group: GroupState, now: datetime, event: str, detail: str) -> GroupState:
    entry = HistoryEntry(time=now, event=event, detail=detail, actor=SOURCE)
    return group.model_copy(update={"history": [*group.history, entry][-HISTORY_LIMIT:]})
