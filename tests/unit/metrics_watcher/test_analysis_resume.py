"""An analysis interrupted at any moment is continued by the next delivery, with the same result.

A delivery is "killed" by a clock or publisher that raises at a chosen point; the next
delivery (a later attempt, on a fresh Analyst as in a restarted or other replica) shares only
the progress store with it, as two processes share the KV bucket.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from canaryflow.metrics_watcher.analysis import AnalysisJob, Analyst, Publish
from canaryflow.metrics_watcher.progress import AnalysisProgress, MemoryProgress
from canaryflow.runtime.bus import HandedOver
from canaryflow_contracts.events import AnalysisVerdict, VerdictAction, VerdictResult
from canaryflow_contracts.policy import ReleasePolicySpec
from tests.unit.metrics_watcher.fakes import (
    T0,
    FakeClock,
    FakePolicies,
    FakeReleases,
    Published,
    request,
)
from tests.unit.metrics_watcher.test_analysis_baseline import Counters, policy, side


class Killed(Exception):
    """The process died here."""


def kill_at_sleep(number: int) -> FakeClock:
    def on_sleep(count: int) -> None:
        if count == number:
            raise Killed(f"killed in sleep {count}")

    return FakeClock(on_sleep=on_sleep)


class Replica:
    """One metrics-watcher process: its own Analyst, clock and publisher; a shared store."""

    def __init__(
        self,
        provider: Counters,
        spec: ReleasePolicySpec,
        progress: MemoryProgress,
        clock: FakeClock | None = None,
        publish: Publish | None = None,
    ) -> None:
        self.clock = clock or FakeClock()
        self.published = Published()
        self.analyst = Analyst(
            provider=provider,
            clock=self.clock,
            releases=FakeReleases(),
            policies=FakePolicies(spec),
            publish=publish or self.published,
            progress=progress,
        )

    async def run(self, attempt: int) -> AnalysisVerdict | None:
        job = AnalysisJob("rel-1", "rel-1.analyse.0", request(hold=10), anchor=T0, attempt=attempt)
        return await self.analyst.run(job)

    async def run_reissue(self, reissue: int, sent_at: float) -> AnalysisVerdict | None:
        """The planner's ask again (reconcile), sent ``sent_at`` seconds after the first."""
        asked = request(hold=10).model_copy(
            update={"continues": "rel-1.analyse.0", "reissue": reissue}
        )
        anchor = T0 + timedelta(seconds=sent_at)
        job = AnalysisJob("rel-1", f"rel-1.analyse.0.r{reissue}", asked, anchor=anchor)
        return await self.analyst.run(job)


def alike() -> Counters:
    return Counters({"canary": side(500, 5, 450), "baseline": side(500, 5, 450)})


async def test_a_delivery_killed_mid_hold_leaves_enough_for_the_next_to_pass_the_step() -> None:
    uninterrupted = await Replica(alike(), policy(), MemoryProgress()).run(attempt=1)
    assert uninterrupted is not None and uninterrupted.result is VerdictResult.PASS

    provider, progress = alike(), MemoryProgress()
    first = Replica(provider, policy(), progress, kill_at_sleep(2))  # dies before the last tick
    with pytest.raises(Killed):
        await first.run(attempt=1)
    # Restarted two seconds after the end of the hold: the last tick is overdue.
    second = Replica(provider, policy(), progress, FakeClock(T0 + timedelta(seconds=12)))
    final = await second.run(attempt=2)

    assert final is not None
    assert (final.result, final.action, final.final) == (
        VerdictResult.PASS,
        VerdictAction.CONTINUE,
        True,
    )
    assert second.clock.sleeps == [], "the overdue final tick runs at once"
    compared = {c.metric: c for c in final.checks if c.method}
    expected = {c.metric: c for c in uninterrupted.checks if c.method}
    for name in ("errors", "latency"):
        # Every request since the analysis began is counted, as if nothing had happened.
        assert compared[name].sample_size == expected[name].sample_size == 1000
        assert compared[name].statistic == expected[name].statistic


async def test_without_its_progress_the_restarted_delivery_would_not_pass() -> None:
    # The failure this store prevents: the same restart, starting from nothing.
    provider = alike()
    first = Replica(provider, policy(), MemoryProgress(), kill_at_sleep(2))
    with pytest.raises(Killed):
        await first.run(attempt=1)
    second = Replica(provider, policy(), MemoryProgress(), FakeClock(T0 + timedelta(seconds=12)))
    final = await second.run(attempt=2)
    assert final is not None and final.result is VerdictResult.INSUFFICIENT_DATA


async def test_a_final_verdict_decided_before_a_kill_is_published_again_not_judged_again() -> None:
    provider, progress = alike(), MemoryProgress()

    async def dies_publishing_the_final(rid: str, verdict: AnalysisVerdict, eid: str) -> None:
        if verdict.final:
            raise Killed("killed while publishing the final verdict")

    first = Replica(provider, policy(), progress, publish=dies_publishing_the_final)
    with pytest.raises(Killed):
        await first.run(attempt=1)
    (decided,) = progress.saved.values()
    assert decided.progress.final is not None
    asked = provider.ticks

    second = Replica(provider, policy(), progress, FakeClock(T0 + timedelta(seconds=40)))
    final = await second.run(attempt=2)

    assert final == decided.progress.final
    assert provider.ticks == asked, "nothing measured again"
    (event_id,) = second.published.ids
    assert event_id.endswith(".final")


async def test_extensions_granted_before_a_restart_still_count_after_it() -> None:
    def unsettled() -> Counters:
        return Counters({"canary": side(500, 5, 450, 25), "baseline": side(500, 5, 450, 25)})

    uninterrupted = Replica(unsettled(), policy(business=True), MemoryProgress())
    expected = await uninterrupted.run(attempt=1)

    provider, progress = unsettled(), MemoryProgress()
    # Ticks at 0, 5, 10 (extends the hold once), 15, 20: killed waiting for the one at 15.
    first = Replica(provider, policy(business=True), progress, kill_at_sleep(3))
    with pytest.raises(Killed):
        await first.run(attempt=1)
    second = Replica(
        provider, policy(business=True), progress, FakeClock(T0 + timedelta(seconds=16))
    )
    final = await second.run(attempt=2)

    assert expected is not None and final is not None
    assert (final.result, final.action) == (expected.result, expected.action)
    assert final.action is VerdictAction.PAUSE, "one extension only, as the policy says"
    assert [i.rsplit(".", 1)[-1] for i in second.published.ids] == ["3", "final"]


async def test_a_delivery_overtaken_by_a_later_one_stops_without_publishing() -> None:
    provider, progress = alike(), MemoryProgress()
    key = AnalysisJob("rel-1", "rel-1.analyse.0", request(), anchor=T0).progress_key

    def later_delivery_takes_over(count: int) -> None:
        saved = progress.saved[key]
        taken = saved.progress.model_copy(update={"owner": 2})
        progress.saved[key] = type(saved)(taken, saved.revision + 1)

    stalled = Replica(provider, policy(), progress, FakeClock(on_sleep=later_delivery_takes_over))
    with pytest.raises(HandedOver):
        await stalled.run(attempt=1)
    assert len(stalled.published.ids) == 1, "only the tick measured before the take-over"

    # And a delivery older than the owner does not even start.
    late = Replica(provider, policy(), progress)
    with pytest.raises(HandedOver):
        await late.run(attempt=1)
    assert late.published.ids == []


async def test_the_progress_of_a_run_survives_its_json_form_in_the_bucket() -> None:
    progress = MemoryProgress()
    with pytest.raises(Killed):
        await Replica(alike(), policy(), progress, kill_at_sleep(2)).run(attempt=1)
    (saved,) = progress.saved.values()
    readings = saved.progress.readings
    assert set(readings) == {"errors", "latency"} and len(readings["latency"]) == 2

    again = AnalysisProgress.model_validate_json(saved.progress.model_dump_json())

    assert again == saved.progress
    assert type(again.readings["latency"][1].canary) is type(readings["latency"][1].canary)


async def test_a_re_issued_request_continues_the_analysis_instead_of_starting_one_beside_it() -> (
    None
):
    provider, progress = alike(), MemoryProgress()
    first = Replica(provider, policy(), progress, kill_at_sleep(2))  # stuck before the last tick
    with pytest.raises(Killed):
        await first.run(attempt=1)
    # The planner heard nothing and asks again, 12 s after the first request.
    reissue = Replica(provider, policy(), progress, FakeClock(T0 + timedelta(seconds=12)))
    final = await reissue.run_reissue(reissue=1, sent_at=12)

    assert final is not None and final.result is VerdictResult.PASS
    assert reissue.clock.sleeps == [], "the first request's schedule: its last tick is overdue"
    (saved,) = progress.saved.values()  # one analysis, not two
    assert (saved.progress.reissue, saved.progress.anchor) == (1, T0)
    compared = {c.metric: c.sample_size for c in final.checks if c.method}
    assert compared == {"errors": 1000, "latency": 1000}, "the first run's readings count"
    # Its verdicts carry the first request's ids: JetStream drops what was already published.
    first_ids = {i.rsplit(".", 1)[0] for i in first.published.ids}
    assert {i.rsplit(".", 1)[0] for i in reissue.published.ids} == first_ids

    # A late redelivery of the first request leaves it to the planner's later ask.
    late = Replica(provider, policy(), progress)
    with pytest.raises(HandedOver):
        await late.run(attempt=5)
    assert late.published.ids == []
