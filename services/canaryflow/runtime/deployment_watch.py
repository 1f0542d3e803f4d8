"""One watch of Deployments shared by every wait of a replica (client-go calls it an informer).

Why: a step waits until its Deployments say Ready. Polled, each wait read its three
Deployments every 2 s, and at 1,000 steps at once those reads were most of the API server's
load on the bench's two cores (bench/scale.py: 167 of 224 requests a second, 23 of 1,000
releases ended in 694 s). Listed once and then followed, the same Deployments cost the API
server one long request per scope, and a wait looks again the moment something in its
namespace changed instead of up to 2 s later.

What a copy may and may not be trusted for: it trails the API server by the watch's latency
(milliseconds on a healthy cluster), so it serves the waits only, never a write's read-decide-
write (those read the API, and carry the resourceVersion they read). The waits' conditions
compare the spec they wrote (replicas, image) as well as the status, so a copy from before a
write never satisfies them. While a scope is not followed (not listed yet, the API server
unreachable, a watch being re-established), ``get`` raises ``NotWatched`` and the waits read
the API as before.

The scope is the whole cluster, or the namespaces the installation is limited to (Helm
``rbac.namespaces``, ``CANARYFLOW_WATCH_NAMESPACES``): a Role grants list and watch in its own
namespace only.

The client's own ``watch.Watch`` is not used: with ``deserialize=False`` (the models cost
more than the wait itself at a thousand Deployments) it drops ``raw_object`` and then fails
on the ERROR event that reports an expired resourceVersion (kubernetes 37.0). The request goes
through the same public ``param_serialize``/``call_api`` as every other call here (kube.py),
split into events by the client's own ``iter_resp_lines``;
tests/integration/test_deployment_watch.py fails when either changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from canaryflow.runtime import kube

log = logging.getLogger(__name__)

T = TypeVar("T")

# The API server ends a watch after this long; it is then resumed from the last version seen.
WATCH_SECONDS = 240
# A silent connection longer than this is dead (the API server sends a bookmark every minute).
READ_TIMEOUT_SECONDS = WATCH_SECONDS + 60
LIST_PAGE = 500
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0)

Key = tuple[str, str]  # namespace, name


class NotWatched(LookupError):
    """The Deployments of this namespace are not followed right now: read the API."""


class Expired(Exception):
    """The resourceVersion to resume from is too old (410): list again."""


class DeploymentWatch:
    """A copy of every Deployment in scope, kept by list-then-watch threads, one per scope.

    ``get`` is safe from any thread. ``mark`` and ``changed_since`` belong to the event loop
    ``run`` was started on: a wait takes a mark before it reads, then sleeps until its
    namespace changed after that mark (so a change between the read and the sleep is not
    missed) or its timeout.
    """

    def __init__(self, api: client.ApiClient, namespaces: tuple[str, ...] = ()) -> None:
        self.api = api
        self.namespaces = namespaces
        self._objects: dict[Key, dict[str, Any]] = {}
        self._followed: set[str] = set()  # scopes ("" for the cluster) listed and followed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._open: dict[str, Any] = {}  # scope -> the streaming response, closed on stop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changes: dict[str, int] = {}  # namespace -> changes seen (on the loop)
        self._wakeups: dict[str, asyncio.Event] = {}

    # -- reading the copy -------------------------------------------------------------------

    def _scope(self, namespace: str) -> str | None:
        if not self.namespaces:
            return ""
        return namespace if namespace in self.namespaces else None

    def watching(self, namespace: str) -> bool:
        scope = self._scope(namespace)
        with self._lock:
            return scope is not None and scope in self._followed

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Deployment as last seen (None: it does not exist); NotWatched: ask the API."""
        scope = self._scope(namespace)
        with self._lock:
            if scope is None or scope not in self._followed:
                raise NotWatched(namespace)
            return self._objects.get((namespace, name))

    def mark(self, namespace: str) -> int:
        return self._changes.get(namespace, 0)

    async def changed_since(self, namespace: str, mark: int, timeout: float) -> None:
        """Return once ``namespace`` changed after ``mark``, or after ``timeout`` seconds."""
        if self._changes.get(namespace, 0) != mark:
            return
        wakeup = self._wakeups.setdefault(namespace, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), timeout)

    def _changed(self, namespace: str) -> None:
        """On the loop: one more change in ``namespace``; wake whoever sleeps on it."""
        self._changes[namespace] = self._changes.get(namespace, 0) + 1
        wakeup = self._wakeups.pop(namespace, None)
        if wakeup is not None:
            wakeup.set()

    def _changed_all(self) -> None:
        for namespace in list(self._wakeups):
            self._changed(namespace)

    def _notify(self, namespace: str | None) -> None:
        """From a watch thread: tell the loop (every namespace when ``None``)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            if namespace is None:
                loop.call_soon_threadsafe(self._changed_all)
            else:
                loop.call_soon_threadsafe(self._changed, namespace)

    # -- keeping it ------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow every scope until cancelled (a service's background loop)."""
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        scopes = self.namespaces or ("",)
        threads = [
            threading.Thread(
                target=self._follow, args=(scope,), name=f"watch-{scope or 'cluster'}", daemon=True
            )
            for scope in scopes
        ]
        for thread in threads:
            thread.start()
        try:
            await asyncio.Event().wait()
        finally:
            self._stop.set()
            for response in list(self._open.values()):
                with contextlib.suppress(Exception):
                    response.close()
            with self._lock:
                self._followed.clear()

    def _follow(self, scope: str) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                version = self._list(scope)
                failures = 0
                while not self._stop.is_set():
                    version = self._watch(scope, version)
            except Expired:
                log.info("the Deployments watch of %s expired: listing again", scope or "cluster")
            except Exception as error:  # any failure: the waits read the API meanwhile
                if self._stop.is_set():
                    return
                with self._lock:
                    self._followed.discard(scope)
                self._notify(None)
                pause = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                failures += 1
                log.warning(
                    "the Deployments watch of %s failed (%s); waits read the API until it is "
                    "back, next try in %.0f s",
                    scope or "cluster",
                    error,
                    pause,
                )
                self._stop.wait(pause)

    def _path(self, scope: str) -> str:
        if scope:
            return f"/apis/apps/v1/namespaces/{scope}/deployments"
        return "/apis/apps/v1/deployments"

    def _request(self, scope: str, query: list[tuple[str, str]], read_timeout: float) -> Any:
        method, url, headers, body, post = self.api.param_serialize(
            method="GET",
            resource_path=self._path(scope),
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(
            method, url, headers, body, post, _request_timeout=(10.0, read_timeout)
        )
        if not 200 <= response.status <= 299:
            text = response.read().decode("utf-8", errors="replace")
            raise ApiException(status=response.status, reason=response.reason, body=text)
        return response

    def _list(self, scope: str) -> str:
        """Replace the scope's copy with a fresh list; its resourceVersion to watch from."""
        listed: dict[Key, dict[str, Any]] = {}
        cont = ""
        while True:
            query = [("limit", str(LIST_PAGE))] + ([("continue", cont)] if cont else [])
            page = json.loads(self._request(scope, query, 60.0).read())
            for item in page.get("items") or []:
                listed[_key(item)] = _trimmed(item)
            metadata = page.get("metadata") or {}
            cont = metadata.get("continue") or ""
            if not cont:
                version = str(metadata.get("resourceVersion") or "")
                break
        with self._lock:
            for key in [k for k in self._objects if not scope or k[0] == scope]:
                del self._objects[key]
            self._objects.update(listed)
            self._followed.add(scope)
        self._notify(None)
        return version

    def _watch(self, scope: str, version: str) -> str:
        """Follow changes from ``version`` until the API server ends the watch; the last one."""
        query = [
            ("watch", "true"),
            ("resourceVersion", version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(WATCH_SECONDS)),
        ]
        response = self._request(scope, query, READ_TIMEOUT_SECONDS)
        self._open[scope] = response
        try:
            for line in iter_resp_lines(response.response):
                if not line:
                    continue
                event = json.loads(line)
                kind, item = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if item.get("code") == 410:
                        raise Expired(item.get("message", ""))
                    raise ApiException(status=item.get("code"), reason=item.get("message"))
                version = str((item.get("metadata") or {}).get("resourceVersion") or version)
                if kind == "BOOKMARK":
                    continue
                key = _key(item)
                with self._lock:
                    if kind == "DELETED":
                        self._objects.pop(key, None)
                    else:
                        self._objects[key] = _trimmed(item)
                self._notify(key[0])
        finally:
            self._open.pop(scope, None)
            with contextlib.suppress(Exception):
                response.response.release_conn()
        return version


def _key(item: dict[str, Any]) -> Key:
    metadata = item.get("metadata") or {}
    return str(metadata.get("namespace", "")), str(metadata.get("name", ""))


def _trimmed(item: dict[str, Any]) -> dict[str, Any]:
    """The Deployment without its managedFields (a third of its size; no wait reads them)."""
    metadata = dict(item.get("metadata") or {})
    metadata.pop("managedFields", None)
    return {**item, "metadata": metadata}


async def seen(
    watch: DeploymentWatch | None, api: client.ApiClient, namespace: str, name: str
) -> dict[str, Any] | None:
    """For waits only: the watched copy when there is one, else the API. Never for a read a
    write is decided on: the copy may trail the API."""
    if watch is not None:
        try:
            return watch.get(namespace, name)
        except NotWatched:
            pass
    return await kube.call(kube.read_deployment, api, namespace, name)


async def poll_until(
    watch: DeploymentWatch | None,
    namespace: str,
    read: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    deadline: datetime,
    now: kube.Clock,
    interval: Callable[[], float],
    watched_interval: float,
) -> tuple[T, bool]:
    """``kube.poll_until`` for a wait on ``namespace``'s Deployments: while the namespace is
    watched, each sleep ends as soon as it changed, and lasts at most ``watched_interval``
    (how soon a change elsewhere, a release that moved on, is noticed); while it is not,
    the reads go to the API every ``interval()``."""
    mark = 0

    def watched() -> bool:
        return watch is not None and watch.watching(namespace)

    async def marked_read() -> T:
        nonlocal mark
        if watch is not None:  # taken before the read: a change during it is not missed
            mark = watch.mark(namespace)
        return await read()

    async def sleep(seconds: float) -> None:
        if watch is not None and watched():
            await watch.changed_since(namespace, mark, seconds)
        else:
            await asyncio.sleep(seconds)

    return await kube.poll_until(
        marked_read,
        done,
        deadline=deadline,
        now=now,
        interval=lambda: watched_interval if watched() else interval(),
        sleep=sleep,
    )
