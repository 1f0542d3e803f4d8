"""The analysis of one step: tick, measure, judge, publish, until a failure or the hold ends.

Everything with side effects comes in from outside (provider, clock, release reader,
publisher, policy source, progress store), so the whole loop runs in unit tests with fakes
and a clock that jumps instead of sleeping. Before every tick the release is read again: a
release that moved on (promoted, rolled back, another step, an operator's abort) is left
alone silently, and its message is acknowledged.

After every tick the analysis writes its progress (see ``progress``) before it publishes, so
a replica that dies at any moment leaves behind everything the next delivery of the request
needs to continue the same test: a restart delays a verdict, it never changes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Protocol

from canaryflow.metrics_watcher.compare import Reading, judge_histogram, judge_rates
from canaryflow.metrics_watcher.judge import verdict
from canaryflow.metrics_watcher.measure import (
    CountQuerySet,
    count_query_sets,
    measure,
    read_counts,
)
from canaryflow.metrics_watcher.policies import PolicyProblem, PolicySource
from canaryflow.metrics_watcher.progress import AnalysisProgress, ProgressStore, Saved
from canaryflow.metrics_watcher.providers import MetricProvider, ProviderError, ProviderPool
from canaryflow.metrics_watcher.providers.base import ANSWER_SECONDS
from canaryflow.metrics_watcher.schedule import extended_offsets, first_due_tick, still_analysing
from canaryflow.metrics_watcher.templates import (
    QueryContext,
    UnknownTemplate,
    for_analysis,
    render,
)
from canaryflow.runtime import observability
from canaryflow.runtime.bus import HandedOver
from canaryflow.runtime.store import StaleWrite, Versioned
from canaryflow_contracts.events import (
    AnalysisVerdict,
    MetricCheck,
    RequestAnalysis,
    VerdictAction,
    VerdictResult,
)
from canaryflow_contracts.identities import ANALYSIS_KEY_KIND
from canaryflow_contracts.policy import Analysis, BusinessMetric, DropAction, ReleasePolicySpec

log = logging.getLogger(__name__)


class Clock(Protocol):
    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ReleaseReader(Protocol):
    async def get(self, release_id: str) -> Versioned | None: ...


# (release id, verdict, event id): the service's EventPublisher in production, a list in tests.
Publish = Callable[[str, AnalysisVerdict, str], Awaitable[None]]
# Tries at claiming an analysis's progress before the message goes back for redelivery.
TAKE_OVER_ATTEMPTS = 5
# A tick whose queries took longer than this (and than the interval) met a metrics source that
# was frozen or overloaded: its answer came late and the window it covers may have a gap (no
# scrapes while it was stopped), so it counts as a moment the source was unavailable. Found by
# the fault campaign (make chaos): canaries passed 4-8 s after Prometheus came back from a
# 15 s freeze, on windows that reached back into it.
SLOW_ANSWER_SECONDS = 5.0
# A window in which the metrics source collected nothing for longer than this share of it is
# not judged. Why: an outage this service never saw (it began and ended before the analysis
# did, or between two ticks of a replica that was then killed) still leaves the window with a
# hole; the fault campaign saw canaries pass 6 s after a 17 s Prometheus freeze on windows that
# reached back into it. Half: a healthy scrape interval is far below half a window (rate()
# needs several samples in it), so only an outage trips it.
MAX_GAP_SHARE = 0.5


@dataclass(frozen=True)
class AnalysisJob:
    release_id: str
    request_id: str  # the RequestAnalysis envelope's id
    request: RequestAnalysis
    anchor: datetime  # when the analysis was requested: the schedule's origin
    attempt: int = 1  # which delivery of the request this is: the later one owns the progress

    @property
    def run(self) -> str:
        """A short token of the analysis: the same on every delivery of the request and on
        every re-issue that continues it (``RequestAnalysis.continues``)."""
        first = self.request.continues or self.request_id
        return hashlib.sha256(first.encode()).hexdigest()[:8]

    @property
    def claim(self) -> tuple[int, int]:
        """Who may carry the analysis on: the planner's latest ask, then the latest delivery."""
        return (self.request.reissue, self.attempt)

    @property
    def progress_key(self) -> str:
        """``analysis.<rid>.<step>.<run>``: the first token is what the metrics-watcher's NATS
        identity may write (canaryflow_contracts.identities.ANALYSIS_KEY_KIND)."""
        return f"{ANALYSIS_KEY_KIND}.{self.release_id}.{self.request.step.index}.{self.run}"

    def event_id(self, tick: int | None) -> str:
        """``<rid>.verdict.<step>.<run>.<tick>``, or ``.final`` for the verdict ending a run.

        ``run`` is derived from the request's id: a redelivered or re-issued request publishes
        the same ids (JetStream drops the repeats), while a new analysis of the same step (the
        planner analysing again after a resume) gets ids of its own, which the duplicate window
        would otherwise swallow.
        """
        suffix = "final" if tick is None else str(tick)
        return f"{self.release_id}.verdict.{self.request.step.index}.{self.run}.{suffix}"


class Analyst:
    def __init__(
        self,
        *,
        provider: MetricProvider | ProviderPool,
        clock: Clock,
        releases: ReleaseReader,
        policies: PolicySource,
        publish: Publish,
        progress: ProgressStore,
    ) -> None:
        self._providers = provider if isinstance(provider, ProviderPool) else ProviderPool(provider)
        self._clock = clock
        self._releases = releases
        self._policies = policies
        self._publish = publish
        self._progress = progress

    async def run(self, job: AnalysisJob) -> AnalysisVerdict | None:
        """Analyse the step; returns the final verdict, or None if the release moved on."""
        request = job.request
        try:
            policy = await self._policies.get(request.target.namespace, request.policy)
        except PolicyProblem as problem:
            return await self._cannot_analyse(job, problem)
        if request.analysis is not None:
            # The planner sends the policy's analysis with the request's tightenings applied.
            policy = policy.model_copy(update={"analysis": request.analysis})
        return await self._ticks(job, policy)

    async def _ticks(self, job: AnalysisJob, policy: ReleasePolicySpec) -> AnalysisVerdict | None:
        request = job.request
        analysis = policy.analysis
        provider = self._providers.get(analysis.provider)
        templates = for_analysis(analysis)
        hold, interval = request.step.hold_seconds, analysis.interval_seconds
        canary, baseline = _contexts(request, policy)
        try:
            for rule in analysis.metrics:
                render(rule, canary, templates)
            sets = count_query_sets(analysis, canary, baseline, templates)
        except UnknownTemplate as problem:
            return await self._cannot_analyse(job, problem)
        saved = await self._take_over(job)
        revision = saved.revision
        if saved.progress.anchor is not None:
            # A re-issue goes on with the schedule of the request it continues.
            job = replace(job, anchor=saved.progress.anchor)
        if saved.progress.final is not None:
            # Decided by an earlier delivery, which may have died before publishing it.
            if not await self._wanted(job):
                return None
            return await self._send(job, None, saved.progress.final)
        # Cumulative readings of each comparison since the analysis began (kept across ticks
        # and across deliveries: they are the sequential test's whole state).
        histories: dict[str, list[Reading]] = {
            query_set.rule.name: list(saved.progress.readings.get(query_set.rule.name, []))
            for query_set in sets
        }
        extensions = saved.progress.extensions
        blind_at = saved.progress.blind_at
        offsets = extended_offsets(hold, interval, extensions)
        tick = min(
            max(saved.progress.next_tick, first_due_tick(offsets, self._elapsed(job))),
            len(offsets) - 1,
        )
        while True:
            wait = offsets[tick] - self._elapsed(job)
            if wait > 0:
                await self._clock.sleep(wait)
            if not await self._wanted(job):
                return None
            tick_started = self._clock.now()
            answers: list[float] = []  # how long the source took, for each query it answered
            timing = ANSWER_SECONDS.set(answers)
            try:
                measurement = await measure(provider, analysis, canary, baseline, templates)
                checks = list(measurement.checks)
                errors = [measurement.provider_error] if measurement.provider_error else []
                if sets:
                    compared, problems = await self._compare(provider, analysis, sets, histories)
                    checks += compared
                    errors += [p for p in problems if p not in errors]
            finally:
                ANSWER_SECONDS.reset(timing)
            measured_at = self._clock.now()
            # The source's slowest answer, not the tick's length: the tick also waited for
            # this replica's own turns at the source (a provider that does not time its
            # answers: the tick's length).
            took = max(answers, default=(measured_at - tick_started).total_seconds())
            if errors or took > max(interval, SLOW_ANSWER_SECONDS):
                # Unavailable, or frozen and answering only now: its data has a gap up to here.
                blind_at = measured_at
            if not errors and blind_at is not None:
                since = (tick_started - blind_at).total_seconds()
                if since < analysis.window_seconds:
                    errors.append(
                        f"the metrics source was unavailable {max(since, 0):.1f}s ago, within "
                        f"the {analysis.window_seconds:g}s window the queries cover"
                    )
            # An outage it never saw; not one that starts a window of blindness (it is measured).
            if not errors and (gap := await _collection_gap(provider, analysis.window_seconds)):
                errors.append(gap)
            last = tick == len(offsets) - 1
            result, action, reason = verdict(
                checks,
                min_requests=analysis.min_requests,
                provider_error="; ".join(errors) if errors else None,
                final=last,
                actions=analysis.verdicts,
                extensions_left=analysis.verdicts.max_extensions - extensions,
                pause_on_fail=frozenset(
                    rule.name for rule in analysis.business if rule.on_drop is DropAction.PAUSE
                ),
            )
            final = (last and action is not VerdictAction.EXTEND) or result is VerdictResult.FAIL
            event = _verdict(job, final, result=result, action=action, reason=reason, checks=checks)
            if action is VerdictAction.EXTEND:
                # Another hold on the same data: the readings so far stay, the test goes on.
                extensions += 1
                offsets = extended_offsets(hold, interval, extensions)
            # Built from our own typed values: no need to validate them again at every tick.
            progress = AnalysisProgress.model_construct(
                owner=job.attempt,
                reissue=job.request.reissue,
                anchor=job.anchor,
                next_tick=tick + 1,
                extensions=extensions,
                readings=histories,
                final=event if final else None,
                updated_at=self._clock.now(),
                blind_at=blind_at,
            )
            revision = await self._record(job, progress, revision)
            published = await self._send(job, None if final else tick, event)
            if final:
                return published
            tick += 1

    async def _compare(
        self,
        provider: MetricProvider,
        analysis: Analysis,
        sets: list[CountQuerySet],
        histories: dict[str, list[Reading]],
    ) -> tuple[list[MetricCheck], list[str]]:
        readings = await read_counts(provider, sets)
        checks: list[MetricCheck] = []
        problems: list[str] = []
        for query_set in sets:
            name = query_set.rule.name
            reading = readings[name]
            if isinstance(reading, str):
                problems.append(reading)
            else:
                histories[name].append(reading)
            rule = query_set.rule
            judge = (
                judge_histogram
                if query_set.canary.histogram and not isinstance(rule, BusinessMetric)
                else partial(judge_rates, interval_seconds=analysis.interval_seconds)
            )
            judged = judge(
                rule,  # type: ignore[arg-type]  # histograms are never business metrics
                histories[name],
                alpha=analysis.alpha,
                min_requests=analysis.min_requests,
                canary_queries=query_set.canary,
                baseline_queries=query_set.baseline,
            )
            checks.append(judged.check)
        return checks, problems

    async def _take_over(self, job: AnalysisJob) -> Saved:
        """This delivery's claim on the analysis's progress (fresh, or as left by another).

        Raises ``HandedOver`` when a later delivery of the request already holds it.
        """
        for _ in range(TAKE_OVER_ATTEMPTS):
            saved = await self._progress.load(job.progress_key)
            if saved is not None and saved.progress.claim > job.claim:
                raise HandedOver(
                    f"delivery {saved.progress.owner} of ask {saved.progress.reissue} continues "
                    f"{job.progress_key}"
                )
            progress = (
                saved.progress
                if saved is not None
                else AnalysisProgress(
                    owner=job.attempt,
                    anchor=job.anchor,
                    next_tick=0,
                    extensions=0,
                    readings={},
                    updated_at=self._clock.now(),
                )
            )
            if saved is not None:
                log.info(
                    "continuing analysis %s from tick %d (%d extension(s)), left by delivery %d "
                    "of ask %d",
                    job.progress_key,
                    progress.next_tick,
                    progress.extensions,
                    progress.owner,
                    progress.reissue,
                )
            progress = progress.model_copy(
                update={
                    "owner": job.attempt,
                    "reissue": job.request.reissue,
                    "anchor": progress.anchor or job.anchor,
                    "updated_at": self._clock.now(),
                }
            )
            try:
                revision = await self._progress.save(
                    job.progress_key, progress, saved.revision if saved is not None else None
                )
            except StaleWrite:
                continue  # another delivery wrote in between: look again
            return Saved(progress, revision)
        raise RuntimeError(f"analysis {job.progress_key} kept changing under us")

    async def _record(self, job: AnalysisJob, progress: AnalysisProgress, revision: int) -> int:
        try:
            return await self._progress.save(job.progress_key, progress, revision)
        except StaleWrite as stale:
            # Only a later delivery writes in between: it has taken the analysis over.
            raise HandedOver(f"{job.progress_key} was taken over: {stale}") from stale

    async def _cannot_analyse(self, job: AnalysisJob, problem: Exception) -> AnalysisVerdict | None:
        """A policy that can never be judged pauses the release where a person sees why."""
        if not await self._wanted(job):
            return None
        event = _verdict(
            job,
            True,
            result=VerdictResult.INSUFFICIENT_DATA,
            action=VerdictAction.PAUSE,
            reason=f"cannot analyse: {problem}",
            checks=[],
        )
        return await self._send(job, None, event)

    async def _wanted(self, job: AnalysisJob) -> bool:
        versioned = await self._releases.get(job.release_id)
        state = versioned.state if versioned is not None else None
        if still_analysing(state, job.request.step.index):
            return True
        log.info(
            "release no longer analysing step %d (%s); stopping",
            job.request.step.index,
            f"{state.status}, step {state.step_index}" if state else "no state",
        )
        return False

    async def _send(
        self, job: AnalysisJob, tick: int | None, event: AnalysisVerdict
    ) -> AnalysisVerdict:
        """Publish a verdict: ``tick`` None for the final one of the run."""
        await self._publish(job.release_id, event, job.event_id(tick))
        result, final = event.result.value, str(event.final).lower()
        observability.service_metrics().verdicts.labels(result, final).inc()
        log.info(
            "verdict %s%s for step %d: %s",
            result,
            " (final)" if event.final else "",
            job.request.step.index,
            event.reason,
        )
        return event

    def _elapsed(self, job: AnalysisJob) -> float:
        return (self._clock.now() - job.anchor).total_seconds()


async def _collection_gap(provider: MetricProvider, window_seconds: float) -> str | None:
    """Why the window cannot be judged when its source collected nothing for over
    ``MAX_GAP_SHARE`` of it; None when it collected all along (or cannot tell)."""
    try:
        gap = await provider.collection_gap(window_seconds)
    except ProviderError as error:
        return str(error)
    if gap is None or gap <= window_seconds * MAX_GAP_SHARE:
        return None
    return (
        f"{provider.name} collected no sample for {gap:.0f}s of the {window_seconds:g}s window "
        "the queries cover (stopped or frozen)"
    )


def _verdict(
    job: AnalysisJob,
    final: bool,
    *,
    result: VerdictResult,
    action: VerdictAction,
    reason: str,
    checks: list[MetricCheck],
) -> AnalysisVerdict:
    return AnalysisVerdict(
        target=job.request.target,
        step=job.request.step,
        result=result,
        action=action,
        final=final,
        reason=reason,
        checks=checks,
    )


def _contexts(
    request: RequestAnalysis, policy: ReleasePolicySpec
) -> tuple[QueryContext, QueryContext]:
    def context(version: str, track: str) -> QueryContext:
        return QueryContext(
            namespace=request.target.namespace,
            service=policy.service_name,
            version=version,
            track=track,
            window_seconds=policy.analysis.window_seconds,
        )

    # The baseline runs the stable version on fresh pods the same size as the canary's: the
    # comparison is against it, not against the long-running stable pods.
    return context(request.canary_version, "canary"), context(request.stable_version, "baseline")
