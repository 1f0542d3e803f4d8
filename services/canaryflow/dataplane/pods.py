"""Every Ready pod answers HTTP on its own address and ports, for exactly as long as it is Ready.

Why one process for all pods: KWOK's pods run nothing, and a process per pod would cost
hundreds of MB for a few dozen pods. One asyncio process binds each Ready pod's address and
declared TCP container ports (the stack's network namespace makes all of 10.244.0.0/16 local)
and serves that pod's shop (``shop.py``) there, with the behaviour its version is given in
the namespace's ``canaryflow-simulator`` ConfigMap.

Why keyed by pod UID: KWOK hands a deleted pod's address to the next pod at once, so the same
address:port can belong to two pods a second apart; a listener belongs to one UID and is
closed before another UID's listener takes the address. A pod that stops being Ready (or
starts terminating) stops answering, as its endpoints leave the Service.

It also lists every pod's scrape targets for Prometheus (``/sd``, http_sd) with the labels
Prometheus's own pod discovery gives, because Debian's Prometheus is built without it.

Why polling: the process must survive an API server that restarts under it; a list every
``--refresh`` seconds recovers by itself, and every failure keeps what is being served until
the next good list.

Why a watch as well, and a grace before a listener closes: KWOK marks a pod Ready the moment
it gives it an address, with no readiness probe in between, and the gateway routes to a Ready
endpoint about 0.1 s later (its provider throttle). Waiting for the next list (up to
``--refresh``) answered 502 to the first users of a freshly scaled canary, and so did a
list woken by the event (listing every pod takes longer than the gateway on two busy cores),
so a pod a watch event shows Ready is bound from the event itself (``handover``), and the
list follows (a real container listens before its probe passes). The other way round, KWOK
deletes a pod at once, while the endpoint takes the EndpointSlice controller and the
gateway's reload to leave (up to a second on two busy cores): closing the listener at once
answered 502 to users at every scale-down. A real pod keeps serving while it terminates (a
preStop sleep, the grace period), so a pod that leaves keeps its listener for ``--grace``
seconds (``due``), unless a new pod needs its address. Then only its listening socket closes
(the new pod binds the address at once); the connections it has, the gateway's keep-alive
ones included, are served out for the grace before they close: closing them with the
listener answered 502 to a request on a reused connection at a promotion (test_traffic).

Why a readiness gate: binding from the watch event still raced the gateway, since KWOK had
already made the pod Ready and its endpoint was on its way (502s just after a canary
scale-up, test_traffic). A pod whose template has the readiness gate ``SERVING_GATE`` (the
shop's do) is left not Ready by KWOK; this server binds its listener, then sets the gate and
Ready (``_mark_serving``), as a kubelet does once a readiness probe passes: its endpoint, and
the gateway's route to it, come only once it answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from canaryflow.dataplane import process
from canaryflow.dataplane.objects import SERVING_GATE
from canaryflow.dataplane.shop import PodIdentity, Shop
from canaryflow.runtime.behaviour import (
    CONFIGMAP_NAME,
    DEFAULT_BEHAVIOUR,
    Behaviour,
    parse_configmap,
)
from canaryflow_contracts.identifiers import version_of

log = logging.getLogger("canaryflow.dataplane.pods")


@dataclass(frozen=True)
class ServedPod:
    """A Ready pod with an address and ports (or one waiting for this server to answer before
    it is Ready, ``gated``): what gets a listener."""

    uid: str
    namespace: str
    name: str
    ip: str
    ports: tuple[int, ...]
    version: str
    gated: bool = False


def _condition(pod: Any, kind: str) -> bool:
    conditions = (pod.status.conditions if pod.status is not None else None) or []
    return any(c.type == kind and c.status == "True" for c in conditions)


def is_ready(pod: Any) -> bool:
    """Ready condition True and not terminating: what puts a pod in its Service's endpoints."""
    if pod.metadata is None or pod.metadata.deletion_timestamp is not None:
        return False
    return _condition(pod, "Ready")


def awaits_serving(pod: Any) -> bool:
    """Its containers are ready (a ``-never-ready`` pod's are not), it is not terminating,
    and its ``SERVING_GATE`` is not yet True: Ready once it answers."""
    if pod.metadata is None or pod.metadata.deletion_timestamp is not None or pod.spec is None:
        return False
    gates = {g.condition_type for g in (getattr(pod.spec, "readiness_gates", None) or [])}
    return (
        SERVING_GATE in gates
        and _condition(pod, "ContainersReady")
        and not _condition(pod, SERVING_GATE)
    )


def served_pod(pod: Any) -> ServedPod | None:
    """The pod as served, or None when it gets no listener (not Ready nor awaiting its
    listener, no address, no port)."""
    gated = awaits_serving(pod)
    if not (gated or is_ready(pod)):
        return None
    if pod.status is None or not pod.status.pod_ip or pod.spec is None:
        return None
    containers = pod.spec.containers or []
    ports = sorted(
        {
            p.container_port
            for c in containers
            for p in (c.ports or [])
            if (p.protocol or "TCP") == "TCP"
        }
    )
    if not ports:
        return None
    image = containers[0].image or ""
    return ServedPod(
        uid=pod.metadata.uid,
        namespace=pod.metadata.namespace,
        name=pod.metadata.name,
        ip=pod.status.pod_ip,
        ports=tuple(ports),
        version=version_of(image),
        gated=gated,
    )


def serving_status(now: str) -> dict[str, Any]:
    """The status patch that makes a gated pod Ready once its listener answers (conditions
    merge by type)."""
    return {
        "status": {
            "conditions": [
                {"type": kind, "status": "True", "lastTransitionTime": now}
                for kind in (SERVING_GATE, "Ready")
            ]
        }
    }


_NOT_A_NAME = re.compile(r"[^a-zA-Z0-9_]")


def _meta(prefix: str, values: Mapping[str, str] | None) -> dict[str, str]:
    labels = {}
    for key, value in (values or {}).items():
        name = _NOT_A_NAME.sub("_", key)
        labels[f"__meta_kubernetes_pod_{prefix}_{name}"] = value
        labels[f"__meta_kubernetes_pod_{prefix}present_{name}"] = "true"
    return labels


def sd_targets(pod: Any) -> list[dict[str, Any]]:
    """The pod as Prometheus's kubernetes_sd (role pod) would list it: a target per declared
    container port, with the same ``__meta_kubernetes_pod_*`` labels (those we relabel by).

    Served over http_sd because Debian's Prometheus has no Kubernetes discovery built in.
    """
    if pod.metadata is None or pod.status is None or not pod.status.pod_ip or pod.spec is None:
        return []
    common = {
        "__meta_kubernetes_namespace": pod.metadata.namespace,
        "__meta_kubernetes_pod_name": pod.metadata.name,
        "__meta_kubernetes_pod_uid": pod.metadata.uid,
        "__meta_kubernetes_pod_ip": pod.status.pod_ip,
        "__meta_kubernetes_pod_ready": "true" if is_ready(pod) else "false",
        "__meta_kubernetes_pod_node_name": pod.spec.node_name or "",
        **_meta("label", pod.metadata.labels),
        **_meta("annotation", pod.metadata.annotations),
    }
    targets = []
    for container in pod.spec.containers or []:
        for port in container.ports or []:
            labels = {
                **common,
                "__meta_kubernetes_pod_container_name": container.name,
                "__meta_kubernetes_pod_container_image": container.image or "",
                "__meta_kubernetes_pod_container_port_number": str(port.container_port),
                "__meta_kubernetes_pod_container_port_protocol": port.protocol or "TCP",
                "__meta_kubernetes_pod_container_port_name": port.name or "",
            }
            address = f"{pod.status.pod_ip}:{port.container_port}"
            targets.append({"targets": [address], "labels": labels})
    return targets


@dataclass(frozen=True)
class Plan:
    """What one reconcile does: UIDs to stop, pods to start (stops come first)."""

    stop: tuple[str, ...]
    start: tuple[ServedPod, ...]


def plan(current: Mapping[str, ServedPod], desired: Sequence[ServedPod]) -> Plan:
    """Stop every served UID that is no longer desired, start every desired one not served.

    A desired pod whose address and port a stopping UID holds is fine: stops run first. A
    desired pod that clashes with a UID that stays (two Ready pods, one address: should not
    happen) is left out until the other goes.
    """
    wanted = {pod.uid: pod for pod in desired}
    stop = tuple(sorted(uid for uid in current if uid not in wanted))
    held = {(p.ip, port) for uid, p in current.items() if uid in wanted for port in p.ports}
    start = []
    for pod in desired:
        if pod.uid in current:
            continue
        if any((pod.ip, port) in held for port in pod.ports):
            continue
        held.update((pod.ip, port) for port in pod.ports)
        start.append(pod)
    return Plan(stop=stop, start=tuple(start))


def starting_addresses(step: Plan) -> set[tuple[str, int]]:
    """Every (address, port) a pod the step starts will bind."""
    return {(pod.ip, port) for pod in step.start for port in pod.ports}


def due(
    step: Plan,
    current: Mapping[str, ServedPod],
    left_at: Mapping[str, float],
    now: float,
    grace: float,
) -> Plan:
    """The part of ``step`` done now: every start, and the stops of pods that left (at
    ``left_at``) ``grace`` seconds ago or more, or whose address a starting pod needs (KWOK
    hands it on at once)."""
    needed = starting_addresses(step)
    stop = tuple(
        uid
        for uid in step.stop
        if now - left_at.get(uid, now) >= grace
        or (uid in current and any((current[uid].ip, p) in needed for p in current[uid].ports))
    )
    return Plan(stop=stop, start=step.start)


def handover(current: Mapping[str, ServedPod], pod: ServedPod) -> Plan:
    """Start a pod an event shows Ready, unless served already; a served UID that holds its
    address has left (KWOK gives an address to one live pod at a time): it stops first."""
    if pod.uid in current:
        return Plan(stop=(), start=())
    wanted = {(pod.ip, port) for port in pod.ports}
    stop = tuple(
        sorted(
            uid
            for uid, held in current.items()
            if any((held.ip, port) in wanted for port in held.ports)
        )
    )
    return Plan(stop=stop, start=(pod,))


class Behaviours:
    """Behaviour per namespace and version, replaced whole at each refresh."""

    def __init__(self) -> None:
        self._by_namespace: dict[str, dict[str, Behaviour]] = {}

    def get(self, namespace: str, version: str) -> Behaviour:
        return self._by_namespace.get(namespace, {}).get(version, DEFAULT_BEHAVIOUR)

    def knows(self, namespace: str) -> bool:
        return namespace in self._by_namespace

    def replace(self, namespace: str, behaviours: dict[str, Behaviour]) -> None:
        self._by_namespace[namespace] = behaviours

    def keep_only(self, namespaces: set[str]) -> None:
        for gone in set(self._by_namespace) - namespaces:
            del self._by_namespace[gone]


class PodServer:
    """Keeps one aiohttp runner per served pod UID in line with the cluster."""

    def __init__(
        self, core: Any, rng: random.Random, timeout_s: float = 5.0, grace_s: float = 0.0
    ) -> None:
        self._core = core
        self._grace_s = grace_s
        self._left_at: dict[str, float] = {}
        """When each served pod that is no longer wanted was first seen gone."""
        self._rng = rng
        self._timeout_s = timeout_s
        self.behaviours = Behaviours()
        self.served: dict[str, ServedPod] = {}
        self._runners: dict[str, web.AppRunner] = {}
        self._marking: set[str] = set()
        """Gated pods whose Ready is being written now."""
        self._closing: set[asyncio.Task[None]] = set()
        """Runners of pods whose address was handed on, serving out their connections."""
        self.registry = CollectorRegistry()
        self.pods_gauge = Gauge(
            "dataplane_served_pods", "Pods answering HTTP now.", registry=self.registry
        )
        self.bind_errors = Counter(
            "dataplane_bind_errors", "Pod listeners that could not bind.", registry=self.registry
        )
        self.list_errors = Counter(
            "dataplane_list_errors", "Refreshes that could not list pods.", registry=self.registry
        )
        self.synced = False
        self.sd: list[dict[str, Any]] = []
        """Every pod's scrape targets, for Prometheus's http_sd (``/sd``)."""

    async def refresh(self) -> None:
        """List pods and serve them; a pod that left keeps its listener for the grace."""
        pods = await asyncio.to_thread(
            self._core.list_pod_for_all_namespaces, _request_timeout=self._timeout_s
        )
        desired = [p for p in (served_pod(pod) for pod in pods.items) if p is not None]
        self.sd = [target for pod in pods.items for target in sd_targets(pod)]
        namespaces = {p.namespace for p in desired}
        for namespace in sorted(namespaces):
            await self._read_behaviours(namespace)
        self.behaviours.keep_only(namespaces)
        step = plan(self.served, desired)
        now = time.monotonic()
        self._left_at = {uid: self._left_at.get(uid, now) for uid in step.stop}
        await self.apply(due(step, self.served, self._left_at, now, self._grace_s))
        # A gated pod served already whose Ready could not be written: written again.
        for pod in desired:
            if pod.gated and pod.uid in self.served and pod not in step.start:
                await self._mark_serving(pod)
        self.synced = True

    async def serve_now(self, pod: Any) -> None:
        """Bind a pod a watch event shows Ready, before the next list. The first pod of a
        namespace waits for its behaviours to be read (bound from the event alone, a pod of a
        version failing every request answered 200 until the next list); later ones do not
        (a read before each bind answered 502 at canary scale-ups)."""
        served = served_pod(pod)
        if served is None:
            return
        if served.uid in self.served:
            if served.gated and served.uid not in self._marking:
                await self._mark_serving(served)  # its Ready write failed, or came late
            return
        if not self.behaviours.knows(served.namespace):
            await self._read_behaviours(served.namespace)
        await self.apply(handover(self.served, served))

    async def _read_behaviours(self, namespace: str) -> None:
        try:
            configmap = await asyncio.to_thread(
                self._core.read_namespaced_config_map,
                CONFIGMAP_NAME,
                namespace,
                _request_timeout=self._timeout_s,
            )
        except Exception as exc:
            if getattr(exc, "status", None) == 404:
                self.behaviours.replace(namespace, {})
            else:
                log.warning(
                    "reading %s/%s failed; keeping the last: %r", namespace, CONFIGMAP_NAME, exc
                )
            return
        behaviours, problems = parse_configmap(configmap.data or {})
        for key, found in problems.items():
            log.warning("%s/%s key %s: %s", namespace, CONFIGMAP_NAME, key, "; ".join(found))
        self.behaviours.replace(namespace, behaviours)

    async def apply(self, step: Plan) -> None:
        needed = starting_addresses(step)
        for uid in step.stop:
            pod = self.served.pop(uid)
            runner = self._runners.pop(uid)
            if any((pod.ip, port) in needed for port in pod.ports) and self._grace_s > 0:
                for site in list(runner.sites):
                    await site.stop()  # the address is free; its connections are served out
                task = asyncio.create_task(self._close_later(runner))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            else:
                await runner.cleanup()
            log.info("stopped %s/%s (%s) at %s", pod.namespace, pod.name, uid, pod.ip)
        for pod in step.start:
            await self._start(pod)
        self.pods_gauge.set(len(self.served))

    async def _close_later(self, runner: web.AppRunner) -> None:
        await asyncio.sleep(self._grace_s)
        await runner.cleanup()

    async def _start(self, pod: ServedPod) -> None:
        shop = Shop(
            PodIdentity(pod.namespace, pod.name, pod.uid, pod.version),
            lambda: self.behaviours.get(pod.namespace, pod.version),
            random.Random(self._rng.random()),
        )
        runner = web.AppRunner(shop.app(), access_log=None)
        await runner.setup()
        try:
            for port in pod.ports:
                await web.TCPSite(runner, pod.ip, port, reuse_address=True).start()
        except OSError as exc:
            await runner.cleanup()
            self.bind_errors.inc()
            log.error(
                "cannot serve %s/%s at %s:%s (retrying next refresh): %s",
                pod.namespace,
                pod.name,
                pod.ip,
                pod.ports,
                exc,
            )
            return
        self.served[pod.uid] = pod
        self._runners[pod.uid] = runner
        log.info(
            "serving %s/%s (%s, version %s) at %s:%s",
            pod.namespace,
            pod.name,
            pod.uid,
            pod.version,
            pod.ip,
            ",".join(map(str, pod.ports)),
        )
        if pod.gated:
            await self._mark_serving(pod)

    async def _mark_serving(self, pod: ServedPod) -> None:
        """The pod answers: make it Ready (its gate, then Ready), so that its endpoint, and
        the gateway's route to it, come only now. A failure is retried at the next list."""
        self._marking.add(pod.uid)
        try:
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            await asyncio.to_thread(
                self._core.patch_namespaced_pod_status,
                pod.name,
                pod.namespace,
                serving_status(now),
                _request_timeout=self._timeout_s,
            )
        except Exception as exc:
            if getattr(exc, "status", None) != 404:  # a pod already gone needs nothing
                log.warning("marking %s/%s Ready failed: %r", pod.namespace, pod.name, exc)
        finally:
            self._marking.discard(pod.uid)

    async def close(self) -> None:
        await self.apply(Plan(stop=tuple(self.served), start=()))
        for task in list(self._closing):
            task.cancel()


def _own_app(server: PodServer) -> web.Application:
    """The server's own port: /healthz (after the first good refresh), /metrics, /pods, and
    /sd (the pods' scrape targets for Prometheus)."""

    async def pods(request: web.Request) -> web.Response:
        body = [vars(p) | {"ports": list(p.ports)} for p in server.served.values()]
        return web.Response(text=json.dumps(body, indent=2) + "\n", content_type="application/json")

    async def sd(request: web.Request) -> web.Response:
        return web.json_response(server.sd)

    app = process.own_app(lambda: server.synced, server.registry, "pods")
    app.router.add_get("/sd", sd)
    app.router.add_get("/pods", pods)
    return app


async def run(args: argparse.Namespace) -> int:
    from kubernetes import client

    from canaryflow.runtime.kube import api_client

    core = client.CoreV1Api(api_client(args.kubeconfig))
    server = PodServer(core, random.Random(args.seed), grace_s=args.grace)
    events: asyncio.Queue[Any] = asyncio.Queue()
    threading.Thread(
        target=_watch_pods,
        args=(core, asyncio.get_running_loop(), events),
        name="pod-watch",
        daemon=True,
    ).start()
    return await process.serve(
        _own_app(server),
        args,
        refresh=server.refresh,
        close=server.close,
        what="pods",
        log=log,
        on_failure=server.list_errors.inc,
        events=events,
        on_event=server.serve_now,
    )


def _watch_pods(core: Any, loop: asyncio.AbstractEventLoop, events: asyncio.Queue[Any]) -> None:
    """Queue every pod an event shows, for ever (a thread; the list loop stays the truth, so
    a broken watch only costs the wait for the next list)."""
    from kubernetes import watch

    while True:
        try:
            for event in watch.Watch().stream(
                core.list_pod_for_all_namespaces, timeout_seconds=60, _request_timeout=90
            ):
                if event["type"] in {"ADDED", "MODIFIED"}:
                    loop.call_soon_threadsafe(events.put_nowait, event["object"])
        except Exception as exc:  # the API server restarts under the stack now and then
            log.debug("pod watch ended, starting again: %r", exc)
            time.sleep(1)


def main(argv: Sequence[str] | None = None) -> int:
    args = process.parse(
        argv,
        prog="python -m canaryflow.dataplane.pods",
        description="Serve HTTP on every Ready pod's address (inside the stack's namespace).",
        listen="127.0.0.1:19465",
        extra=lambda parser: parser.add_argument(
            "--grace",
            type=process.non_negative,
            default=2.0,
            help="seconds a pod that left keeps answering",
        ),
    )
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
