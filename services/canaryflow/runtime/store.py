"""Release state in a JetStream KV bucket, every write guarded by compare-and-set.

A write names the revision it read; if another replica (or a stale, duplicate or reordered
event) wrote in between, the write fails with ``StaleWrite`` and the caller re-reads and
re-decides. That is what lets several planner replicas share work with no leader.
The ``target.<namespace>.<name>`` key is a lock: at most one release in flight per target.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from canaryflow_contracts.events import TargetRef
from canaryflow_contracts.state import GroupState, PipelineState, ReleaseState, read_state


class StaleWrite(Exception):
    """The state changed since it was read; read again and decide again."""


@dataclass(frozen=True)
class Versioned:
    state: ReleaseState
    revision: int


@dataclass(frozen=True)
class VersionedGroup:
    state: GroupState
    revision: int


@dataclass(frozen=True)
class VersionedPipeline:
    state: PipelineState
    revision: int


def _pipeline_key(pipeline_id: str) -> str:
    return f"pipeline.{pipeline_id}"


def _group_key(group_id: str) -> str:
    return f"group.{group_id}"


def _release_key(release_id: str) -> str:
    return f"release.{release_id}"


def _target_key(target: TargetRef) -> str:
    return f"target.{target.namespace}.{target.name}"


class ReleaseStore:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def get(self, release_id: str) -> Versioned | None:
        found = await self._current(_release_key(release_id))
        return None if found is None else Versioned(read_state(found[0]), found[1])

    async def create(self, state: ReleaseState) -> int:
        try:
            return await self._kv.create(
                _release_key(state.release_id), state.model_dump_json().encode()
            )
        except KeyWrongLastSequenceError as error:
            raise StaleWrite(f"release {state.release_id} already exists") from error

    async def update(self, state: ReleaseState, revision: int) -> int:
        try:
            return await self._kv.update(
                _release_key(state.release_id), state.model_dump_json().encode(), last=revision
            )
        except KeyWrongLastSequenceError as error:
            raise StaleWrite(
                f"release {state.release_id} changed since revision {revision}"
            ) from error

    async def holder_of(self, target: TargetRef) -> str | None:
        """The release id holding the target's lock, if any."""
        try:
            entry = await self._kv.get(_target_key(target))
        except KeyNotFoundError:
            return None
        return entry.value.decode() if entry.value else None

    async def claim_target(self, target: TargetRef, release_id: str) -> str:
        """Take the target's lock for ``release_id``; returns the id that holds it after."""
        try:
            await self._kv.create(_target_key(target), release_id.encode())
        except KeyWrongLastSequenceError:
            holder = await self.holder_of(target)
            if holder is None:  # freed between our two calls: try once more
                return await self.claim_target(target, release_id)
            return holder
        return release_id

    async def free_target(self, target: TargetRef, release_id: str) -> None:
        """Free the lock if ``release_id`` holds it (idempotent)."""
        try:
            entry = await self._kv.get(_target_key(target))
        except KeyNotFoundError:
            return
        if entry.value and entry.value.decode() == release_id and entry.revision is not None:
            # A failed compare-and-set means someone else already moved the lock on.
            with contextlib.suppress(KeyWrongLastSequenceError):
                await self._kv.delete(_target_key(target), last=entry.revision)

    async def all(self) -> list[Versioned]:
        """Every release's latest state, streamed by one watcher: a get per key was a round
        trip each, a second per reconcile pass at a thousand releases (bench/scale.py)."""
        return [
            Versioned(read_state(value), revision)
            for value, revision in await self._latest("release.>")
        ]

    async def _latest(self, keys: str) -> list[tuple[bytes, int]]:
        """The latest value and revision of every key matching ``keys``, by one watcher."""
        watcher = await self._kv.watch(keys, ignore_deletes=True)
        found = []
        try:
            async for entry in watcher:
                if entry is None:  # the watcher's marker: every current value delivered
                    break
                if entry.value and entry.revision is not None:
                    found.append((entry.value, entry.revision))
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]  # untyped in nats-py
        return found

    async def _current(self, key: str) -> tuple[bytes, int] | None:
        """The key's value and revision, None when it has none."""
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        if entry.value is None or entry.revision is None:
            return None
        return entry.value, entry.revision

    # ----------------------------------------------------------------- release groups
    # A group's state sits in the same bucket under ``group.<id>``, guarded the same way.

    async def get_group(self, group_id: str) -> VersionedGroup | None:
        found = await self._current(_group_key(group_id))
        if found is None:
            return None
        return VersionedGroup(GroupState.model_validate_json(found[0]), found[1])

    async def create_group(self, state: GroupState) -> int:
        try:
            return await self._kv.create(
                _group_key(state.group_id), state.model_dump_json().encode()
            )
        except KeyWrongLastSequenceError as error:
            raise StaleWrite(f"group {state.group_id} already exists") from error

    async def update_group(self, state: GroupState, revision: int) -> int:
        try:
            return await self._kv.update(
                _group_key(state.group_id), state.model_dump_json().encode(), last=revision
            )
        except KeyWrongLastSequenceError as error:
            raise StaleWrite(f"group {state.group_id} changed since revision {revision}") from error

    async def all_groups(self) -> list[VersionedGroup]:
        return [
            VersionedGroup(GroupState.model_validate_json(value), revision)
            for value, revision in await self._latest("group.>")
        ]

    # ----------------------------------------------------------------- release pipelines

    async def get_pipeline(self, pipeline_id: str) -> VersionedPipeline | None:
        found = await self._current(_pipeline_key(pipeline_id))
        if found is None:
            return None
        return VersionedPipeline(PipelineState.model_validate_json(found[0]), found[1])

    async def create_pipeline(self, state: PipelineState) -> int:
        try:
            return await self._kv.create(
                _pipeline_key(state.pipeline_id), state.model_dump_json().encode()
            )
        except KeyWrongLastSequenceError as error:
            raise StaleWrite(f"pipeline {state.pipeline_id} already exists") from error

    async def update_pipeline(self, state: PipelineState, revision: int) -> int:
        try:
            return await self._kv.update(
                _pipeline_key(state.pipeline_id), state.model_dump_json().encode(), last=revision
            )
        except KeyWrongLastSequenceError as error:
            raise StaleWrite(
                f"pipeline {state.pipeline_id} changed since revision {revision}"
            ) from error

    async def all_pipelines(self) -> list[VersionedPipeline]:
        return [
            VersionedPipeline(PipelineState.model_validate_json(value), revision)
            for value, revision in await self._latest("pipeline.>")
        ]
