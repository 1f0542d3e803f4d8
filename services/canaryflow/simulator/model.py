"""Value types shared by discovery, traffic generation and export.

They are frozen so one discovery result can be read by the request loop and the HTTP
thread at the same time without locks: a new discovery replaces the whole mapping.
"""

from __future__ import annotations

from dataclasses import dataclass

from canaryflow.runtime.behaviour import Behaviour


@dataclass(frozen=True, order=True)
class ServiceKey:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, order=True)
class GroupKey:
    """The pods of one version on one track: the unit traffic is split over."""

    version: str
    track: str


@dataclass(frozen=True)
class PodInfo:
    name: str
    version: str
    track: str
    ready: bool


@dataclass(frozen=True)
class Share:
    """A group's part of a Service's traffic; weights of one split sum to 1."""

    group: GroupKey
    pods: int
    weight: float


@dataclass(frozen=True)
class Route:
    """A share together with how that group behaves when it receives a request."""

    share: Share
    behaviour: Behaviour

    @property
    def group(self) -> GroupKey:
        return self.share.group


@dataclass(frozen=True)
class Target:
    """Everything the request loop needs to drive one Service."""

    service: ServiceKey
    rps: float
    routes: tuple[Route, ...]
