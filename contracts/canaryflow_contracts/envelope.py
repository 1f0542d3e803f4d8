"""The CloudEvents 1.0 envelope every canaryflow event travels in (structured JSON mode).

Any system that speaks NATS and JSON can build one by hand, and any CloudEvents SDK can read
and write ours: so the envelope follows the specification on both sides. What it requires is
required (``specversion`` exactly "1.0", ``source``, ``type``; ``id`` doubles as the JetStream
``Nats-Msg-Id``, which makes a re-published event a duplicate the server drops). What it lets
a producer add is accepted: the optional attributes (``dataschema``, ``datacontenttype``,
``subject``, ``time``), extension attributes whose names follow the naming rule (lower-case
letters and digits; e.g. the distributed-tracing extension's ``traceparent``), kept and written
back unchanged, and ``data_base64`` in place of ``data``. Our events set ``dataschema`` to the
published JSON Schema of their type.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, Literal, Self, TypeVar

from pydantic import ConfigDict, Field, model_validator

from canaryflow_contracts.identifiers import RELEASE_ID_PATTERN
from canaryflow_contracts.text import TextModel

TYPE_PREFIX = "io.canaryflow."
# The NATS header carrying the envelope id: JetStream drops a second message with the same one.
MESSAGE_ID_HEADER = "Nats-Msg-Id"
# Where each event type's JSON Schema is published: the `$id` of the files generated into
# canaryflow_contracts/schemas/ (the name of a file there, not a server to fetch it from).
SCHEMA_BASE_URI = "https://canaryflow.io/schemas/"
SPECVERSION = "1.0"
# CloudEvents 1.0: an attribute name "MUST consist of lower-case letters ('a' to 'z') or
# digits ('0' to '9')". Extension values in JSON are strings, integers or booleans.
EXTENSION_NAME_PATTERN = r"^[a-z0-9]+$"
ExtensionValue = str | int | bool


class EventData(TextModel):
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

    @classmethod
    def schema_uri(cls) -> str:
        """The published JSON Schema of this event type (its file's ``$id``)."""
        return f"{SCHEMA_BASE_URI}{cls.event_type()}.json"

    @classmethod
    def dataschema(cls) -> str:
        """CloudEvents ``dataschema``: the ``data`` part of the published schema."""
        return f"{cls.schema_uri()}#/properties/data"


DataT = TypeVar("DataT", bound=EventData)


def new_event_id() -> str:
    return uuid.uuid4().hex


def _extension_schema(schema: dict[str, Any]) -> None:
    """Extensions in the JSON Schema: named by the rule, valued like in CloudEvents JSON."""
    schema["patternProperties"] = {
        # `data` is the one attribute that is not a string: the rule's names, but for it.
        "^(?!data$)[a-z0-9]+$": {"type": ["string", "integer", "boolean"]}
    }
    schema["additionalProperties"] = False


class Envelope(TextModel, Generic[DataT]):
    """A CloudEvents 1.0 structured-mode event whose ``data`` is a typed canaryflow payload.

    Extension attributes are kept in ``model_extra`` and serialised back as they came.
    """

    model_config = ConfigDict(extra="allow", frozen=True, json_schema_extra=_extension_schema)

    specversion: Literal["1.0"] = Field(description="The CloudEvents version: exactly 1.0.")
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
    dataschema: str | None = Field(
        default=None,
        min_length=1,
        description="URI of the schema data follows; canaryflow's events name their type's "
        "published JSON Schema.",
    )
    data: DataT

    @model_validator(mode="before")
    @classmethod
    def _cloudevents_attributes(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        if "data_base64" in value:
            value = _decoded_base64(value)
        known = cls.model_fields
        for name, attribute in value.items():
            if name in known:
                continue
            if not re.match(EXTENSION_NAME_PATTERN, name):
                raise ValueError(
                    f"attribute {name!r}: CloudEvents names are lower-case letters and digits"
                )
            if not isinstance(attribute, ExtensionValue):
                raise ValueError(
                    f"extension {name!r}: a string, an integer or a boolean, "
                    f"not {type(attribute).__name__}"
                )
        return value

    @property
    def extensions(self) -> dict[str, ExtensionValue]:
        """The extension attributes the event carries (e.g. ``traceparent``)."""
        return dict(self.model_extra or {})

    @classmethod
    def wrap(cls, data: DataT, *, release_id: str, source: str, **extra: Any) -> Envelope[DataT]:
        """Build an envelope whose type and dataschema match ``data``'s class (a fresh ``id``
        unless given)."""
        event = type(data)
        attributes = {
            "specversion": SPECVERSION,
            "id": new_event_id(),
            "dataschema": event.dataschema(),
            **extra,
        }
        return envelope_of(event)(
            data=data, subject=release_id, source=source, type=event.event_type(), **attributes
        )

    def check_type(self) -> Self:
        expected = type(self.data).event_type()
        if self.type != expected:
            raise ValueError(f"envelope type {self.type!r} does not match payload {expected!r}")
        return self


def _decoded_base64(value: dict[str, Any]) -> dict[str, Any]:
    """``data_base64`` (CloudEvents JSON's binary data) holding our JSON payload, as ``data``."""
    if "data" in value:
        raise ValueError("an event carries data or data_base64, not both")
    rest = {key: item for key, item in value.items() if key != "data_base64"}
    try:
        rest["data"] = json.loads(base64.b64decode(value["data_base64"], validate=True))
    # RecursionError: the decoded payload may nest deeper than json's recursion allows. The
    # services' depth limit (runtime.decoding) sees only the base64 text, never brackets, so
    # a nested payload reached json.loads and parse_event raised RecursionError instead of a
    # ValidationError (found by tests/unit/test_input_properties.py).
    except (binascii.Error, TypeError, ValueError, RecursionError) as error:
        raise ValueError(f"data_base64 is not base64 of a JSON payload: {error}") from error
    return rest


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
