"""The tick loop of one step, with a scripted provider and a clock that jumps."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from canaryflow.metrics_watcher.analysis import AnalysisJob, Analyst
from canaryflow.metrics_watcher.progress import MemoryProgress
from canaryflow.metrics_watcher.providers.base import ANSWER_SECONDS
from canaryflow_contracts.events import AnalysisVerdict, VerdictAction, VerdictResult
from canaryflow_contracts.state import ReleaseStatus
from tests.unit.metrics_watcher.fakes import (
    HEALTHY,
    OFFLINE,
    QUIET,
    T0,
    FakeClock,
    FakePolicies,
    FakeProvider,
    FakeReleases,
    Published,
    Scene,
    policy,
    request,
    state,
)

BAD: Scene = {**HEALTHY, "error-rate": 0.3}
TOKEN = hashlib.sha256(b"rel-1.analyse.0").hexdigest()[:8]
RUN = f"rel-1.verdict.0.{TOKEN}"


class Rig:
    def __init__(
        self,
        provider: FakeProvider,
        *,
        clock: FakeClock | None = None,
        policies: FakePolicies | None = None,
    ) -> None:
        self.provider = provider
        self.clock = clock or FakeClock()
        self.releases = FakeReleases()
        self.policies = policies or FakePolicies()
        self.published = Published()
        self.progress = MemoryProgress()
        self.analyst = Analyst(
            provider=provider,
            clock=self.clock,
            releases=self.releases,
            policies=self.policies,
            publish=self.published,
            progress=self.progress,
        )

    async def run(self, step_index: int = 0, hold: float = 10) -> AnalysisVerdict | None:
        job = AnalysisJob("rel-1", "rel-1.analyse.0", request(step_index, hold), anchor=T0)
        return await self.analyst.run(job)


async def test_a_healthy_canary_passes_every_tick_and_the_step() -> None:
    rig = Rig(FakeProvider([HEALTHY]))
    final = await rig.run()
    assert rig.published.ids == [f"{RUN}.0", f"{RUN}.1", f"{RUN}.final"]
    assert rig.clock.sleeps == [5, 5]
    assert [(v.result, v.action, v.final) for v in rig.published.verdicts] == [
        (VerdictResult.PASS, VerdictAction.CONTINUE, False),
        (VerdictResult.PASS, VerdictAction.CONTINUE, False),
        (VerdictResult.PASS, VerdictAction.CONTINUE, True),
    ]
    assert final == rig.published.verdicts[-1]
    assert rig.policies.asked == [("demo", "shop-policy")]


async def test_every_verdict_carries_canary_checks_and_baseline_evidence() -> None:
    rig = Rig(FakeProvider([HEALTHY], stable=[{**HEALTHY, "error-rate": 0.02}]))
    await rig.run(hold=0)
    (verdict,) = rig.published.verdicts
    by_key = {(check.metric, check.track): check for check in verdict.checks}
    assert set(by_key) == {
        (metric, track)
        for metric in ("sample-size", "error-rate", "p99-latency", "request-rate")
        for track in ("canary", "baseline")
    }
    canary_errors = by_key["error-rate", "canary"]
    assert (canary_errors.value, canary_errors.threshold, canary_errors.sample_size) == (
        0.01,
        0.05,
        600,
    )
    assert 'version="v2",track="canary"' in canary_errors.query
    stable_errors = by_key["error-rate", "baseline"]
    assert (stable_errors.value, stable_errors.passed, stable_errors.comparison) == (
        0.02,
        None,
        "n/a",
    )
    assert 'version="v1",track="baseline"' in stable_errors.query


async def test_a_bad_tick_fails_fast_with_a_final_rollback_verdict() -> None:
    rig = Rig(FakeProvider([HEALTHY, BAD, HEALTHY]))
    final = await rig.run(hold=60)
    assert rig.published.ids == [f"{RUN}.0", f"{RUN}.final"]
    assert final is not None
    assert (final.result, final.action, final.final) == (
        VerdictResult.FAIL,
        VerdictAction.ROLLBACK,
        True,
    )
    assert "error-rate 0.3 above max 0.05" in final.reason
    assert rig.clock.sleeps == [5]  # no tick after the failure
    assert rig.provider.ticks == 2


async def test_a_release_that_moved_on_is_left_alone_silently() -> None:
    rig = Rig(FakeProvider([HEALTHY]))

    def promote_after_first_sleep(sleeps: int) -> None:
        rig.releases.current = state(ReleaseStatus.APPLYING, step_index=1)

    rig.clock.on_sleep = promote_after_first_sleep
    assert await rig.run() is None
    assert rig.published.ids == [f"{RUN}.0"]
    assert rig.provider.ticks == 1


async def test_a_release_already_gone_gets_no_verdict() -> None:
    rig = Rig(FakeProvider([HEALTHY]))
    rig.releases.current = state(ReleaseStatus.ROLLED_BACK)
    assert await rig.run() is None
    assert rig.published.events == []
    assert rig.provider.ticks == 0


async def test_warm_up_ticks_may_lack_data_but_the_end_of_the_hold_decides() -> None:
    rig = Rig(FakeProvider([QUIET, HEALTHY]))
    final = await rig.run()
    results = [(v.result, v.action) for v in rig.published.verdicts]
    assert results == [
        (VerdictResult.INSUFFICIENT_DATA, VerdictAction.CONTINUE),
        (VerdictResult.PASS, VerdictAction.CONTINUE),
        (VerdictResult.PASS, VerdictAction.CONTINUE),
    ]
    assert final is not None and final.final


async def test_too_little_traffic_at_the_end_pauses_never_passes() -> None:
    rig = Rig(FakeProvider([HEALTHY, HEALTHY, QUIET]))
    final = await rig.run()
    assert final is not None
    assert (final.result, final.action, final.final) == (
        VerdictResult.INSUFFICIENT_DATA,
        VerdictAction.PAUSE,
        True,
    )
    assert "fewer than minRequests 50" in final.reason


async def test_prometheus_down_is_insufficient_data_with_that_reason() -> None:
    rig = Rig(FakeProvider([OFFLINE]))
    final = await rig.run()
    assert [v.result for v in rig.published.verdicts] == [VerdictResult.INSUFFICIENT_DATA] * 3
    assert final is not None and final.action is VerdictAction.PAUSE
    assert "fake is not answering" in final.reason
    assert rig.provider.queries == []
    # The evidence still says what would have been asked.
    assert all(check.query and check.value is None for check in final.checks)


async def test_a_redelivered_request_resumes_the_schedule_instead_of_restarting() -> None:
    rig = Rig(FakeProvider([HEALTHY]), clock=FakeClock(T0 + timedelta(seconds=7)))
    await rig.run()
    assert rig.published.ids == [f"{RUN}.1", f"{RUN}.final"]
    assert rig.clock.sleeps == [3]


async def test_a_request_redelivered_after_the_hold_gives_the_final_verdict_at_once() -> None:
    rig = Rig(FakeProvider([HEALTHY]), clock=FakeClock(T0 + timedelta(minutes=5)))
    await rig.run()
    assert rig.published.ids == [f"{RUN}.final"]
    assert rig.clock.sleeps == []


async def test_ids_carry_the_step() -> None:
    rig = Rig(FakeProvider([HEALTHY]))
    rig.releases.current = state(step_index=1)
    await rig.run(step_index=1, hold=0)
    assert rig.published.ids == [f"rel-1.verdict.1.{TOKEN}.final"]


async def test_a_missing_policy_pauses_the_release_with_the_reason() -> None:
    rig = Rig(FakeProvider([HEALTHY]), policies=FakePolicies(spec=None))
    final = await rig.run()
    assert rig.published.ids == [f"{RUN}.final"]
    assert final is not None
    assert (final.result, final.action) == (VerdictResult.INSUFFICIENT_DATA, VerdictAction.PAUSE)
    assert "ReleasePolicy demo/shop-policy not found" in final.reason


async def test_the_policy_service_name_labels_the_queries() -> None:
    rig = Rig(FakeProvider([HEALTHY]), policies=FakePolicies(policy(service="shop-web")))
    await rig.run(hold=0)
    assert all('service="shop-web"' in query for query in rig.provider.queries)


async def test_a_new_request_for_the_same_step_gets_verdict_ids_of_its_own() -> None:
    rig = Rig(FakeProvider([HEALTHY]))
    again = AnalysisJob("rel-1", "rel-1.analyse.0.r1", request(0, 0), anchor=T0)
    await rig.analyst.run(again)
    (event_id,) = rig.published.ids
    assert event_id.startswith("rel-1.verdict.0.") and event_id.endswith(".final")
    assert event_id != f"{RUN}.final"


async def test_no_pass_while_the_window_reaches_back_into_an_outage() -> None:
    """Found by make chaos: passes 4-8 s after Prometheus came back, on windows (30 s here)
    that covered the time it was down and scraped nothing."""
    rig = Rig(FakeProvider([OFFLINE, HEALTHY]))
    final = await rig.run(hold=40)  # ticks every 5 s from 0 to 40; down at the first

    results = [v.result for v in rig.published.verdicts]
    assert results == [VerdictResult.INSUFFICIENT_DATA] * 6 + [VerdictResult.PASS] * 3
    assert "unavailable 5.0s ago, within the 30s window" in rig.published.verdicts[1].reason
    assert final is not None and final.result is VerdictResult.PASS


async def test_no_pass_on_a_window_with_a_hole_this_service_never_saw() -> None:
    """Found by make chaos: a 17 s Prometheus freeze ended before the step's analysis began,
    and canaries passed 6 s later on 10 s windows that reached back into it. The source says
    how long it collected nothing: more than half the window is not judged."""

    class Holed(FakeProvider):
        async def collection_gap(self, window_seconds: float) -> float | None:
            assert window_seconds == 30  # the policy's window
            return [17.0, 15.1, 15.0, 2.0][min(self.ticks - 1, 3)]

    rig = Rig(Holed([HEALTHY]))
    final = await rig.run(hold=15)  # ticks at 0, 5, 10, 15

    results = [v.result for v in rig.published.verdicts]
    reasons = [v.reason for v in rig.published.verdicts]
    # 17 s and 15.1 s of 30 s are holes; exactly half is judged (a long scrape interval).
    assert results == [VerdictResult.INSUFFICIENT_DATA] * 2 + [VerdictResult.PASS] * 2, reasons
    assert "fake collected no sample for 17s of the 30s window" in reasons[0], reasons
    assert final is not None and final.result is VerdictResult.PASS


async def test_a_late_answer_counts_as_an_outage_of_the_metrics_source() -> None:
    clock = FakeClock()

    class Frozen(FakeProvider):
        async def is_online(self) -> bool:
            online = await super().is_online()
            if self.ticks == 1:  # a frozen Prometheus answers the first tick 20 s late
                clock.now_value += timedelta(seconds=20)
            return online

    rig = Rig(Frozen([HEALTHY]), clock=clock)
    await rig.run(hold=60)

    passed = [v for v in rig.published.verdicts if v.result is VerdictResult.PASS]
    assert passed, [v.reason for v in rig.published.verdicts]
    first = rig.published.verdicts[0]
    assert first.result is VerdictResult.INSUFFICIENT_DATA, first.reason


async def test_a_tick_slowed_by_this_replicas_own_queue_is_not_an_outage() -> None:
    clock = FakeClock()

    class Queued(FakeProvider):
        async def is_online(self) -> bool:
            online = await super().is_online()
            if self.ticks == 1:  # the first tick's queries waited 20 s for their turns here
                clock.now_value += timedelta(seconds=20)
            return online

        async def query(self, query: str) -> float | None:
            answered = ANSWER_SECONDS.get()
            if answered is not None:
                answered.append(0.05)  # once asked, the source answered at once
            return await super().query(query)

    rig = Rig(Queued([HEALTHY]), clock=clock)
    await rig.run(hold=60)

    first = rig.published.verdicts[0]
    assert first.result is VerdictResult.PASS, first.reason
