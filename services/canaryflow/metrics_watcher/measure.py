"""One measurement: every query of a tick, for the canary and the baseline track, at once.

This is the only place that talks to a provider during a tick. It never decides: values,
queries and sample sizes go to the judge, and a provider failure travels as a reason, so
"could not ask" is never confused with "asked and saw nothing wrong".
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from canaryflow.metrics_watcher import judge
from canaryflow.metrics_watcher.compare import (
    HistogramReading,
    RateReading,
    Reading,
    TrackReading,
)
from canaryflow.metrics_watcher.providers import MetricProvider, ProviderError
from canaryflow.metrics_watcher.templates import (
    HTTP_METRICS,
    CountQueries,
    QueryContext,
    TemplateSet,
    UnknownTemplate,
    count_queries,
    render,
    sample_size_query,
)
from canaryflow_contracts.events import MetricCheck
from canaryflow_contracts.policy import Analysis, BusinessMetric, Comparison


@dataclass(frozen=True)
class Measurement:
    checks: list[MetricCheck]
    provider_error: str | None


@dataclass(frozen=True)
class _Answer:
    value: float | None
    error: str | None = None


async def measure(
    provider: MetricProvider,
    analysis: Analysis,
    canary: QueryContext,
    reference: QueryContext,
    templates: TemplateSet = HTTP_METRICS,
) -> Measurement:
    """Checks for the canary (judged) and the reference track (evidence) over one window."""
    queries: list[str] = []
    for context in (canary, reference):
        queries.append(sample_size_query(context, templates))
        queries.extend(render(rule, context, templates) for rule in analysis.metrics)

    if await provider.is_online():
        answers = list(await asyncio.gather(*(_ask(provider, query) for query in queries)))
    else:
        offline = f"{provider.name} is not answering"
        answers = [_Answer(None, offline) for _ in queries]

    per_track = len(analysis.metrics) + 1
    canary_answers, stable_answers = answers[:per_track], answers[per_track:]
    canary_queries, stable_queries = queries[:per_track], queries[per_track:]

    canary_size = canary_answers[0].value or 0.0
    stable_size = stable_answers[0].value or 0.0
    checks = [
        judge.sample_check(canary_answers[0].value, analysis.min_requests, query=canary_queries[0])
    ]
    for rule, answer, query in zip(
        analysis.metrics, canary_answers[1:], canary_queries[1:], strict=True
    ):
        checks.append(
            judge.judge(rule, answer.value, canary_size, analysis.min_requests, query=query)
        )
    checks.append(
        judge.sample_check(
            stable_answers[0].value,
            analysis.min_requests,
            query=stable_queries[0],
            track=reference.track,
        )
    )
    for rule, answer, query in zip(
        analysis.metrics, stable_answers[1:], stable_queries[1:], strict=True
    ):
        checks.append(
            judge.evidence(rule.name, answer.value, stable_size, query=query, track=reference.track)
        )

    errors = sorted({answer.error for answer in answers if answer.error is not None})
    return Measurement(checks, "; ".join(errors) if errors else None)


async def _ask(provider: MetricProvider, query: str) -> _Answer:
    try:
        return _Answer(await provider.query(query))
    except ProviderError as error:
        return _Answer(None, str(error))


@dataclass(frozen=True)
class CountQuerySet:
    """The counters of one comparison on both tracks."""

    rule: Comparison | BusinessMetric
    canary: CountQueries
    baseline: CountQueries


def count_query_sets(
    analysis: Analysis,
    canary: QueryContext,
    baseline: QueryContext,
    templates: TemplateSet = HTTP_METRICS,
) -> list[CountQuerySet]:
    rules: list[Comparison | BusinessMetric] = [*analysis.compare, *analysis.business]
    sets = []
    for rule in rules:
        query_set = CountQuerySet(
            rule, count_queries(rule, canary, templates), count_queries(rule, baseline, templates)
        )
        if isinstance(rule, BusinessMetric) and query_set.canary.histogram:
            raise UnknownTemplate(
                f"business metric {rule.name!r} needs a template counting events and trials"
            )
        sets.append(query_set)
    return sets


async def _track(provider: MetricProvider, queries: CountQueries) -> TrackReading:
    if queries.buckets is not None:
        return HistogramReading(await provider.query_vector(queries.buckets, "le"))
    assert queries.events is not None and queries.trials is not None
    events, trials = await asyncio.gather(
        provider.query(queries.events), provider.query(queries.trials)
    )
    return RateReading(events, trials)


async def read_counts(
    provider: MetricProvider, sets: list[CountQuerySet]
) -> dict[str, Reading | str]:
    """Every comparison's cumulative counters now; a comparison that could not be read
    gets the provider's reason instead (its tick is skipped, never counted as zero)."""

    async def one(query_set: CountQuerySet) -> Reading | str:
        try:
            canary, baseline = await asyncio.gather(
                _track(provider, query_set.canary), _track(provider, query_set.baseline)
            )
        except ProviderError as error:
            return str(error)
        return Reading(canary, baseline)

    results = await asyncio.gather(*(one(query_set) for query_set in sets))
    return {query_set.rule.name: result for query_set, result in zip(sets, results, strict=True)}
