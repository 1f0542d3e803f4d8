"""Where an analysis stands, kept in a JetStream KV bucket so that any replica can carry it on.

Why: an analysis lasts its step's whole hold, and the readings it has counted used to live
only in the memory of the replica doing it. A replica killed mid-hold took them along; the
one that got the redelivered request started from nothing, found the hold over, judged
"insufficient data: 0 canary and 0 baseline trials" and paused a good release, which the
pause deadline then rolled back. So after every tick the analysis writes what it has:

- the cumulative readings of every comparison, which are the whole state of the sequential
  test (its evidence is recomputed from them, so a continued test is the same test);
- the next tick due and the extensions granted (the hold's start is the request's time);
- once decided, the final verdict itself, so a redelivery re-publishes it instead of judging
  again on later data.

Ownership: each delivery of the request writes under the revision it last wrote
(compare-and-set). A delivery that finds a write it did not make was overtaken by a later
delivery of the same request (JetStream handed it on while this one was stalled), or by the
planner asking again (``RequestAnalysis.continues``: same progress, later claim), and stops.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field

from canaryflow.metrics_watcher.compare import Reading
from canaryflow.runtime.store import StaleWrite
from canaryflow_contracts.events import AnalysisVerdict

# Long enough for any hold and its extensions; an analysis nobody continues is garbage after.
PROGRESS_TTL_SECONDS = 7 * 24 * 3600.0


class AnalysisProgress(BaseModel):
    """One run of one step's analysis, as far as it got."""

    model_config = ConfigDict(frozen=True)

    owner: int = Field(description="The delivery attempt of the request that wrote this.")
    reissue: int = Field(
        default=0,
        description="Which ask of the planner wrote this (RequestAnalysis.reissue): a later "
        "ask outranks every delivery of an earlier one.",
    )
    anchor: datetime | None = Field(
        default=None,
        description="When the analysis was first requested, the schedule's origin; a re-issue "
        "keeps it. None: written before it was kept (the request's own time).",
    )
    next_tick: int = Field(description="The first tick not yet measured.")
    extensions: int = Field(description="Extra holds granted so far.")
    readings: dict[str, list[Reading]] = Field(
        description="Cumulative readings of each comparison, one per complete tick."
    )
    final: AnalysisVerdict | None = Field(
        default=None, description="The final verdict, once decided (published or about to be)."
    )
    updated_at: datetime
    blind_at: datetime | None = Field(
        default=None,
        description="The last moment the provider failed to answer (or answered late): no "
        "tick whose query window reaches back before it may pass.",
    )

    @property
    def claim(self) -> tuple[int, int]:
        """Whose write this is, as ``AnalysisJob.claim`` orders them."""
        return (self.reissue, self.owner)


@dataclass(frozen=True)
class Saved:
    progress: AnalysisProgress
    revision: int


class ProgressStore(Protocol):
    async def load(self, key: str) -> Saved | None: ...

    async def save(self, key: str, progress: AnalysisProgress, revision: int | None) -> int:
        """Write under ``revision`` (None: must not exist yet); ``StaleWrite`` if it moved."""
        ...


class KvProgress:
    """The progress bucket; opened (and created by the first replica) when the service starts."""

    def __init__(self) -> None:
        self._kv: KeyValue | None = None

    async def open(self, js: JetStreamContext, bucket: str, replicas: int = 1) -> None:
        try:
            self._kv = await js.key_value(bucket)
        except BucketNotFoundError:
            self._kv = await js.create_key_value(
                KeyValueConfig(
                    bucket=bucket,
                    description="canaryflow analysis progress, so any replica can continue one",
                    history=1,
                    ttl=PROGRESS_TTL_SECONDS,
                    storage=StorageType.FILE,
                    replicas=replicas,
                )
            )

    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("the analysis progress bucket is open once the service started")
        return self._kv

    async def load(self, key: str) -> Saved | None:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None
        if entry.value is None or entry.revision is None:
            return None
        return Saved(AnalysisProgress.model_validate_json(entry.value), entry.revision)

    async def save(self, key: str, progress: AnalysisProgress, revision: int | None) -> int:
        value = progress.model_dump_json().encode()
        try:
            if revision is None:
                return await self.kv.create(key, value)
            return await self.kv.update(key, value, last=revision)
        except KeyWrongLastSequenceError as error:
            raise StaleWrite(f"analysis {key} changed since revision {revision}") from error


class MemoryProgress:
    """Progress kept in this process only: for running the analysis loop where no replica
    will ever continue it (benchmarks of the judgement, tests of the loop)."""

    def __init__(self) -> None:
        self.saved: dict[str, Saved] = {}

    async def load(self, key: str) -> Saved | None:
        return self.saved.get(key)

    async def save(self, key: str, progress: AnalysisProgress, revision: int | None) -> int:
        current = self.saved.get(key)
        if (current.revision if current is not None else None) != revision:
            raise StaleWrite(f"analysis {key} changed since revision {revision}")
        new = Saved(progress, (revision or 0) + 1)
        self.saved[key] = new
        return new.revision
