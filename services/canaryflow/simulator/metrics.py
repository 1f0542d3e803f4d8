"""The Prometheus side: the series canary analysis queries.

Names and labels follow the common HTTP conventions so the queries canaryflow runs here are
the ones it would run against a real service. Series are created as soon as a group appears
(a counter that springs into existence at its first error hides that error from rate()),
and dropped some time after the group is gone, so a long demo does not pile up dead series.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from canaryflow.simulator.model import GroupKey, ServiceKey, Target
from canaryflow.simulator.traffic import Outcome

LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
)  # fmt: skip
_GROUP_LABELS = ("namespace", "service", "version", "track")
_KNOWN_CODES = ("200", "500")

_Series = tuple[ServiceKey, GroupKey]


def _values(service: ServiceKey, group: GroupKey) -> tuple[str, str, str, str]:
    return service.namespace, service.name, group.version, group.track


class PrometheusSink:
    def __init__(self, registry: CollectorRegistry, retention_s: float = 300.0) -> None:
        self._retention_s = retention_s
        self.requests = Counter(
            "http_requests_total",
            "Simulated requests by the version that served them and status code.",
            (*_GROUP_LABELS, "code"),
            registry=registry,
        )
        self.duration = Histogram(
            "http_request_duration_seconds",
            "Latency of simulated requests.",
            _GROUP_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.visits = Counter(
            "shop_visits_total", "Simulated shop visits.", _GROUP_LABELS, registry=registry
        )
        self.purchases = Counter(
            "shop_purchases_total",
            "Simulated visits that ended in a purchase.",
            _GROUP_LABELS,
            registry=registry,
        )
        self.unrouted_requests = Counter(
            "simulator_unrouted_requests_total",
            "Requests for a Service that had no Ready pod to go to.",
            ("namespace", "service"),
            registry=registry,
        )
        self.discovery_errors = Counter(
            "simulator_discovery_errors_total",
            "Discovery rounds that failed to list Services.",
            registry=registry,
        )
        self.last_discovery = Gauge(
            "simulator_last_discovery_timestamp_seconds",
            "Unix time of the last successful discovery.",
            registry=registry,
        )
        self._codes: dict[_Series, set[str]] = {}
        self._last_seen: dict[_Series, float] = {}
        self._unrouted_seen: dict[ServiceKey, float | None] = {}

    def record(self, service: ServiceKey, group: GroupKey, outcome: Outcome) -> None:
        key = (service, group)
        values = _values(service, group)
        codes = self._codes.get(key) or self._create(key)
        codes.add(outcome.code)
        self.requests.labels(*values, outcome.code).inc()
        self.duration.labels(*values).observe(outcome.latency_s)
        self.visits.labels(*values).inc()
        if outcome.purchased:
            self.purchases.labels(*values).inc()

    def unrouted(self, service: ServiceKey, count: int) -> None:
        self._unrouted_seen.setdefault(service, None)
        self.unrouted_requests.labels(service.namespace, service.name).inc(count)

    def sync(self, targets: Iterable[Target], now: float) -> None:
        """Create the series of every current group; drop those gone for ``retention_s``."""
        current_services: set[ServiceKey] = set()
        for target in targets:
            current_services.add(target.service)
            for route in target.routes:
                key = (target.service, route.group)
                self._last_seen[key] = now
                if key not in self._codes:
                    self._create(key)
        for key in list(self._codes):
            if now - self._last_seen.setdefault(key, now) > self._retention_s:
                self._forget(key)
        for service, seen in list(self._unrouted_seen.items()):
            if service in current_services or seen is None:
                self._unrouted_seen[service] = now
            elif now - seen > self._retention_s:
                del self._unrouted_seen[service]
                self.unrouted_requests.remove(service.namespace, service.name)

    def _create(self, key: _Series) -> set[str]:
        values = _values(*key)
        for code in _KNOWN_CODES:
            self.requests.labels(*values, code)
        self.duration.labels(*values)
        self.visits.labels(*values)
        self.purchases.labels(*values)
        codes = set(_KNOWN_CODES)
        self._codes[key] = codes
        return codes

    def _forget(self, key: _Series) -> None:
        values = _values(*key)
        for code in self._codes.pop(key):
            self.requests.remove(*values, code)
        for metric in (self.duration, self.visits, self.purchases):
            metric.remove(*values)
        del self._last_seen[key]
