"""Helpers for the executor and rollback integration tests: events in the stream, Deployments.

Why read events from the stream rather than a live subscription: JetStream keeps them, so a
test cannot miss one that was published before it started looking, and the per-subject
count shows whether a replayed fact was stored once (deduplicated) or twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from unittest import mock

from kubernetes import client
from nats.aio.client import Client as NatsClient
from nats.js.errors import NotFoundError
from tests.support import StackEnv, async_wait_until
from tests.unit.support_state import sample_state

from canaryflow.demo import shop
from canaryflow.runtime import kube as kube_access
from canaryflow.runtime.conventions import readiness_of
from canaryflow.runtime.deployment_watch import DeploymentWatch
from canaryflow.runtime.service import Service
from canaryflow.runtime.settings import Settings
from canaryflow.runtime.store import ReleaseStore
from canaryflow_contracts import Envelope, EventData, Subjects
from canaryflow_contracts.events import PlannedStep, TargetRef, VersionSpec
from canaryflow_contracts.identities import IDENTITIES
from canaryflow_contracts.state import ReleaseState, ReleaseStatus

E = TypeVar("E", bound=EventData)

REGISTRY = "registry.local"


def service_settings(stack: StackEnv, prefix: str, service: str) -> Settings:
    """Settings for a service run in-process against the stack, on the test's own streams."""
    return Settings(
        service=service,
        nats_url=stack.nats_url,
        # A service as its own NATS identity; a test's own (e.g. "tracetest") as admin.
        **stack.nats_settings(service if service in IDENTITIES else "admin"),
        prefix=prefix,
        kubeconfig=None if ":" in stack.kubeconfig else stack.kubeconfig,
        ack_wait_seconds=10,
        workers=4,
        stream_replicas=stack.stream_replicas,
    )


@contextlib.asynccontextmanager
async def running(service: Service) -> AsyncIterator[Service]:
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def release_state(
    rid: str,
    target: TargetRef,
    version: VersionSpec,
    steps: list[PlannedStep],
    status: ReleaseStatus,
) -> ReleaseState:
    """The planner's state of a release, as the services read it from the KV bucket."""
    return sample_state(rid).model_copy(
        update={"target": target, "version": version, "steps": steps, "status": status}
    )


async def put_state(events: StreamEvents, state: ReleaseState) -> ReleaseState:
    """Write ``state`` as the planner does (create, or compare-and-set over the last one), so
    that the executor and the rollback service find a live release asking for the command.
    Written over the tests' own connection: only the planner's identity may write the bucket
    (canaryflow_contracts.identities), and the services under test only read it."""
    store = await events.release_store()
    current = await store.get(state.release_id)
    if current is None:
        await store.create(state)
    else:
        await store.update(state, current.revision)
    return state


def govern(kube: client.ApiClient, namespace: str, target: str) -> None:
    """Put ``target`` under a ReleasePolicy: canaryflow writes no Deployment without one."""
    shop.install_crd(kube)
    shop.apply_policy(kube, namespace, shop.quick_policy(target), name=target)


class StreamEvents:
    def __init__(self, nc: NatsClient, subjects: Subjects) -> None:
        self.js = nc.jetstream()
        self.subjects = subjects
        self.stream = subjects.events_stream.name

    async def release_store(self) -> ReleaseStore:
        """The release bucket over the tests' connection, which may write it as the planner."""
        return ReleaseStore(await self.js.key_value(self.subjects.releases_bucket))

    async def publish(
        self, data: EventData, release_id: str, event_id: str | None = None
    ) -> Envelope[Any]:
        """Publish as any other system would: the envelope JSON, Nats-Msg-Id = its id."""
        extra = {"id": event_id} if event_id else {}
        envelope = Envelope.wrap(data, release_id=release_id, source="tests/integration", **extra)
        await self.js.publish(
            self.subjects.of(type(data), release_id),
            envelope.model_dump_json().encode(),
            headers={"Nats-Msg-Id": envelope.id},
        )
        return envelope

    async def last(self, event: type[E], release_id: str) -> Envelope[E] | None:
        try:
            raw = await self.js.get_last_msg(self.stream, self.subjects.of(event, release_id))
        except NotFoundError:
            return None
        assert raw.data is not None
        return Envelope[event].model_validate_json(raw.data)  # type: ignore[valid-type]

    async def wait_for(
        self, event: type[E], release_id: str, timeout: float, event_id: str | None = None
    ) -> Envelope[E]:
        """The latest ``event`` of the release (with this id, if given), once it is stored."""

        async def check() -> Envelope[E] | None:
            found = await self.last(event, release_id)
            if found is None or (event_id is not None and found.id != event_id):
                return None
            return found

        return await async_wait_until(
            check,
            timeout=timeout,
            message=f"{event.__name__} {event_id or ''} of {release_id}",
            interval=0.05,
        )

    async def count(self, event: type[E], release_id: str) -> int:
        subject = self.subjects.of(event, release_id)
        info = await self.js.stream_info(self.stream, subjects_filter=subject)
        return (info.state.subjects or {}).get(subject, 0)

    async def dead_letters(self) -> int:
        info = await self.js.stream_info(self.subjects.deadletter_stream.name)
        return info.state.messages

    async def handled_everything(self, service: Service, handler: str, timeout: float) -> None:
        """Wait until ``handler``'s durable consumer has delivered and acked every message."""
        durable = self.subjects.consumer(service.settings.service, handler)

        async def check() -> bool:
            info = await self.js.consumer_info(self.stream, durable)
            return bool(info.num_pending == 0 and info.num_ack_pending == 0)

        await async_wait_until(check, timeout=timeout, message=f"{durable} to ack everything")


def image(tag: str, name: str = "web") -> str:
    return f"{REGISTRY}/{name}:{tag}"


def deployment_body(
    namespace: str, name: str, replicas: int, tag: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """A plain Deployment as a person would write it (the executor adds nothing to it)."""
    labels = {"app": name}
    container: dict[str, Any] = {"name": name, "image": image(tag, name)}
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": copy.deepcopy(labels)},
                "spec": {"containers": [container]},
            },
        },
    }


def read(kube: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    """The Deployment as JSON, read with the official client (not the code under test)."""
    apps = client.AppsV1Api(kube)
    try:
        found = apps.read_namespaced_deployment(name, namespace)
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    body: dict[str, Any] = kube.sanitize_for_serialization(found)
    return body


def complete_at(kube: client.ApiClient, namespace: str, name: str, replicas: int) -> bool:
    seen = readiness_of(read(kube, namespace, name))
    return seen.complete and seen.desired == replicas


async def create_and_wait(
    kube: client.ApiClient, body: dict[str, Any], timeout: float = 60
) -> None:
    """Create a Deployment and wait until all its pods are Ready."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    apps = client.AppsV1Api(kube)
    await asyncio.to_thread(apps.create_namespaced_deployment, namespace, body)
    await wait_complete(kube, namespace, name, body["spec"]["replicas"], timeout)


async def wait_complete(
    kube: client.ApiClient, namespace: str, name: str, replicas: int, timeout: float = 60
) -> None:
    async def check() -> bool:
        return await asyncio.to_thread(complete_at, kube, namespace, name, replicas)

    await async_wait_until(
        check, timeout=timeout, message=f"{namespace}/{name} complete at {replicas}", interval=0.1
    )


def container_of(deployment: dict[str, Any]) -> dict[str, Any]:
    first: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return first


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container_of(deployment).get("env") or []}


@dataclass
class DeploymentReads:
    """Deployments read, by name: from the API server, and from the watched copy."""

    from_api: Counter[str] = field(default_factory=Counter)
    from_copy: Counter[str] = field(default_factory=Counter)


@contextlib.contextmanager
def counting_deployment_reads() -> Iterator[DeploymentReads]:
    """Count this process's Deployment reads while the block runs (the services under test
    run in it): a wait on the watched copy reads the copy, a polling one the API."""
    reads = DeploymentReads()
    read, get = kube_access.read_deployment, DeploymentWatch.get

    def reading(api: client.ApiClient, namespace: str, name: str) -> Any:
        reads.from_api[name] += 1
        return read(api, namespace, name)

    def getting(watch: DeploymentWatch, namespace: str, name: str) -> Any:
        reads.from_copy[name] += 1
        return get(watch, namespace, name)

    with (
        mock.patch.object(kube_access, "read_deployment", reading),
        mock.patch.object(DeploymentWatch, "get", getting),
    ):
        yield reads
