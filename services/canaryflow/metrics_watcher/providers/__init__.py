"""Metric providers: where to ask. Adding a backend adds one module and one line below."""

from __future__ import annotations

from canaryflow.metrics_watcher.providers.base import MetricProvider, ProviderError
from canaryflow.metrics_watcher.providers.prometheus import PrometheusProvider
from canaryflow.runtime.settings import Settings

__all__ = ["MetricProvider", "PrometheusProvider", "ProviderError", "create_provider"]


def create_provider(kind: str, settings: Settings) -> MetricProvider:
    if kind == "prometheus":
        return PrometheusProvider(settings.prometheus_url)
    raise ValueError(f"unknown metrics provider {kind!r}; known: prometheus")
