"""Stand-ins for the metrics-watcher's collaborators: a provider answering from a script, a
clock that jumps instead of sleeping, and a release store that holds one state."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from canaryflow.metrics_watcher.policies import PolicyProblem
from canaryflow.metrics_watcher.providers import ProviderError
from canaryflow.runtime.store import Versioned
from canaryflow_contracts.events import (
    AnalysisVerdict,
    PlannedStep,
    RequestAnalysis,
    TargetRef,
)
from canaryflow_contracts.policy import ReleasePolicySpec
from canaryflow_contracts.state import ReleaseState, ReleaseStatus
from tests.unit.support_state import sample_state

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
TARGET = TargetRef(namespace="demo", name="shop")

# What one track shows in one tick: metric kind -> value (None: no data).
Scene = dict[str, float | None]
HEALTHY: Scene = {"sample": 600, "error-rate": 0.01, "p99-latency": 0.2, "request-rate": 20}
QUIET: Scene = {"sample": 3, "error-rate": 0.0, "p99-latency": 0.1, "request-rate": 0.1}
OFFLINE = "offline"


def policy(
    *,
    hold: float = 10,
    interval: float = 5,
    min_requests: int = 50,
    service: str | None = None,
) -> ReleasePolicySpec:
    return ReleasePolicySpec.model_validate(
        {
            "targetRef": "shop",
            "service": service,
            "steps": [{"weight": 10, "holdSeconds": hold}, {"weight": 50, "holdSeconds": hold}],
            "analysis": {
                "intervalSeconds": interval,
                "windowSeconds": 30,
                "minRequests": min_requests,
                "metrics": [
                    {"name": "error-rate", "template": "error-rate", "max": 0.05},
                    {"name": "p99-latency", "template": "p99-latency", "max": 0.5},
                    {"name": "request-rate", "template": "request-rate", "min": 1},
                ],
            },
        }
    )


def request(step_index: int = 0, hold: float = 10) -> RequestAnalysis:
    return RequestAnalysis(
        target=TARGET,
        step=PlannedStep(index=step_index, weight=10, hold_seconds=hold),
        canary_version="v2",
        stable_version="v1",
        policy="shop-policy",
    )


def state(status: ReleaseStatus = ReleaseStatus.ANALYSING, step_index: int = 0) -> ReleaseState:
    steps = [
        PlannedStep(index=0, weight=10, hold_seconds=10),
        PlannedStep(index=1, weight=50, hold_seconds=10),
    ]
    return sample_state("rel-1").model_copy(
        update={"target": TARGET, "steps": steps, "status": status, "step_index": step_index}
    )


def kind_of(query: str) -> str:
    if "increase(" in query:
        return "sample"
    if "code=~" in query:
        return "error-rate"
    if "histogram_quantile" in query:
        return "p99-latency"
    return "request-rate"


@dataclass
class FakeProvider:
    """Answers from one scene per tick (a tick starts with ``is_online``); the last repeats."""

    canary: list[Scene | str]
    stable: list[Scene | str] = field(default_factory=lambda: [HEALTHY])
    queries: list[str] = field(default_factory=list)
    ticks: int = 0
    name: str = "fake"
    gap: float | None = None  # what collection_gap answers

    def _scene(self, scenes: list[Scene | str]) -> Scene | str:
        return scenes[min(self.ticks - 1, len(scenes) - 1)]

    async def collection_gap(self, window_seconds: float) -> float | None:
        return self.gap

    async def is_online(self) -> bool:
        self.ticks += 1
        return self._scene(self.canary) != OFFLINE

    async def query(self, query: str) -> float | None:
        self.queries.append(query)
        scene = self._scene(self.canary if 'track="canary"' in query else self.stable)
        if scene == OFFLINE:
            raise ProviderError("connection refused")
        assert isinstance(scene, dict)
        return scene[kind_of(query)]

    async def query_vector(self, query: str, label: str) -> dict[str, float]:
        self.queries.append(query)
        return {}

    async def aclose(self) -> None:
        return None


@dataclass
class FakeClock:
    now_value: datetime = T0
    sleeps: list[float] = field(default_factory=list)
    on_sleep: Callable[[int], None] | None = None

    def now(self) -> datetime:
        return self.now_value

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now_value += timedelta(seconds=seconds)
        if self.on_sleep is not None:
            self.on_sleep(len(self.sleeps))


@dataclass
class FakeReleases:
    current: ReleaseState | None = field(default_factory=state)
    reads: int = 0

    async def get(self, release_id: str) -> Versioned | None:
        self.reads += 1
        return None if self.current is None else Versioned(self.current, self.reads)


@dataclass
class FakePolicies:
    spec: ReleasePolicySpec | None = field(default_factory=policy)
    asked: list[tuple[str, str]] = field(default_factory=list)

    async def get(self, namespace: str, name: str) -> ReleasePolicySpec:
        self.asked.append((namespace, name))
        if self.spec is None:
            raise PolicyProblem(f"ReleasePolicy {namespace}/{name} not found")
        return self.spec


@dataclass
class Published:
    events: list[tuple[str, AnalysisVerdict, str]] = field(default_factory=list)

    async def __call__(self, release_id: str, verdict: AnalysisVerdict, event_id: str) -> None:
        self.events.append((release_id, verdict, event_id))

    @property
    def ids(self) -> list[str]:
        return [event_id for _, _, event_id in self.events]

    @property
    def verdicts(self) -> list[AnalysisVerdict]:
        return [verdict for _, verdict, _ in self.events]
