"""canaryflow's public contract: events, subjects, streams, release state and policy.

Needs only pydantic, so any Python system can request and follow releases with it; systems in
other languages use the JSON Schemas and the AsyncAPI document generated from these models.
Event payloads live in ``canaryflow_contracts.events``.
"""

from canaryflow_contracts.envelope import (
    MESSAGE_ID_HEADER,
    Envelope,
    EventData,
    envelope_of,
    new_event_id,
)
from canaryflow_contracts.events import CATALOGUE
from canaryflow_contracts.subjects import DEFAULT_PREFIX, StreamSpec, Subjects

__all__ = [
    "CATALOGUE",
    "DEFAULT_PREFIX",
    "MESSAGE_ID_HEADER",
    "Envelope",
    "EventData",
    "StreamSpec",
    "Subjects",
    "envelope_of",
    "new_event_id",
]
