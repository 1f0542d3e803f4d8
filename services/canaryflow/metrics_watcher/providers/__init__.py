"""Metric providers: where to ask. Adding a backend adds one module and one line below."""

from __future__ import annotations

from canaryflow.metrics_watcher.providers.base import MetricProvider, ProviderError
from canaryflow.metrics_watcher.providers.http_json import HttpJsonProvider
from canaryflow.metrics_watcher.providers.prometheus import PrometheusProvider
from canaryflow.runtime.settings import Settings
from canaryflow_contracts.policy import ProviderKind, ProviderRef

__all__ = [
    "HttpJsonProvider",
    "MetricProvider",
    "PrometheusProvider",
    "ProviderError",
    "ProviderPool",
    "create_provider",
]


def create_provider(kind: str, settings: Settings) -> MetricProvider:
    if kind == "prometheus":
        return PrometheusProvider(settings.prometheus_url)
    raise ValueError(f"unknown metrics provider {kind!r}; known: prometheus")


def provider_for(ref: ProviderRef) -> MetricProvider:
    """The backend a policy names (``analysis.provider``)."""
    if ref.type is ProviderKind.PROMETHEUS:
        return PrometheusProvider(ref.address)
    return HttpJsonProvider(ref.address, value_path=ref.value_path, series_path=ref.series_path)


class ProviderPool:
    """The default provider, plus one per backend a policy names (made once, kept)."""

    def __init__(self, default: MetricProvider) -> None:
        self.default = default
        self._named: dict[ProviderRef, MetricProvider] = {}

    def get(self, ref: ProviderRef | None) -> MetricProvider:
        if ref is None:
            return self.default
        if ref not in self._named:
            self._named[ref] = provider_for(ref)
        return self._named[ref]
