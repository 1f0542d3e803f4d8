"""Session fixtures for tests on the real local stack (NATS, Kubernetes, Prometheus, Jaeger).

Why this shape:
- the whole session runs inside the stack's network namespace (``pytest_collection_modifyitems``
  enters it, or starts the stack, which enters it), where the servers and the pods are.
- ``stack`` reuses a stack that is already up and healthy (``.stack/env.json`` plus a health
  probe of every server), and otherwise starts one through ``canaryflow_stack``, so ``make
  test`` and a bare ``pytest`` both work, and a warm run pays nothing for it.
- the clients (``nats_client``, ``kube``, ``prometheus``, ``jaeger``) are made once per session.
- isolation is per test: ``namespace`` is a fresh Kubernetes namespace deleted afterwards, and
  ``stream_prefix`` a fresh prefix for JetStream stream names and subjects, so tests never see
  each other's objects and can run in any order.
Tests that need the stack are marked ``@pytest.mark.stack``.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from kubernetes import client
from kubernetes import config as kconfig
from kubernetes.client.rest import ApiException
from nats.aio.client import Client as NatsClient

from canaryflow.demo.launcher import delete_jetstream_state
from canaryflow.runtime.settings import nats_servers
from canaryflow_stack import stack as stack_manager
from canaryflow_stack.config import Settings
from tests.support import JaegerQuery, PrometheusQuery, StackEnv, wait_until


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Move the test process into the stack's network namespace before any test runs.

    Every server of the stack listens on the namespace's own 127.0.0.1, and pods answer at
    10.244.x.y only there. setns moves only the calling thread, so it happens here, while
    pytest has no other thread; the servers, services and clients the tests start inherit it.
    A stack that is not up yet is started here (``up`` enters the namespace itself).
    """
    if not any(item.get_closest_marker("stack") for item in items):
        return
    settings = Settings.from_env()
    if not stack_manager.enter(settings):
        stack_manager.up(settings)


@pytest.fixture(scope="session")
def stack_settings() -> Settings:
    return Settings.from_env()


@pytest.fixture(scope="session")
def stack(stack_settings: Settings) -> StackEnv:
    """The running stack's endpoints; starts the stack if it is not up and healthy."""
    env = stack_manager.read_env(stack_settings)
    if env is None or not stack_manager.is_healthy(stack_settings):
        env = stack_manager.up(stack_settings)
    return StackEnv.from_env(env)


@pytest.fixture
def as_operator(stack: StackEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI, run in this process, connects as the stack's operator identity."""
    for name, value in stack.nats_env("operator").items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="session")
async def nats_client(stack: StackEnv) -> AsyncIterator[NatsClient]:
    """One nats-py connection for the session; it reconnects by itself after a NATS restart."""
    nc = await nats.connect(
        nats_servers(stack.nats_url),
        **stack.nats_access().client_options(),
        name="canaryflow-tests",
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        connect_timeout=5,
    )
    yield nc
    await nc.close()


@pytest.fixture(scope="session")
def kube(stack: StackEnv) -> Iterator[client.ApiClient]:
    """A kubernetes ApiClient for the cluster in use, with the stack's kubeconfig."""
    config_file = None if ":" in stack.kubeconfig else stack.kubeconfig
    api = kconfig.new_client_from_config(config_file=config_file)
    _delete_leftover_namespaces(api)
    yield api
    api.close()


TEST_NAMESPACE_LABEL = "canaryflow.io/test"


def _delete_leftover_namespaces(api: client.ApiClient) -> None:
    """Delete the test namespaces an interrupted earlier run left behind.

    Why: their shops keep drawing the stack's simulated users, and a later run on the same
    stack was slowed until its waits for canary traffic timed out (three of five tests of
    test_metrics_watcher after one killed run). One test run per stack at a time.
    """
    core = client.CoreV1Api(api)
    for leftover in core.list_namespace(label_selector=f"{TEST_NAMESPACE_LABEL}=true").items:
        if leftover.status.phase == "Terminating":
            continue
        print(f"deleting namespace {leftover.metadata.name}, left by an interrupted test run")
        with contextlib.suppress(ApiException):
            core.delete_namespace(leftover.metadata.name, propagation_policy="Background")


@pytest.fixture(scope="session")
def prometheus(stack: StackEnv) -> Iterator[PrometheusQuery]:
    prom = PrometheusQuery(stack.prometheus_url, stack.prometheus_targets)
    yield prom
    prom.close()


@pytest.fixture(scope="session")
def jaeger(stack: StackEnv) -> Iterator[JaegerQuery]:
    query = JaegerQuery(stack.jaeger_query_url)
    yield query
    query.close()


@pytest.fixture
def local_cluster(stack: StackEnv) -> None:
    """Skips a test that needs the stack's own KWOK cluster (fake images, KWOK stages, pods
    that answer in the stack's network namespace)."""
    if not stack.is_local_cluster:
        pytest.skip("needs the stack's own KWOK cluster (fake images, KWOK stages, pod addresses)")


def _dns_label(text: str, limit: int) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:limit].strip("-") or "t"


@pytest.fixture
def namespace(kube: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test (with its default ServiceAccount), deleted afterwards."""
    core = client.CoreV1Api(kube)
    name = f"t-{_dns_label(request.node.name, 40)}-{uuid.uuid4().hex[:6]}"
    core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(name=name, labels={TEST_NAMESPACE_LABEL: "true"})
        )
    )
    # Pods are refused until the controller manager has made the default ServiceAccount.
    wait_until(
        lambda: core.read_namespaced_service_account("default", name),
        timeout=30,
        message=f"the default ServiceAccount in namespace {name}",
    )
    yield name
    with contextlib.suppress(ApiException):
        core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture
async def stream_prefix(nats_client: NatsClient) -> AsyncIterator[str]:
    """A fresh prefix, valid both in JetStream stream names and as a subject token.

    The test's streams and KV bucket are deleted afterwards, so a long-lived stack does not
    fill its disk with test leftovers.
    """
    prefix = f"t_{uuid.uuid4().hex[:10]}"
    yield prefix
    await delete_jetstream_state(nats_client, prefix)
