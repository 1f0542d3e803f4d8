"""What to ask: the PromQL behind each named metric, apart from where it is asked.

A policy names a metric (``error-rate``) or brings its own PromQL; both are filled with the
same variables for each measured version, so a raw query is exactly as expressive as a
built-in one. Platform teams add their own named templates in the policy
(``analysis.templates``); a name there shadows a built-in one, so a team can redefine
``errors`` for a service whose metrics follow other conventions.

Two kinds of templates: value queries (one number: an error rate, a p99) for absolute
guards, and count queries (cumulative counters: events and trials, or histogram buckets by
``le``) for the sequential comparison against the baseline, which needs counts, not ratios.
The built-ins come in two families, side by side:

- the app's: the common HTTP conventions the pods export on /metrics (``http_requests_total``
  with a ``code`` label, ``http_request_duration_seconds`` histogram,
  ``shop_visits_total``/``shop_purchases_total``), labelled by namespace, service, version
  (the image tag) and track when Prometheus scrapes the pods;
- the gateway's (``gateway-*``): what the load balancer saw of each track's backend Service,
  for teams who have no metrics of their own app. Traefik counts
  ``traefik_service_requests_total{code,service}`` and a ``traefik_service_request_duration_
  seconds`` histogram per leaf service, named ``<namespace>-<Service>-<port>@kubernetescrd``;
  a track's backend is the Service ``<service>-<track>`` (``shop-canary``, ``shop-baseline``,
  ``shop-stable``), so the version is implied by the track and not a label there.

A count needs a sample size in the same units: when every rule of an analysis is judged from
the gateway, the sample size is the gateway's request count too (``for_analysis``), so an app
that exports nothing is not "insufficient data" forever.

Placeholders are replaced by name rather than with ``str.format``, because PromQL is full of
braces of its own; label values are escaped for a PromQL double-quoted string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from canaryflow_contracts.policy import (
    Analysis,
    BusinessMetric,
    Comparison,
    CountTemplate,
    MetricRule,
    MetricTemplate,
    NamedTemplate,
)

_PLACEHOLDER = re.compile(r"\{(namespace|service|version|track|window)\}")

# The series of one version on one track.
_SELECTOR = 'namespace="{namespace}",service="{service}",version="{version}",track="{track}"'
# The gateway's series of one track's backend Service, whatever its port (name or number).
_GATEWAY = 'service=~"{namespace}-{service}-{track}-[^@]+@kubernetescrd"'
GATEWAY_PREFIX = "gateway-"


@dataclass(frozen=True)
class QueryContext:
    """The variables of one measurement: which version, on which track, over which window."""

    namespace: str
    service: str
    version: str
    track: str
    window_seconds: int

    def values(self) -> dict[str, str]:
        return {
            "namespace": _escape(self.namespace),
            "service": _escape(self.service),
            "version": _escape(self.version),
            "track": _escape(self.track),
            "window": f"{self.window_seconds}s",
        }


@dataclass(frozen=True)
class CountQueries:
    """Cumulative counters for a comparison: events out of trials, or histogram buckets."""

    events: str | None = None
    trials: str | None = None
    buckets: str | None = None

    @property
    def histogram(self) -> bool:
        return self.buckets is not None


@dataclass(frozen=True)
class TemplateSet:
    """The queries the analysis can name: the app's HTTP metrics and the gateway's.

    ``sample_size`` counts the requests a version served in the window; the judge needs it to
    tell "no problem seen" from "too little traffic to see one".
    """

    metrics: dict[str, str]
    sample_size: str
    counts: dict[str, CountQueries] = field(default_factory=dict)

    def with_named(self, named: list[NamedTemplate]) -> TemplateSet:
        """This set plus a policy's own templates (which win on a name clash)."""
        metrics = dict(self.metrics)
        counts = dict(self.counts)
        for template in named:
            if template.query is not None:
                metrics[template.name] = template.query
            else:
                counts[template.name] = CountQueries(
                    template.events, template.trials, template.buckets
                )
        return TemplateSet(metrics, self.sample_size, counts)


HTTP_METRICS = TemplateSet(
    metrics={
        MetricTemplate.ERROR_RATE: (
            # "or vector(0)": a service that never failed may have no 5xx series at all.
            f'(sum(rate(http_requests_total{{{_SELECTOR},code=~"5.."}}[{{window}}])) or vector(0))'
            f" / sum(rate(http_requests_total{{{_SELECTOR}}}[{{window}}]))"
        ),
        MetricTemplate.P99_LATENCY: (
            "histogram_quantile(0.99, sum by (le) "
            f"(rate(http_request_duration_seconds_bucket{{{_SELECTOR}}}[{{window}}])))"
        ),
        MetricTemplate.REQUEST_RATE: f"sum(rate(http_requests_total{{{_SELECTOR}}}[{{window}}]))",
        MetricTemplate.GATEWAY_ERROR_RATE: (
            f'(sum(rate(traefik_service_requests_total{{{_GATEWAY},code=~"5.."}}[{{window}}]))'
            " or vector(0))"
            f" / sum(rate(traefik_service_requests_total{{{_GATEWAY}}}[{{window}}]))"
        ),
        MetricTemplate.GATEWAY_P99_LATENCY: (
            "histogram_quantile(0.99, sum by (le) "
            f"(rate(traefik_service_request_duration_seconds_bucket{{{_GATEWAY}}}[{{window}}])))"
        ),
        MetricTemplate.GATEWAY_REQUEST_RATE: (
            f"sum(rate(traefik_service_requests_total{{{_GATEWAY}}}[{{window}}]))"
        ),
    },
    sample_size=f"sum(increase(http_requests_total{{{_SELECTOR}}}[{{window}}]))",
    counts={
        CountTemplate.ERRORS: CountQueries(
            events=f'sum(http_requests_total{{{_SELECTOR},code=~"5.."}})',
            trials=f"sum(http_requests_total{{{_SELECTOR}}})",
        ),
        CountTemplate.LATENCY: CountQueries(
            buckets=f"sum by (le) (http_request_duration_seconds_bucket{{{_SELECTOR}}})"
        ),
        CountTemplate.CONVERSION: CountQueries(
            events=f"sum(shop_purchases_total{{{_SELECTOR}}})",
            trials=f"sum(shop_visits_total{{{_SELECTOR}}})",
        ),
        CountTemplate.GATEWAY_ERRORS: CountQueries(
            events=f'sum(traefik_service_requests_total{{{_GATEWAY},code=~"5.."}})',
            trials=f"sum(traefik_service_requests_total{{{_GATEWAY}}})",
        ),
        CountTemplate.GATEWAY_LATENCY: CountQueries(
            buckets=f"sum by (le) (traefik_service_request_duration_seconds_bucket{{{_GATEWAY}}})"
        ),
    },
)
GATEWAY_SAMPLE_SIZE = f"sum(increase(traefik_service_requests_total{{{_GATEWAY}}}[{{window}}]))"


def for_analysis(analysis: Analysis) -> TemplateSet:
    """The templates an analysis may name: the built-ins plus its own, with the sample size
    counted where the rules look (the gateway's when every rule names a gateway template)."""
    templates = HTTP_METRICS.with_named(analysis.templates)
    named = [rule.template for rule in analysis.metrics]
    named += [rule.template for rule in (*analysis.compare, *analysis.business)]
    own = {template.name for template in analysis.templates}
    if named and all(
        name is not None and name.startswith(GATEWAY_PREFIX) and name not in own for name in named
    ):
        return replace(templates, sample_size=GATEWAY_SAMPLE_SIZE)
    return templates


class UnknownTemplate(ValueError):
    """A rule names a template that is neither built in nor in the policy."""


def fill(text: str, context: QueryContext) -> str:
    """Replace the known placeholders in ``text``; every other brace is left alone."""
    values = context.values()
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def render(rule: MetricRule, context: QueryContext, templates: TemplateSet = HTTP_METRICS) -> str:
    """The query measuring ``rule`` for one version on one track."""
    if rule.query is not None:
        return fill(rule.query, context)
    if rule.template is None:  # the policy model forbids this; keep mypy and readers honest
        raise ValueError(f"metric {rule.name!r} has neither a template nor a query")
    query = templates.metrics.get(rule.template)
    if query is None:
        known = ", ".join(sorted(templates.metrics))
        raise UnknownTemplate(
            f"metric {rule.name!r}: no value template {rule.template!r} ({known})"
        )
    return fill(query, context)


def count_queries(
    rule: Comparison | BusinessMetric, context: QueryContext, templates: TemplateSet = HTTP_METRICS
) -> CountQueries:
    """The cumulative counters behind a comparison, filled for one version on one track."""
    if rule.template is not None:
        found = templates.counts.get(rule.template)
        if found is None:
            known = ", ".join(sorted(templates.counts))
            raise UnknownTemplate(
                f"comparison {rule.name!r}: no count template {rule.template!r} ({known})"
            )
        raw = found
    else:
        raw = CountQueries(rule.events, rule.trials, rule.buckets)

    def filled(text: str | None) -> str | None:
        return None if text is None else fill(text, context)

    return CountQueries(filled(raw.events), filled(raw.trials), filled(raw.buckets))


def sample_size_query(context: QueryContext, templates: TemplateSet = HTTP_METRICS) -> str:
    return fill(templates.sample_size, context)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
