"""The history of a namespace's pods as the API reports it, for claims about capacity.

"Stable was at full size before traffic returned to it" is a claim about order, so it is
checked on the order of the API's own watch events (one watch: one total order), never on
timing. Each event also carries the local time it arrived, for measurements.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Self

from kubernetes import client, watch

TRACK_LABEL = "canaryflow.io/track"


@dataclass(frozen=True)
class PodEvent:
    at: float  # time.monotonic() when it arrived
    kind: str  # ADDED | MODIFIED | DELETED
    name: str
    track: str  # stable | canary | baseline
    serving: bool  # Ready and not terminating: the Service sends it traffic


@dataclass(frozen=True)
class Moment:
    at: float
    stable: int  # stable pods serving
    canary: int  # canary pods serving
    canary_left: bool  # a canary pod stopped serving with this event
    baseline: int = 0  # baseline pods serving (the stable version, beside the canary)

    @property
    def total(self) -> int:
        return self.stable + self.canary + self.baseline


@dataclass
class _Watcher:
    """Something that follows the pods matching ``selector`` in a thread until finished."""

    namespace: str
    selector: str
    stop: threading.Event = field(default_factory=threading.Event, kw_only=True)
    _thread: threading.Thread | None = field(default=None, kw_only=True)

    def start(self, kube: client.ApiClient) -> Self:
        self._thread = threading.Thread(target=self._run, args=(kube,), daemon=True)
        self._thread.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self, kube: client.ApiClient) -> None:
        raise NotImplementedError


@dataclass
class PodHistory(_Watcher):
    """Records every change to the pods matching ``selector`` until finished."""

    events: list[PodEvent] = field(default_factory=list, kw_only=True)

    def _run(self, kube: client.ApiClient) -> None:
        # List, then watch from the list's resourceVersion. A watch without one starts with
        # the pods as synthetic ADDED events in no particular order, and resuming from the
        # last of those replayed older changes (pods "not Ready" again) into the history.
        pods = client.CoreV1Api(kube)
        resource_version = ""
        while not self.stop.is_set():
            if not resource_version:
                listed = pods.list_namespaced_pod(self.namespace, label_selector=self.selector)
                for pod in listed.items:
                    self._record("ADDED", pod)
                resource_version = listed.metadata.resource_version
            try:
                stream = watch.Watch().stream(
                    pods.list_namespaced_pod,
                    self.namespace,
                    label_selector=self.selector,
                    timeout_seconds=1,
                    resource_version=resource_version,
                )
                for event in stream:
                    resource_version = event["object"].metadata.resource_version
                    self._record(event["type"], event["object"])
                    if self.stop.is_set():
                        break
            except client.exceptions.ApiException as error:
                if error.status != 410:
                    raise
                resource_version = ""  # too old to resume: list again

    def _record(self, kind: str, pod: client.V1Pod) -> None:
        ready = any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))
        gone = kind == "DELETED" or pod.metadata.deletion_timestamp is not None
        track = (pod.metadata.labels or {}).get(TRACK_LABEL, "stable")
        self.events.append(
            PodEvent(time.monotonic(), kind, pod.metadata.name, track, ready and not gone)
        )

    def moments(self) -> Iterator[Moment]:
        """Who serves after each event, in the API's order."""
        serving: dict[str, tuple[str, bool]] = {}
        for event in self.events:
            before = serving.get(event.name, (event.track, False))[1]
            serving[event.name] = (event.track, event.serving)
            yield Moment(
                at=event.at,
                stable=sum(1 for t, s in serving.values() if s and t == "stable"),
                canary=sum(1 for t, s in serving.values() if s and t == "canary"),
                canary_left=event.track == "canary" and before and not event.serving,
                baseline=sum(1 for t, s in serving.values() if s and t == "baseline"),
            )


@dataclass(frozen=True)
class Handover:
    """How traffic went back from the canary to stable."""

    stable_whole_whenever_canary_left: bool
    fewest_serving: int  # every version's pods, from the first canary pod leaving to the end
    seconds_below: float  # time with fewer than ``full_size`` pods serving, after the start
    stable_whole_at: float | None  # when stable first served at full size, after ``since``


def handover(history: PodHistory, full_size: int, since: float = 0.0) -> Handover:
    whole = True
    fewest: int | None = None
    started = False
    below_since: float | None = None
    below = 0.0
    whole_at: float | None = None
    last = since
    for moment in history.moments():
        if moment.at < since:
            continue
        last = moment.at
        if moment.canary_left:
            started = True
            whole = whole and moment.stable >= full_size
        total = moment.total
        if started:
            fewest = total if fewest is None else min(fewest, total)
        if whole_at is None and moment.stable >= full_size:
            whole_at = moment.at
        if total < full_size and below_since is None:
            below_since = moment.at
        elif total >= full_size and below_since is not None:
            below += moment.at - below_since
            below_since = None
    if below_since is not None:
        below += last - below_since
    assert started, "no canary pod was seen leaving"
    return Handover(whole, fewest if fewest is not None else 0, below, whole_at)


@dataclass
class WarmUp(_Watcher):
    """Pods that take ``seconds`` to become Ready, as real ones do (KWOK's are Ready at once).

    Works on pods whose image ends in ``-never-ready`` (KWOK starts them Running, not Ready):
    ``seconds`` after such a pod is first seen running, its Ready condition is set, the way
    a kubelet does once a readiness probe passes. Nothing else touches the pod after that.
    """

    seconds: float = 2.0

    def _run(self, kube: client.ApiClient) -> None:
        pods = client.CoreV1Api(kube)
        first_seen: dict[str, float] = {}
        ready = {
            "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "ContainersReady", "status": "True"},
            ]
        }
        while not self.stop.wait(0.05):
            now = time.monotonic()
            for pod in pods.list_namespaced_pod(self.namespace, label_selector=self.selector).items:
                name = pod.metadata.name
                if pod.metadata.deletion_timestamp is not None or not pod.status.pod_ip:
                    continue
                if any(
                    c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
                ):
                    continue
                seen = first_seen.setdefault(name, now)
                if now - seen >= self.seconds:
                    pods.patch_namespaced_pod_status(name, self.namespace, {"status": ready})
