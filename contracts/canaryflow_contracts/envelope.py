"""The CloudEvents-style envelope every canaryflow event travels in.

Any system that speaks NATS and JSON can build one by hand: the fields follow CloudEvents 1.0
(id, source, type, time, subject) so that tooling that knows CloudEvents can read our events,
and `id` doubles as the JetStream `Nats-Msg-Id`, which makes a re-published event a duplicate
the server drops instead of a second release.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from canaryflow_contracts.identifiers import RELEASE_ID_PATTERN

TYPE_PREFIX = "io.canaryflow."
# The NATS header carrying the envelope id: JetStream drops a second message with the same one.
MESSAGE_ID_HEADER = "Nats-Msg-Id"


class EventData(BaseModel):
    """Base of every event payload. Subclasses declare their CloudEvents type and subject name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Set by each concrete event, e.g. "release", "requested", 1.
    event_domain: ClassVar[str]
    event_name: ClassVar[str]
    event_version: ClassVar[int] = 1
    # What the subject's last token (and the envelope's ``subject``) names.
    subject_key: ClassVar[str] = "releaseId"

    @classmethod
    def event_type(cls) -> str:
        """The CloudEvents type, e.g. ``io.canaryflow.release.requested.v1``."""
        return f"{TYPE_PREFIX}{cls.event_domain}.{cls.event_name}.v{cls.event_version}"

    @classmethod
    def subject_stem(cls) -> str:
        """The NATS subject without prefix and release id, e.g. ``release.requested.v1``."""
        return f"{cls.event_domain}.{cls.event_name}.v{cls.event_version}"


DataT = TypeVar("DataT", bound=EventData)


def new_event_id() -> str:
    return uuid.uuid4().hex


class Envelope(BaseModel, Generic[DataT]):
    """A CloudEvents 1.0 structured-mode event whose ``data`` is a typed canaryflow payload."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    specversion: str = "1.0"
    id: str = Field(
        min_length=1,
        max_length=128,
        description="Required, chosen by the publisher: unique per source; also the "
        "Nats-Msg-Id, so a repeat is dropped.",
    )
    source: str = Field(
        min_length=1, description="Who emitted the event, e.g. 'canaryflow/planner' or 'ci/shop'."
    )
    type: str = Field(description="Versioned event type, e.g. io.canaryflow.release.requested.v1.")
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    subject: str = Field(
        pattern=RELEASE_ID_PATTERN,
        description="The release id (for a refused request: the request's token), "
        "the last token of the NATS subject.",
    )
    datacontenttype: str = "application/json"
    data: DataT

    @classmethod
    def wrap(cls, data: DataT, *, release_id: str, source: str, **extra: Any) -> Envelope[DataT]:
        """Build an envelope whose type matches ``data``'s class (a fresh ``id`` unless given)."""
        extra.setdefault("id", new_event_id())
        return envelope_of(type(data))(
            data=data, subject=release_id, source=source, type=type(data).event_type(), **extra
        )

    def check_type(self) -> Self:
        expected = type(self.data).event_type()
        if self.type != expected:
            raise ValueError(f"envelope type {self.type!r} does not match payload {expected!r}")
        return self


# envelope_of's parametrised envelopes, by event type.
_PARAMETRISED: dict[type[Any], type[Envelope[Any]]] = {}


def envelope_of(event: type[DataT]) -> type[Envelope[DataT]]:
    """``Envelope[event]``, built once per event type and kept.

    pydantic holds the models it parametrises only weakly, so an ``Envelope[X]`` written on a
    hot path is rebuilt (milliseconds of schema building) whenever the garbage collector has
    dropped it: in the planner that was once every few requests.
    """
    found = _PARAMETRISED.get(event)
    if found is None:
        found = _PARAMETRISED[event] = Envelope[event]  # type: ignore[valid-type]
    return found
