"""A step judged against the live baseline: counters per tick, sequential test, extensions."""

from __future__ import annotations

from dataclasses import dataclass, field

from canaryflow.metrics_watcher.analysis import AnalysisJob, Analyst
from canaryflow.metrics_watcher.progress import MemoryProgress
from canaryflow_contracts.events import VerdictAction, VerdictResult
from canaryflow_contracts.policy import ReleasePolicySpec
from tests.unit.metrics_watcher.fakes import (
    T0,
    FakeClock,
    FakePolicies,
    FakeReleases,
    Published,
    request,
)


def policy(
    *, business: bool = False, verdicts: dict[str, object] | None = None
) -> ReleasePolicySpec:
    analysis: dict[str, object] = {
        "intervalSeconds": 5,
        "minRequests": 100,
        "compare": [
            {"name": "errors", "template": "errors"},
            {"name": "latency", "template": "latency"},
        ],
        "templates": [
            {
                "name": "orders",
                "events": 'orders{{track="{track}"}}',
                "trials": 'carts{{track="{track}"}}',
            }
        ],
    }
    if business:
        analysis["business"] = [
            {
                "name": "orders",
                "template": "orders",
                "minimumDetectableEffect": 0.3,
                "onDrop": "pause",
            }
        ]
    if verdicts:
        analysis["verdicts"] = verdicts
    return ReleasePolicySpec.model_validate(
        {"targetRef": "shop", "steps": [{"weight": 10, "holdSeconds": 10}], "analysis": analysis}
    )


@dataclass
class Counters:
    """Cumulative counters growing by a fixed amount per tick (a tick starts with is_online)."""

    per_tick: dict[str, dict[str, float]]  # track -> counter -> increment
    ticks: int = 0
    queries: list[str] = field(default_factory=list)
    name: str = "counters"
    gap: float | None = None  # what collection_gap answers

    async def collection_gap(self, window_seconds: float) -> float | None:
        return self.gap

    async def is_online(self) -> bool:
        self.ticks += 1
        return True

    def _track(self, query: str) -> dict[str, float]:
        track = "canary" if 'track="canary"' in query else "baseline"
        return {k: v * (self.ticks - 1) for k, v in self.per_tick[track].items()}

    async def query(self, query: str) -> float | None:
        self.queries.append(query)
        counters = self._track(query)
        if "increase(" in query:
            return self.per_tick["canary"]["requests"] * 6
        if "orders" in query:
            return counters["orders"]
        if "carts" in query:
            return counters["carts"]
        return counters["errors"] if 'code=~"5.."' in query else counters["requests"]

    async def query_vector(self, query: str, label: str) -> dict[str, float]:
        counters = self._track(query)
        return {"0.1": counters["fast"], "+Inf": counters["requests"]}

    async def aclose(self) -> None:
        return None


def side(requests: float, errors: float, fast: float, orders: float = 50) -> dict[str, float]:
    return {
        "requests": requests,
        "errors": errors,
        "fast": fast,
        "orders": orders,
        "carts": requests,
    }


async def analyse(provider: Counters, spec: ReleasePolicySpec) -> Published:
    published = Published()
    analyst = Analyst(
        provider=provider,
        clock=FakeClock(),
        releases=FakeReleases(),
        policies=FakePolicies(spec),
        publish=published,
        progress=MemoryProgress(),
    )
    await analyst.run(AnalysisJob("rel-1", "rel-1.analyse.0", request(hold=10), anchor=T0))
    return published


async def test_a_canary_like_its_baseline_passes_on_both_comparisons() -> None:
    provider = Counters({"canary": side(500, 5, 450), "baseline": side(500, 5, 450)})
    published = await analyse(provider, policy())
    final = published.verdicts[-1]
    assert (final.result, final.action, final.final) == (
        VerdictResult.PASS,
        VerdictAction.CONTINUE,
        True,
    )
    compared = {c.metric: c for c in final.checks if c.method}
    assert set(compared) == {"errors", "latency"}
    assert (
        compared["errors"].sample_size == 1000 and compared["errors"].baseline_sample_size == 1000
    )
    assert any(
        'track="baseline",version="v1"' in q or 'version="v1",track="baseline"' in q
        for q in provider.queries
    )
    # The first tick only reads where the counters start: too little data, never a pass.
    assert published.verdicts[0].result is VerdictResult.INSUFFICIENT_DATA


async def test_a_slower_canary_fails_on_the_histogram() -> None:
    provider = Counters({"canary": side(500, 5, 300), "baseline": side(500, 5, 450)})
    published = await analyse(provider, policy())
    final = published.verdicts[-1]
    assert (final.result, final.action, final.final) == (
        VerdictResult.FAIL,
        VerdictAction.ROLLBACK,
        True,
    )
    assert len(published.verdicts) == 2, "the first tick with data decides"
    assert "latency" in final.reason and "slower" in final.reason


async def test_an_unsettled_business_metric_extends_the_hold_once_then_pauses() -> None:
    provider = Counters({"canary": side(500, 5, 450, 25), "baseline": side(500, 5, 450, 25)})
    published = await analyse(provider, policy(business=True))
    actions = [(v.result, v.action, v.final) for v in published.verdicts]
    assert (VerdictResult.INCONCLUSIVE, VerdictAction.EXTEND, False) in actions
    assert actions[-1] == (VerdictResult.INCONCLUSIVE, VerdictAction.PAUSE, True)
    assert len(published.verdicts) == 5  # 0, 5, 10 s, then the extension's 15 and 20 s
    lift = next(c for c in published.verdicts[-1].checks if c.metric == "orders")
    assert lift.method == "msprt-business" and lift.estimate == 0.0
    assert lift.lower is not None and lift.lower < -0.3


async def test_a_business_drop_held_for_a_person_pauses_at_once() -> None:
    provider = Counters(
        {"canary": side(5000, 50, 4500, 100), "baseline": side(5000, 50, 4500, 400)}
    )
    published = await analyse(provider, policy(business=True))
    final = published.verdicts[-1]
    assert (final.result, final.action, final.final) == (
        VerdictResult.FAIL,
        VerdictAction.PAUSE,
        True,
    )
    assert "held for a decision" in final.reason


async def test_an_unknown_template_pauses_with_the_reason() -> None:
    spec = policy()
    broken = spec.model_copy(
        update={
            "analysis": spec.analysis.model_copy(
                update={
                    "compare": [spec.analysis.compare[0].model_copy(update={"template": "nope"})]
                }
            )
        }
    )
    published = await analyse(
        Counters({"canary": side(1, 1, 1), "baseline": side(1, 1, 1)}), broken
    )
    (only,) = published.verdicts
    assert (only.result, only.action) == (VerdictResult.INSUFFICIENT_DATA, VerdictAction.PAUSE)
    assert "no count template 'nope'" in only.reason
