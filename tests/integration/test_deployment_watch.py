"""The executor's copy of the Deployments follows the API server, and wakes the waits.

Against the stack's real API server: a copy that is not listed yet (or does not cover a
namespace) says so instead of answering; once listed it has what the API has; a change wakes
whoever sleeps on its namespace, and only them; a deletion is seen; a scope limited to some
namespaces (an installation with Roles only) follows those and no other.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from kubernetes import client

from canaryflow.dataplane.objects import shop_deployment
from canaryflow.runtime.deployment_watch import DeploymentWatch, NotWatched
from canaryflow.runtime.service import stop_task

pytestmark = pytest.mark.stack


@contextlib.asynccontextmanager
async def running(watch: DeploymentWatch, namespace: str) -> AsyncIterator[DeploymentWatch]:
    task = asyncio.create_task(watch.run())
    try:
        await until(lambda: watch.watching(namespace), "the copy to be listed")
        yield watch
    finally:
        await stop_task(task)


async def until(condition: Callable[[], Any], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        await asyncio.sleep(0.05)


def replicas_of(found: dict[str, Any] | None) -> int | None:
    return None if found is None else found["spec"]["replicas"]


async def test_the_copy_has_what_the_api_has_and_a_change_wakes_its_namespace_only(
    kube: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(kube)
    apps.create_namespaced_deployment(namespace, shop_deployment("web", "web", "v1", 2, "stable"))
    watch = DeploymentWatch(kube)
    with pytest.raises(NotWatched):  # not listed yet: the waits must ask the API
        watch.get(namespace, "web")

    async with running(watch, namespace):
        listed = watch.get(namespace, "web")
        assert replicas_of(listed) == 2
        assert listed is not None and "managedFields" not in listed["metadata"]
        assert watch.get(namespace, "absent") is None

        # A sleeper on this namespace is woken by a change in it, long before its timeout.
        mark = watch.mark(namespace)
        sleeper = asyncio.create_task(watch.changed_since(namespace, mark, 30.0))
        quiet = "no-such-namespace"
        other = asyncio.create_task(watch.changed_since(quiet, watch.mark(quiet), 3.0))
        started = time.monotonic()
        apps.patch_namespaced_deployment("web", namespace, {"spec": {"replicas": 3}})
        await asyncio.wait_for(sleeper, 10.0)
        woken_after = time.monotonic() - started
        await until(lambda: replicas_of(watch.get(namespace, "web")) == 3, "scaled copy")
        assert woken_after < 5.0, woken_after
        assert not other.done(), "a change in one namespace woke a sleeper on another"
        other.cancel()

        # A change that came before the sleep (after the mark) is not missed.
        mark = watch.mark(namespace)
        apps.patch_namespaced_deployment("web", namespace, {"spec": {"replicas": 4}})
        await until(lambda: watch.mark(namespace) != mark, "the change to be counted")
        started = time.monotonic()
        await watch.changed_since(namespace, mark, 30.0)
        assert time.monotonic() - started < 0.5

        apps.delete_namespaced_deployment("web", namespace)
        await until(lambda: watch.get(namespace, "web") is None, "the deletion")
    assert not watch.watching(namespace), "a stopped watch still claims to follow"


async def test_a_copy_limited_to_some_namespaces_covers_those_only(
    kube: client.ApiClient, namespace: str
) -> None:
    client.AppsV1Api(kube).create_namespaced_deployment(
        namespace, shop_deployment("web", "web", "v1", 1, "stable")
    )
    async with running(DeploymentWatch(kube, (namespace,)), namespace) as watch:
        assert replicas_of(watch.get(namespace, "web")) == 1
        assert not watch.watching("default")
        with pytest.raises(NotWatched):
            watch.get("default", "web")
