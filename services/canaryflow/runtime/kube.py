"""Kubernetes access and the workload conventions the executor and the rollback service share.

The ``kubernetes`` client is synchronous; every call goes through ``call`` so that it runs in a
worker thread and never blocks the event loop. Writes go through ``with_conflict_retry``: a 409
means someone wrote in between, so we re-read and re-apply our intent, which is idempotent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from opentelemetry.trace import SpanKind

from canaryflow.runtime import tracing
from canaryflow.runtime.conventions import (
    canary_name,
    release_of,
    restore_point_of,
    without_restore_point,
)
from canaryflow.runtime.policies import PolicyObject
from canaryflow_contracts.events import TargetRef
from canaryflow_contracts.policy import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

T = TypeVar("T")


CONFLICT_RETRIES = 8
# Kubernetes calls one service process makes at once. The client is synchronous, so each call
# holds a thread and a pooled connection: with asyncio's default pool (CPUs + 4 threads, 6 on
# 2 cores) and the client's 10 connections, 200 releases at once waited 15 s (median) for
# their admission, the planner idle (bench/scale.py).
CALLS_AT_ONCE = 64


def api_client(kubeconfig: str | None) -> client.ApiClient:
    """A client from the given kubeconfig, the default one, or the in-cluster account, with
    a connection for each of ``CALLS_AT_ONCE`` calls."""
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = CALLS_AT_ONCE
    return client.ApiClient(configuration)


def use_call_threads(loop: asyncio.AbstractEventLoop) -> None:
    """Give ``call`` (``asyncio.to_thread``) a thread for each of ``CALLS_AT_ONCE`` calls."""
    loop.set_default_executor(
        concurrent.futures.ThreadPoolExecutor(CALLS_AT_ONCE, thread_name_prefix="kube")
    )


async def call(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))


async def with_conflict_retry(write: Callable[[], Any], what: str) -> Any:
    """Run ``write`` (which reads then writes) again on 409 Conflict, a bounded number of times."""
    for attempt in range(1, CONFLICT_RETRIES + 1):
        try:
            return await asyncio.to_thread(write)
        except ApiException as error:
            if error.status != 409 or attempt == CONFLICT_RETRIES:
                raise
            log.info("conflict writing %s (attempt %d), re-reading", what, attempt)
            await asyncio.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


def is_not_found(error: BaseException) -> bool:
    return isinstance(error, ApiException) and error.status == 404


# --------------------------------------------------------------------------- raw JSON access
#
# Deployments are read and written as the API's own JSON (camelCase dicts), not as client
# models: the restore template is stored verbatim in an annotation, the pure decisions are
# tested on plain dicts, and a field this client version does not know survives a round trip
# (the generated models refuse unknown fields).
#
# Why through ApiClient.param_serialize and call_api, kept on purpose (issue 18): they are the
# public methods every generated API method goes through, so the request is the typed API's
# (auth, TLS, pooled connections), without its models. The typed AppsV1Api gives the same JSON
# only with its underscored _preload_content=False, one method per verb, at the same cost
# (median of 500 reads of a Deployment from a loopback server, 2026-12: 0.5-0.8 ms both; with
# its models 0.8-1.1 ms, and unknown fields lost); one `_request` also names every write's
# span. Both methods came with the client's new generator in 37.0 (pyproject pins >=37,<38);
# tests/unit/runtime/test_kube_requests.py fails when either changes. What would retire the
# threads (``call``) instead is an asyncio client (kubernetes_asyncio, lightkube): not yet.

DEPLOYMENTS_PATH = "/apis/apps/v1/namespaces/{namespace}/deployments"
REQUEST_TIMEOUT_SECONDS = 10.0
# How often a wait re-reads the API: fast enough that a rollback is not slowed by polling.
POLL_SECONDS = 0.5
FIRST_POLL_SECONDS = 0.1
FIELD_MANAGER = "canaryflow"

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def _request(
    api: client.ApiClient,
    method: str,
    path: str,
    *,
    body: dict[str, Any] | None = None,
    content_type: str = "application/json",
    query: list[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    if method == "GET":
        return _send(api, method, path, body=body, content_type=content_type, query=query)
    # Every write is a span of the release's trace (the caller's context reaches this thread).
    namespace, _, resource = path.partition("/namespaces/")[2].partition("/")
    # The name says the method and the object; every attribute is paid for on every write.
    with tracing.tracer().start_as_current_span(
        f"k8s {method} {resource}",
        kind=SpanKind.CLIENT,
        attributes={"k8s.namespace.name": namespace},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            return _send(api, method, path, body=body, content_type=content_type, query=query)
        except ApiException as error:
            span.set_attribute("http.response.status_code", error.status or 0)
            if error.status not in (404, 409):  # gone or changed meanwhile: callers expect it
                tracing.mark_failed(span, f"{error.status} {error.reason}")
            raise


def _send(
    api: client.ApiClient,
    method: str,
    path: str,
    *,
    body: dict[str, Any] | None,
    content_type: str,
    query: list[tuple[str, str]] | None,
) -> dict[str, Any]:
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type
    method_, url, header_params, payload, post_params = api.param_serialize(
        method=method,
        resource_path=path,
        query_params=query or [],
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(
        method_, url, header_params, payload, post_params, _request_timeout=REQUEST_TIMEOUT_SECONDS
    )
    response.read()
    text = response.data.decode("utf-8", errors="replace") if response.data else ""
    if not 200 <= response.status <= 299:
        raise ApiException.from_response(http_resp=response, body=text, data=None)
    return cast(dict[str, Any], json.loads(text)) if text else {}


def _deployment_path(namespace: str, name: str | None = None) -> str:
    path = DEPLOYMENTS_PATH.format(namespace=namespace)
    return f"{path}/{name}" if name else path


def read_deployment(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    """The Deployment as the API's JSON, or None when it does not exist."""
    try:
        return _request(api, "GET", _deployment_path(namespace, name))
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def read_target(api: client.ApiClient, target: TargetRef) -> dict[str, Any]:
    """The target (stable) Deployment; LookupError when it does not exist."""
    stable = read_deployment(api, target.namespace, target.name)
    if stable is None:
        raise LookupError(f"Deployment {target.key()} not found")
    return stable


def create_deployment(api: client.ApiClient, body: dict[str, Any]) -> dict[str, Any]:
    namespace = body["metadata"]["namespace"]
    return _request(
        api,
        "POST",
        _deployment_path(namespace),
        body=body,
        query=[("fieldManager", FIELD_MANAGER)],
    )


def replace_deployment(api: client.ApiClient, body: dict[str, Any]) -> dict[str, Any]:
    """PUT the whole object; ``metadata.resourceVersion`` makes it a compare-and-set (409)."""
    metadata = body["metadata"]
    return _request(
        api,
        "PUT",
        _deployment_path(metadata["namespace"], metadata["name"]),
        body=body,
        query=[("fieldManager", FIELD_MANAGER)],
    )


def patch_deployment(
    api: client.ApiClient, namespace: str, name: str, patch: dict[str, Any]
) -> dict[str, Any]:
    """JSON merge patch: maps merge, lists are replaced, ``None`` removes a key."""
    return _request(
        api,
        "PATCH",
        _deployment_path(namespace, name),
        body=patch,
        content_type="application/merge-patch+json",
        query=[("fieldManager", FIELD_MANAGER)],
    )


def delete_deployment(api: client.ApiClient, namespace: str, name: str, uid: str) -> bool:
    """Delete this very object (by uid), its pods first; False when it was already gone.

    Foreground propagation keeps the Deployment visible until its pods are gone, so a caller
    that waits for the 404 knows no pod of it can still take traffic. The uid precondition
    means a newer object of the same name is never deleted by mistake (409 instead).
    """
    try:
        _request(
            api,
            "DELETE",
            _deployment_path(namespace, name),
            body={
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "propagationPolicy": "Foreground",
                "preconditions": {"uid": uid},
            },
        )
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


# --------------------------------------------------------------------------- restore point


# --------------------------------------------------------------------------- waiting


async def poll_until(
    read: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    deadline: datetime,
    now: Clock = utc_now,
    interval: float | Callable[[], float] = POLL_SECONDS,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> tuple[T, bool]:
    """Re-read until ``done(value)`` or ``deadline``: (last value, done?).

    The first re-reads come quickly (0.1 s, doubling up to ``interval``): most waits end
    within a second on a healthy cluster, and a rollback should not lose half a second to
    one sleep; a long wait settles at one read per ``interval`` (a callable: asked again at
    each read, for waits that share a budget of reads). ``sleep`` may end early: a wait on
    a watched copy sleeps until something changed (deployment_watch.DeploymentWatch).
    The read always happens at least once, even when the deadline has already passed, so a
    replayed command whose work is finished still sees that it is finished.
    """
    longest = interval if callable(interval) else (lambda: interval)
    pause = min(FIRST_POLL_SECONDS, longest())
    while True:
        value = await read()
        if done(value):
            return value, True
        if now() >= deadline:
            return value, False
        await (sleep or asyncio.sleep)(pause)
        pause = min(pause * 2, longest())


async def remove_deployment(
    api: client.ApiClient,
    deployment: dict[str, Any],
    *,
    deadline: datetime,
    now: Clock = utc_now,
) -> bool:
    """Delete a Deployment and wait until the API no longer has it; False on the deadline."""
    metadata = deployment["metadata"]
    namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
    try:
        await call(delete_deployment, api, namespace, name, uid)
    except ApiException as error:
        if error.status != 409:  # 409: the uid changed, a newer object; not ours to delete
            raise
        return True

    async def current_uid() -> str | None:
        body = await call(read_deployment, api, namespace, name)
        return None if body is None else str(body["metadata"].get("uid"))

    _, gone = await poll_until(current_uid, lambda found: found != uid, deadline=deadline, now=now)
    return gone


# --------------------------------------------------------------------------- release cleanup
# Both ends of a release (promotion in the executor, rollback in the rollback service) finish
# the same way: the canary goes, then the restore point. Each step is a no-op when done.


async def remove_canary(
    api: client.ApiClient,
    target: TargetRef,
    release_id: str,
    *,
    deadline: datetime,
    now: Clock = utc_now,
) -> bool:
    """Delete the target's canary unless another release owns it; wait until it is gone.

    True when no canary of this release is left; False when it was still there at the
    deadline. A canary labelled with another release is not ours to remove (a stale event).
    """
    canary = await call(read_deployment, api, target.namespace, canary_name(target))
    if canary is None:
        return True
    owner = release_of(canary)
    if owner not in (None, release_id):
        log.warning("canary of %s belongs to release %s; left alone", target.key(), owner)
        return True
    return await remove_deployment(api, canary, deadline=deadline, now=now)


async def clear_restore_point(api: client.ApiClient, target: TargetRef, release_id: str) -> None:
    """Remove the restore annotations from stable if they are this release's (compare-and-set)."""

    def write() -> None:
        stable = read_deployment(api, target.namespace, target.name)
        if stable is None:
            return
        point = restore_point_of(stable)
        if point is None or point.release_id != release_id:
            return
        body = without_restore_point(stable)
        if body is not None:
            body.pop("status", None)
            replace_deployment(api, body)

    await with_conflict_retry(write, f"{target.key()} restore point")


# The CRD declares spec.targetRef a selectable field (Kubernetes 1.32+; beta in 1.31), so
# the API server returns only the policies of one Deployment: listing all of a namespace's
# for each of 1,000 requests in it was 1,000 x 1,000 objects (bench/scale.py).
TARGET_FIELD = "spec.targetRef"


async def read_policies(
    api: client.ApiClient, namespace: str, targeting: str | None = None
) -> list[PolicyObject]:
    """The ReleasePolicies in ``namespace`` (only those whose targetRef is ``targeting``, when
    given); none when the CRD is not installed."""
    custom = client.CustomObjectsApi(api)
    selector = {"field_selector": f"{TARGET_FIELD}={targeting}"} if targeting else {}
    try:
        try:
            listed = await call(
                custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, **selector
            )
        except ApiException as error:
            if error.status != 400 or not selector:
                raise
            # An older API server, or our CRD installed without its selectable field: the
            # whole namespace, filtered here (governing() filters by targetRef anyway).
            log.debug("field selector %s refused (%s); listing every policy", selector, error)
            listed = await call(
                custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL
            )
    except ApiException as error:
        if is_not_found(error):  # the CRD is not installed: no policy governs anything
            return []
        raise
    return [
        PolicyObject(name=item["metadata"]["name"], spec=item.get("spec") or {})
        for item in listed.get("items", [])
    ]
