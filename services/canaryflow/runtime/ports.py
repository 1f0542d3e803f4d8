"""The ports every service's handlers use, as Protocols: the service's adapters in production
(``Service.publisher``, ``Service.store``, ``Service.refuse``), fakes in tests."""

from __future__ import annotations

from typing import Any, Protocol

from canaryflow.runtime.authority import Refusal
from canaryflow.runtime.store import Versioned
from canaryflow_contracts import Envelope, EventData


class Publisher(Protocol):
    async def publish(
        self, data: EventData, release_id: str, *, event_id: str | None = None
    ) -> Envelope[Any]: ...


class ReleaseReader(Protocol):
    """The release states the planner writes (the KV bucket), read only."""

    async def get(self, release_id: str) -> Versioned | None: ...
    async def all(self) -> list[Versioned]: ...


class Refuser(Protocol):
    """Says why a command is not obeyed (``Service.refuse``)."""

    async def refuse(self, envelope: Envelope[Any], refusals: list[Refusal]) -> None: ...
