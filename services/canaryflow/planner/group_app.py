"""Release groups (and pipelines' member events) as part of the planner service: requests
in, group state written with compare-and-set, member commands out.

The handlers only translate. A group request is checked (``groups.check``, and each member
against its policy as a release would be), stored, and advanced. Every outcome or status
change of a release that is a group's member advances that group: ``groups.advance`` reads
the members' states, not the event, so any of them (or the reconcile pass) does the same.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection
from datetime import datetime
from typing import Any, Protocol

from canaryflow.planner import groups
from canaryflow.planner.groups import GroupDecision
from canaryflow.planner.machine import Command
from canaryflow.planner.planning import Refusal
from canaryflow.planner.validation import ClusterReader, validate
from canaryflow.runtime import tracing
from canaryflow.runtime.bus import Delivery
from canaryflow.runtime.ports import Publisher
from canaryflow.runtime.service import Route
from canaryflow.runtime.store import StaleWrite, Versioned, VersionedGroup
from canaryflow_contracts import Envelope, EventData
from canaryflow_contracts.events import (
    GroupRequested,
    ReleaseFailed,
    ReleaseRejected,
    ReleaseRequested,
    ReleaseRolledBack,
    ReleaseStatusChanged,
    ReleaseSucceeded,
    TargetRef,
)
from canaryflow_contracts.state import GroupState, ReleaseState

CAS_ATTEMPTS = 10

log = logging.getLogger(__name__)


class GroupStore(Protocol):
    async def get(self, release_id: str) -> Versioned | None: ...
    async def holder_of(self, target: TargetRef) -> str | None: ...
    async def get_group(self, group_id: str) -> VersionedGroup | None: ...
    async def create_group(self, state: GroupState) -> int: ...
    async def update_group(self, state: GroupState, revision: int) -> int: ...
    async def all_groups(self) -> list[VersionedGroup]: ...


# The member events that may move a group: a member at its gate (a status change), or ended.
MEMBER_EVENTS: tuple[tuple[type[EventData], str], ...] = (
    (ReleaseStatusChanged, "group-member-status"),
    (ReleaseSucceeded, "group-member-succeeded"),
    (ReleaseRolledBack, "group-member-rolled-back"),
    (ReleaseFailed, "group-member-failed"),
    (ReleaseRejected, "group-member-rejected"),
)


class GroupCoordinator:
    def __init__(
        self,
        store: Callable[[], GroupStore],
        publisher: Publisher,
        cluster: ClusterReader,
        clock: Callable[[], datetime],
        *,
        routers: Collection[str],
        pipelines: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._pipelines = pipelines  # advances the pipeline a release is an environment of
        self._store = store
        self._publisher = publisher
        self._cluster = cluster
        self._clock = clock
        self._routers = routers

    def routes(self) -> tuple[Route[Any], ...]:
        requested: tuple[Route[Any], ...] = (
            Route(GroupRequested, "group-requested", self.on_request),
        )
        followed = tuple(Route(event, name, self.on_member_event) for event, name in MEMBER_EVENTS)
        return requested + followed

    async def on_request(
        self, event: Envelope[GroupRequested], delivery: Delivery | None = None
    ) -> None:
        group_id = event.subject
        tracing.handling(f"group {group_id}")
        for _ in range(CAS_ATTEMPTS):
            current = await self._store().get_group(group_id)
            if current is not None:
                if current.state.request_id == event.id:
                    # A redelivery: its publishing may not have happened; advance again.
                    await self._advance(current)
                else:
                    log.warning("group %s exists: request %s ignored", group_id, event.id)
                return
            reasons = await self._check(group_id, event.data)
            now = self._clock()
            decision = (
                groups.reject(group_id, event, reasons, now)
                if reasons
                else groups.plan(group_id, event, now)
            )
            assert decision.state is not None
            state = decision.state.model_copy(
                update={"trace_parent": tracing.current_traceparent()}
            )
            try:
                revision = await self._store().create_group(state)
            except StaleWrite:
                continue
            await self._publish(state, decision.commands)
            if not reasons:
                await self._advance(VersionedGroup(state, revision))
            return
        raise RuntimeError(f"group {group_id}: state kept changing under us")

    async def _check(self, group_id: str, request: GroupRequested) -> list[str]:
        """Every reason the group may not start: its shape, each member against its policy
        (as its release will be checked), and a member whose Deployment is already busy."""
        reasons = groups.check(group_id, request)
        now = self._clock()
        for index, member in enumerate(request.members):
            as_release = ReleaseRequested(
                target=member.target, version=member.version, requested_by=request.requested_by
            )
            admitted = await validate(as_release, self._cluster, now, self._routers)
            name = f"member {index + 1} ({member.target.key()})"
            if isinstance(admitted, Refusal):
                reasons += [f"{name}: {reason}" for reason in admitted.reasons]
            holder = await self._store().holder_of(member.target)
            if holder is not None:
                reasons.append(f"{name}: Deployment already has a release in flight: {holder}")
        return reasons

    async def on_member_event(self, event: Envelope[Any], delivery: Delivery | None = None) -> None:
        member = await self._store().get(event.subject)
        if member is not None and member.state.pipeline and self._pipelines is not None:
            tracing.handling(f"pipeline {member.state.pipeline}: environment {event.subject}")
            await self._pipelines(member.state.pipeline)
            return
        if member is None or not member.state.group:
            return  # not a group's member: nothing for a group to do
        tracing.handling(f"group {member.state.group}: member {event.subject}")
        await self.advance(member.state.group)

    async def advance(self, group_id: str) -> None:
        for _ in range(CAS_ATTEMPTS):
            current = await self._store().get_group(group_id)
            if current is None or await self._advance(current):
                return
        raise RuntimeError(f"group {group_id}: state kept changing under us")

    async def _members(self, group: GroupState) -> dict[str, ReleaseState | None]:
        found: dict[str, ReleaseState | None] = {}
        for member in group.members:
            versioned = await self._store().get(member.release_id)
            found[member.release_id] = versioned.state if versioned is not None else None
        return found

    async def _advance(self, current: VersionedGroup) -> bool:
        """Advance and write; False when the state changed since it was read."""
        members = await self._members(current.state)
        decision: GroupDecision = groups.advance(current.state, members, self._clock())
        if decision.state is None:
            return True
        try:
            await self._store().update_group(decision.state, current.revision)
        except StaleWrite:
            return False
        log.info("group %s: %s", decision.state.group_id, decision.state.status.value)
        await self._publish(decision.state, decision.commands)
        return True

    async def _publish(self, group: GroupState, commands: list[Command]) -> None:
        with tracing.within(group.trace_parent):
            for command in commands:
                await self._publisher.publish(
                    command.data, command.subject_key or group.group_id, event_id=command.event_id
                )

    async def reconcile_once(self) -> None:
        """The safety net: advance every group in flight and send again what no member
        reacted to (see ``groups.reissue``)."""
        for versioned in await self._store().all_groups():
            if versioned.state.status.terminal:
                continue
            try:
                await self._advance(versioned)
                latest = await self._store().get_group(versioned.state.group_id)
                if latest is None:
                    continue
                members = await self._members(latest.state)
                again = groups.reissue(latest.state, members, self._clock())
                await self._publish(latest.state, again)
            except StaleWrite:
                continue
