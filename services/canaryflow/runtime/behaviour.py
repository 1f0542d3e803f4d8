"""Per-version behaviour, read from a ConfigMap that tests and demos write.

A test releases a version that is worse in a known way (more errors, a slower tail, fewer
sales) and then checks that canaryflow notices. The configuration therefore has to be
forgiving: a typo must never stop traffic for the whole namespace. Every problem is reported
back to the caller, which logs it, and the affected field falls back to its default.

Read by the pods' server (``canaryflow.dataplane.pods``), which acts out each version on real
requests. The ConfigMap keeps the name it had when a traffic simulator read it
(``canaryflow-simulator``), so the ConfigMaps people already wrote keep working.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CONFIGMAP_NAME = "canaryflow-simulator"

# z-score of the 99th percentile of the standard normal distribution.
Z_P99 = 2.3263478740408408

DEFAULT_ERROR_RATE = 0.005
DEFAULT_CONVERSION_RATE = 0.05
DEFAULT_MEDIAN_MS = 50.0
DEFAULT_P99_MS = 150.0
_DEFAULT_SPREAD = DEFAULT_P99_MS / DEFAULT_MEDIAN_MS

_TOP_KEYS = frozenset({"error_rate", "latency_ms", "conversion_rate"})
_LATENCY_KEYS = frozenset({"median", "p99", "tail"})
_TAIL_KEYS = frozenset({"probability", "multiplier"})


@dataclass(frozen=True)
class Behaviour:
    error_rate: float = DEFAULT_ERROR_RATE
    conversion_rate: float = DEFAULT_CONVERSION_RATE
    median_s: float = DEFAULT_MEDIAN_MS / 1000.0
    p99_s: float = DEFAULT_P99_MS / 1000.0
    tail_probability: float = 0.0
    tail_multiplier: float = 1.0

    @property
    def mu(self) -> float:
        """Location of the log-normal: the log of the median."""
        return math.log(self.median_s)

    @property
    def sigma(self) -> float:
        """Shape of the log-normal chosen so that its 99th percentile is ``p99_s``."""
        return math.log(self.p99_s / self.median_s) / Z_P99

    def as_json(self) -> dict[str, Any]:
        """The same shape the ConfigMap uses, for the /split debugging view."""
        return {
            "error_rate": self.error_rate,
            "conversion_rate": self.conversion_rate,
            "latency_ms": {
                "median": self.median_s * 1000.0,
                "p99": self.p99_s * 1000.0,
                "tail": {
                    "probability": self.tail_probability,
                    "multiplier": self.tail_multiplier,
                },
            },
        }


DEFAULT_BEHAVIOUR = Behaviour()


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


class _Reader:
    """Collects problems while reading one JSON document."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def section(
        self, parent: Mapping[str, Any], key: str, allowed: frozenset[str]
    ) -> dict[str, Any]:
        if key not in parent:
            return {}
        value = parent[key]
        if not isinstance(value, dict):
            self.problems.append(f"{key}: expected an object, got {type(value).__name__}")
            return {}
        self.unknown(value, allowed, prefix=f"{key}.")
        return value

    def unknown(self, value: Mapping[str, Any], allowed: frozenset[str], prefix: str = "") -> None:
        for key in sorted(set(value) - allowed):
            self.problems.append(f"{prefix}{key}: unknown key, ignored")

    def fraction(self, parent: Mapping[str, Any], key: str, default: float, name: str) -> float:
        if key not in parent:
            return default
        number = _number(parent[key])
        if number is None or not 0.0 <= number <= 1.0:
            self.problems.append(f"{name}: expected a number in [0, 1], got {parent[key]!r}")
            return default
        return number

    def positive(self, parent: Mapping[str, Any], key: str, name: str) -> float | None:
        if key not in parent:
            return None
        number = _number(parent[key])
        if number is None or number <= 0.0:
            self.problems.append(f"{name}: expected a positive number, got {parent[key]!r}")
            return None
        return number


def parse_behaviour(raw: str) -> tuple[Behaviour, tuple[str, ...]]:
    """Parse one ConfigMap value; return the behaviour to use and the problems found.

    Missing keys take the defaults. When only one of median and p99 is given, the other keeps
    the default spread (p99 = 3 x median), so ``{"latency_ms": {"median": 400}}`` means a
    slower version rather than an impossible distribution.
    """
    try:
        document = json.loads(raw)
    except ValueError as exc:
        return DEFAULT_BEHAVIOUR, (f"invalid JSON ({exc}); using defaults",)
    if not isinstance(document, dict):
        kind = type(document).__name__
        return DEFAULT_BEHAVIOUR, (f"expected a JSON object, got {kind}; using defaults",)

    reader = _Reader()
    reader.unknown(document, _TOP_KEYS)
    error_rate = reader.fraction(document, "error_rate", DEFAULT_ERROR_RATE, "error_rate")
    conversion = reader.fraction(
        document, "conversion_rate", DEFAULT_CONVERSION_RATE, "conversion_rate"
    )
    latency = reader.section(document, "latency_ms", _LATENCY_KEYS)
    median = reader.positive(latency, "median", "latency_ms.median")
    p99 = reader.positive(latency, "p99", "latency_ms.p99")
    if median is None and p99 is None:
        median, p99 = DEFAULT_MEDIAN_MS, DEFAULT_P99_MS
    elif median is None:
        assert p99 is not None
        median = min(DEFAULT_MEDIAN_MS, p99 / _DEFAULT_SPREAD)
    elif p99 is None:
        p99 = median * _DEFAULT_SPREAD
    if p99 < median:
        reader.problems.append(
            f"latency_ms.p99 ({p99:g}) is below the median ({median:g}); using p99 = median"
        )
        p99 = median

    tail = reader.section(latency, "tail", _TAIL_KEYS)
    probability = reader.fraction(tail, "probability", 0.0, "latency_ms.tail.probability")
    multiplier = reader.positive(tail, "multiplier", "latency_ms.tail.multiplier")

    behaviour = Behaviour(
        error_rate=error_rate,
        conversion_rate=conversion,
        median_s=median / 1000.0,
        p99_s=p99 / 1000.0,
        tail_probability=probability,
        tail_multiplier=1.0 if multiplier is None else multiplier,
    )
    return behaviour, tuple(reader.problems)


def parse_configmap(
    data: Mapping[str, str] | None,
) -> tuple[dict[str, Behaviour], dict[str, tuple[str, ...]]]:
    """Behaviours by image tag, and the problems found per key."""
    behaviours: dict[str, Behaviour] = {}
    problems: dict[str, tuple[str, ...]] = {}
    for key, raw in (data or {}).items():
        behaviour, found = parse_behaviour(raw)
        behaviours[key] = behaviour
        if found:
            problems[key] = found
    return behaviours, problems
