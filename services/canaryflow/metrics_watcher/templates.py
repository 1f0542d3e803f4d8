"""What to ask: the PromQL behind each named metric, apart from where it is asked.

A policy names a metric (``error-rate``) or brings its own PromQL; both are filled with the
same variables for each measured version, so a raw query is exactly as expressive as a
built-in one. The built-ins follow the common HTTP conventions the traffic simulator exports
(``http_requests_total`` with a ``code`` label, ``http_request_duration_seconds`` histogram),
labelled by namespace, service, version (the image tag) and track.

Placeholders are replaced by name rather than with ``str.format``, because PromQL is full of
braces of its own; label values are escaped for a PromQL double-quoted string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from canaryflow_contracts.policy import MetricRule, MetricTemplate

_PLACEHOLDER = re.compile(r"\{(namespace|service|version|track|window)\}")

# The series of one version on one track.
_SELECTOR = 'namespace="{namespace}",service="{service}",version="{version}",track="{track}"'


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
class TemplateSet:
    """The queries of one metrics convention (here: the simulator's HTTP metrics).

    ``sample_size`` counts the requests a version served in the window; the judge needs it to
    tell "no problem seen" from "too little traffic to see one".
    """

    metrics: dict[MetricTemplate, str]
    sample_size: str


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
    },
    sample_size=f"sum(increase(http_requests_total{{{_SELECTOR}}}[{{window}}]))",
)


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
    return fill(templates.metrics[rule.template], context)


def sample_size_query(context: QueryContext, templates: TemplateSet = HTTP_METRICS) -> str:
    return fill(templates.sample_size, context)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
