"""How a Service's traffic divides between versions.

Today the only source is the Ready pods behind the Service's selector, which is what a
plain kube-proxy Service does. Routing objects that carry explicit weights (a service mesh,
Gateway API) will be a second source; both answer the same small question, so the request
loop never needs to know which one produced a split.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from canaryflow.simulator.model import GroupKey, PodInfo, ServiceKey, Share

STABLE_TRACK = "stable"


@dataclass(frozen=True)
class ServiceSnapshot:
    """What discovery saw of one Service: the input every split source works from."""

    service: ServiceKey
    pods: tuple[PodInfo, ...]


class SplitSource(Protocol):
    def split(self, snapshot: ServiceSnapshot) -> tuple[Share, ...]: ...


def split_from_pods(pods: Iterable[PodInfo]) -> tuple[Share, ...]:
    """Each (version, track) group's share of traffic: its Ready pods over all Ready pods.

    Groups come stable first, then by track and version, so that the result of equal inputs
    compares equal and log lines stay stable. No Ready pod means no share at all.
    """
    counts = Counter(GroupKey(pod.version, pod.track) for pod in pods if pod.ready)
    total = sum(counts.values())
    if total == 0:
        return ()
    order = sorted(counts, key=lambda g: (g.track != STABLE_TRACK, g.track, g.version))
    return tuple(Share(group=g, pods=counts[g], weight=counts[g] / total) for g in order)


class ReadyPodSplit:
    """The split a Service without routing weights gets: proportional to Ready pods."""

    def split(self, snapshot: ServiceSnapshot) -> tuple[Share, ...]:
        return split_from_pods(snapshot.pods)
