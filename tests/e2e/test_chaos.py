"""Faults on purpose, judged from the outside: the fault campaign with a fixed seed, and one
replica of every service killed at once mid-release.

1. ``make chaos`` in small (services/canaryflow/demo/chaos.py): one run of four releases at
   once (good and bad versions, ConfigMap changes, operator commands as the seed says) while
   Prometheus is frozen, then the API server, and replicas are SIGKILLed; every invariant
   holds (one terminal event each, stable runs the new version iff it succeeded, nothing left
   behind, nothing created twice, no notification twice, no dead letter), no canary passes a
   verdict whose queries' window overlaps Prometheus being down, and the releases in flight
   carry on after each outage.
2. Several replicas for real (issue 13, item 6): with two replicas of each service, one of each
   (the one that worked on the release) is killed at once in the middle of a release and not
   restarted; the other four finish it, and then roll back a bad version on their own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime

import pytest
from kubernetes import client
from nats.aio.client import Client as NatsClient

from canaryflow.demo import chaos, shop
from canaryflow.demo.faults import LogWatch
from canaryflow.demo.launcher import (
    SERVICES,
    RunningService,
    ServiceLauncher,
    delete_jetstream_state,
)
from canaryflow_contracts import Subjects
from canaryflow_contracts.events import ReleaseRolledBack, ReleaseSucceeded
from canaryflow_stack.config import Settings
from tests.e2e.conftest import Releases, launcher_for
from tests.support import StackEnv

pytestmark = pytest.mark.stack

SEED = 20261206


async def test_a_small_campaign_breaks_no_invariant(
    stack: StackEnv, stack_settings: Settings, local_cluster: None
) -> None:
    options = chaos.CampaignOptions(
        seed=SEED,
        runs=1,
        faults=4,
        releases=(4, 4),
        # Prometheus first (the longest), then the API server, then kills, at seeded moments.
        script=("prometheus-stop", "apiserver-stop", "kill-one", "kill-all"),
    )
    reports = await chaos.campaign(options, stack_settings)

    (report,) = reports
    kinds = [fault.kind for fault in report.faults]
    assert sorted(kinds) == sorted(options.script), kinds
    assert report.violations == []
    assert all(outcome != "no end" for outcome in report.outcomes.values()), report.outcomes
    # The outage checks are not vacuous: releases were in flight when each part came back.
    # (What they did next depends on the outage's length: a step whose hold ended during a
    # Prometheus outage paused, and a paused release waits for a person or its deadline.)
    for fault in report.faults:
        if fault.kind in ("prometheus-stop", "apiserver-stop"):
            assert fault.in_flight > 0, f"nothing in flight across {fault}"
            print(f"\nMEASURE {fault.kind} {fault.detail}: next transition {fault.recovery}s")


@pytest.fixture
def pairs(stack: StackEnv, kube: client.ApiClient) -> Iterator[ServiceLauncher]:
    """Two replicas of each service on streams of their own."""
    shop.install_crd(kube)
    launcher = launcher_for(stack, f"e2e_{uuid.uuid4().hex[:8]}", 2)
    launcher.start()
    yield launcher
    launcher.stop()


@pytest.fixture
async def _pairs_streams(pairs: ServiceLauncher, nats_client: NatsClient) -> AsyncIterator[None]:
    yield
    await delete_jetstream_state(nats_client, pairs.prefix)


def _lines_about(replica: RunningService, release_id: str) -> list[str]:
    tag = f'"release_id": "{release_id}"'
    return [
        line for line in replica.log_path.read_text(errors="replace").splitlines() if tag in line
    ]


def _logged_after(replica: RunningService, release_id: str, moment: float) -> bool:
    for line in _lines_about(replica, release_id):
        stamp = line.split('"time": "', 1)[1][:29]
        if datetime.fromisoformat(stamp).timestamp() > moment:
            return True
    return False


FIRST_HOLD_SECONDS = 20


@pytest.mark.usefixtures("_pairs_streams")
async def test_one_replica_of_each_service_killed_mid_release_the_others_finish_it(
    kube: client.ApiClient,
    shop_namespace: str,
    nats_client: NatsClient,
    pairs: ServiceLauncher,
) -> None:
    releases = Releases(nats_client, Subjects(pairs.prefix))
    watch = LogWatch(pairs)
    # A first hold long enough for a passing tick before its last: a new canary's requests
    # reach Prometheus seconds after its pods are up (discovery, scrapes), and with the quick
    # policy's 8 s the first step's only pass was its final one once (load 4).
    policy = shop.quick_policy()
    policy["steps"][0]["holdSeconds"] = FIRST_HOLD_SECONDS
    shop.apply_policy(kube, shop_namespace, policy)
    release_id = await releases.request(shop_namespace, shop.image("v2"))
    # Mid-release: the first step is in place and being judged (a passing tick, not the last).
    await watch.first("metrics_watcher", release_id, "verdict pass for step 0:")
    # Of each service, the replica that has done most for this release so far (for the
    # rollback service, with nothing to do yet, either one).
    doomed = [
        max(pairs.replicas_of(name), key=lambda r: len(_lines_about(r, release_id)))
        for name in SERVICES
    ]
    for replica in doomed:
        pairs.kill(replica)  # no supervisor: the killed ones stay dead
    killed_at = time.time()
    survivors = {name: pairs.replicas_of(name) for name in SERVICES}
    assert all(len(left) == 1 for left in survivors.values()), survivors

    events = await releases.events(release_id)

    kinds = [type(e.data).__name__ for e in events]
    assert isinstance(events[-1].data, ReleaseSucceeded), kinds
    apps = client.AppsV1Api(kube)
    web = apps.read_namespaced_deployment("web", shop_namespace)
    assert web.spec.template.spec.containers[0].image == shop.image("v2")
    names = {d.metadata.name for d in apps.list_namespaced_deployment(shop_namespace).items}
    assert not names & {"web-canary", "web-baseline"}, names
    # The survivors did the rest: each of the three with work left logged about it after the
    # kill (no leader: nothing waited for one to be elected or to come back).
    for name in ("planner", "executor", "metrics_watcher"):
        (survivor,) = survivors[name]
        assert _logged_after(survivor, release_id, killed_at), f"{name} survivor did nothing"

    # The rollback service's survivor, alone, takes a failing verdict.
    bad = await releases.request(shop_namespace, shop.image("v2-bad"))
    events = await releases.events(bad)
    assert isinstance(events[-1].data, ReleaseRolledBack), [type(e.data).__name__ for e in events]
    (rollback,) = survivors["rollback"]
    assert _logged_after(rollback, bad, killed_at)
    assert all(replica.process.poll() is None for left in survivors.values() for replica in left)
