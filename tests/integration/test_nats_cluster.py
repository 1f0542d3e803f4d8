"""canaryflow on a three-node JetStream cluster: replicated streams, and the loss of a node.

Given three NATS nodes configured exactly as ``CANARYFLOW_NATS_NODES=3`` makes the stack run
them (``servers.nats_config``: routes between the nodes, ``sync_interval: always``), started
here on ports of their own inside the stack's namespace, and a service connected to all three:
its streams and KV bucket are R3, and when the node the service talks to is SIGKILLed, events
are still stored, delivered and acknowledged, and release state is still written with
compare-and-set, through the two nodes left.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats
import pytest
from nats.aio.client import Client as NatsClient
from tests.support import StackEnv, async_wait_until, wait_until
from tests.unit.support_state import sample_state

from canaryflow.runtime.bus import Delivery
from canaryflow.runtime.nats_access import NatsAccess
from canaryflow.runtime.service import Service
from canaryflow.runtime.settings import Settings as ServiceSettings
from canaryflow_contracts import Envelope
from canaryflow_contracts.events import PauseRelease
from canaryflow_stack import natsauth
from canaryflow_stack.config import HOST
from canaryflow_stack.config import Settings as StackSettings
from canaryflow_stack.servers import locate_binaries, nats_config

pytestmark = pytest.mark.stack

NODES = 3
# Ports of this test's cluster: the stack's own, shifted out of the way of the stack's NATS.
PORT_SHIFT = 700


@dataclass
class Node:
    number: int
    client_url: str
    monitor_url: str
    conf: Path
    log: Path
    access: NatsAccess  # TLS and the admin NKey of this cluster's own state folder
    process: subprocess.Popen[bytes] | None = None

    def start(self, binary: Path) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(binary), "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def healthy(self) -> bool | None:
        """JetStream is up on this node and the cluster has a meta leader."""
        try:
            answer = httpx.get(f"{self.monitor_url}/healthz", timeout=2)
        except httpx.HTTPError:
            return None
        return True if answer.status_code == 200 else None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, stack: StackEnv) -> Iterator[list[Node]]:
    base = StackSettings.from_env()
    shifted = dataclasses.replace(
        base.ports,
        nats=base.ports.nats + PORT_SHIFT,
        nats_monitor=base.ports.nats_monitor + PORT_SHIFT,
    )
    state = tmp_path_factory.mktemp("nats-cluster")
    settings = dataclasses.replace(base, state=state, ports=shifted, nats_nodes=NODES)
    binary = locate_binaries(settings).nats
    nodes = []
    for number, client_url in enumerate(settings.nats_urls(), start=1):
        _, monitor, _ = settings.nats_node_ports(number)
        store = state / f"store-{number}"
        conf = state / f"node-{number}.conf"
        conf.write_text(nats_config(settings, number, store))
        node = Node(
            number,
            client_url,
            f"http://{HOST}:{monitor}",
            conf,
            state / f"node-{number}.log",
            NatsAccess.from_env(None, natsauth.client_env(settings)),
        )
        node.start(binary)
        nodes.append(node)
    try:
        for node in nodes:
            wait_until(node.healthy, timeout=60, message=f"NATS node {node.number} healthy")
        yield nodes
    finally:
        for node in nodes:
            node.kill()


@pytest.fixture
async def cluster_client(cluster: list[Node]) -> AsyncIterator[NatsClient]:
    nc = await nats.connect(
        [node.client_url for node in cluster],
        **cluster[0].access.client_options(),
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
    )
    yield nc
    await nc.close()


def _settings(cluster: list[Node], prefix: str) -> ServiceSettings:
    return ServiceSettings(
        service="clustertest",
        nats_url=",".join(node.client_url for node in cluster),
        nats_tls_ca=cluster[0].access.tls_ca,
        nats_nkey_seed=cluster[0].access.nkey_seed,
        prefix=prefix,
        stream_replicas=NODES,
        ack_wait_seconds=1,
        workers=4,
    )


async def _publish_pause(service: Service, release_id: str) -> None:
    """Through the service's own publisher, which rides out a stream leader's election."""
    await service.publisher.publish(PauseRelease(actor="tester"), release_id, event_id=release_id)


async def test_a_service_on_a_cluster_keeps_working_when_its_node_is_killed(
    cluster: list[Node], cluster_client: NatsClient, stream_prefix: str
) -> None:
    settings = _settings(cluster, stream_prefix)
    service = Service(settings)
    handled: list[str] = []

    async def handler(envelope: Envelope[PauseRelease], delivery: Delivery) -> None:
        handled.append(envelope.subject)

    service.subscribe(PauseRelease, "pause", handler)
    await service.start()
    js = cluster_client.jetstream()
    try:
        # Given the service's streams and KV bucket, created by the service itself
        subjects = settings.subjects
        for stream in (subjects.events_stream.name, subjects.deadletter_stream.name):
            info = await js.stream_info(stream)
            assert info.config.num_replicas == NODES
            assert info.cluster is not None and len(info.cluster.replicas or []) == NODES - 1
        bucket = await js.stream_info(f"KV_{subjects.releases_bucket}")
        assert bucket.config.num_replicas == NODES
        await _publish_pause(service, "before-kill")
        await async_wait_until(
            lambda: _contains(handled, "before-kill"), timeout=15, message="first event handled"
        )

        # When the node the service is connected to is killed
        connected = service.broker.connection.connected_url
        assert connected is not None
        [victim] = [n for n in cluster if n.client_url.endswith(f":{connected.port}")]
        victim.kill()

        # Then events are still stored and handled, and state is still written with CAS
        for index in range(5):
            await _publish_pause(service, f"after-kill-{index}")
        for index in range(5):
            wanted = f"after-kill-{index}"
            await async_wait_until(
                functools.partial(_contains, handled, wanted),
                timeout=30,
                message=f"event {index} handled after the kill",
            )
        state = sample_state("after-kill")
        await service.store.create(state)
        stored = await service.store.get("after-kill")
        assert stored is not None and stored.state.release_id == "after-kill"
        assert service.broker.connection.connected_url != connected
    finally:
        await service.stop()
        # The killed node comes back for the next test of this module, and catches up.
        for node in cluster:
            if node.process is not None and node.process.poll() is not None:
                node.start(locate_binaries(StackSettings.from_env()).nats)
        for node in cluster:
            await asyncio.to_thread(
                wait_until, node.healthy, timeout=60, message=f"node {node.number} back"
            )


async def _contains(items: list[str], wanted: str) -> bool | None:
    return True if wanted in items else None
