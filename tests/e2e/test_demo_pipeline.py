"""``make demo``'s pipeline part (services/canaryflow/demo/pipeline.py) on the real stack.

Given the demo's three environments (test, staging, production, each with the shop on web:v1
and its own policy), when the demo runs its two pipelines as it does in ``make demo`` (as the
requester identity, opening production's gate as the operator identity), then the good
version succeeds in all three and production runs it, and the bad one stops in staging:
test keeps it, staging is back on the previous version, and production is never asked for
anything (its Deployment unchanged, no release of it requested or stored).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from kubernetes import client
from nats.aio.client import Client as NatsClient

from canaryflow.demo import pipeline, shop
from canaryflow.demo.launcher import ServiceLauncher
from canaryflow.planner.pipelines import stage_id
from canaryflow.runtime.settings import nats_servers
from canaryflow.runtime.store import ReleaseStore
from canaryflow_contracts import Subjects
from tests.conftest import TEST_NAMESPACE_LABEL
from tests.e2e.conftest import Releases
from tests.support import StackEnv

pytestmark = pytest.mark.stack


@pytest.fixture
def base(kube: client.ApiClient) -> Iterator[str]:
    name = f"t-demo-{uuid.uuid4().hex[:6]}"
    try:
        pipeline.install(kube, name, labels={TEST_NAMESPACE_LABEL: "true"})
        pipeline.wait_ready(kube, name)
        yield name
    finally:
        pipeline.delete(kube, name)


async def _connect(stack: StackEnv, identity: str) -> NatsClient:
    return await nats.connect(
        nats_servers(stack.nats_url), **stack.nats_access(identity).client_options()
    )


@pytest.fixture
async def identities(stack: StackEnv) -> AsyncIterator[tuple[NatsClient, NatsClient]]:
    """The demo's two connections: the requester's and the operator's."""
    requester = await _connect(stack, "requester")
    operator = await _connect(stack, "operator")
    yield requester, operator
    await requester.close()
    await operator.close()


async def test_the_demo_pipelines_walk_a_good_version_and_stop_a_bad_one_in_staging(
    kube: client.ApiClient,
    base: str,
    identities: tuple[NatsClient, NatsClient],
    services: ServiceLauncher,
    releases: Releases,
) -> None:
    requester, operator = identities
    subjects = Subjects(services.prefix)
    where = pipeline.namespaces(base)
    suffix = uuid.uuid4().hex[:6]

    good = await pipeline.run_pipeline(
        requester,
        operator,
        subjects,
        api=kube,
        base=base,
        pipeline_id=f"demo-v2-{suffix}",
        image=shop.image("v2"),
    )
    assert good.result == "succeeded", good.lines()
    assert good.environments == dict.fromkeys(pipeline.ENVIRONMENTS, "succeeded"), good.lines()
    assert "opened by ops@shop" in good.gate, good.lines()
    for namespace in where.values():
        assert pipeline.image_in(kube, namespace) == shop.image("v2")

    bad_id = f"demo-v3-{suffix}"
    bad = await pipeline.run_pipeline(
        requester,
        operator,
        subjects,
        api=kube,
        base=base,
        pipeline_id=bad_id,
        image=shop.image("v3"),
    )
    assert bad.result == "stopped", bad.lines()
    assert bad.stopped_in == "staging", bad.lines()
    assert bad.evidence, bad.lines()
    assert bad.environments == {
        "test": "succeeded",
        "staging": "rolled back",
        "production": "not started",
    }, bad.lines()
    assert pipeline.image_in(kube, where["test"]) == shop.image("v3")  # test keeps it
    assert pipeline.image_in(kube, where["staging"]) == shop.image("v2")
    # Production never touched: it still runs the good version, and no release was asked of it.
    assert pipeline.image_in(kube, where["production"]) == shop.image("v2")
    assert bad.production_events == 0, bad.lines()
    kv = await releases.nc.jetstream().key_value(subjects.releases_bucket)
    assert await ReleaseStore(kv).get(stage_id(bad_id, 2)) is None
    assert await ReleaseStore(kv).get(stage_id(bad_id, 1)) is not None
