"""The published contract, read by standard tools, agrees with the bytes canaryflow writes.

Why: an external system trusts the files (JSON Schemas, AsyncAPI) and its CloudEvents SDK, not
our pydantic models. These tests check events written by our own code paths against the
published files with jsonschema, the official AsyncAPI parser and the CloudEvents SDK; the
end-to-end suite does the same for every event the running services put on the bus.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from faststream.nats import NatsBroker
from pydantic import ValidationError

from canaryflow.planner.app import build_service as build_planner
from canaryflow.runtime.bus import EventPublisher
from canaryflow.runtime.settings import Settings
from canaryflow_contracts import CATALOGUE, Envelope, EventData, Subjects, envelope_of
from canaryflow_contracts.envelope import SCHEMA_BASE_URI
from canaryflow_contracts.events import (
    ReleaseRequested,
    RunHook,
    TargetRef,
    parse_event,
)
from tests.support.contract import (
    asyncapi_document_problems,
    asyncapi_report,
    cloudevents_round_trip,
    contract_problems,
    published_schema,
    schema_errors,
)
from tests.support.samples import one_of_each
from tests.unit.contracts.test_contracts import REQUEST_JSON

TARGET = TargetRef(namespace="shop", name="web")

REPO = Path(__file__).resolve().parents[3]
# Where people read examples of events: the README and the docs site's pages.
DOCUMENTS = (REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")))


def docs_events() -> list[dict[str, Any]]:
    """Every JSON example in the README and the docs that is an event (has ``specversion``)."""
    blocks = [
        block
        for document in DOCUMENTS
        for block in re.findall(r"```json\n(.*?)```", document.read_text(), flags=re.DOTALL)
    ]
    events = [json.loads(block) for block in blocks]
    return [event for event in events if isinstance(event, dict) and "specversion" in event]


class _Recorder:
    """Stands in for the NATS connection under the services' own EventPublisher: it keeps the
    bytes the publisher would send to JetStream (the only fake here: no bus is needed to see
    what the publisher writes)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, str]]] = []
        self.connection = self

    def jetstream(self) -> _Recorder:
        return self

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str], stream: str
    ) -> None:
        self.sent.append((subject, payload, headers))


def published(events: list[EventData]) -> list[tuple[str, bytes, dict[str, str]]]:
    """Subject, body and headers of each event as EventPublisher puts it on the bus."""
    recorder = _Recorder()
    publisher = EventPublisher(cast("NatsBroker", recorder), Subjects(), "canaryflow/test")

    async def publish_all() -> None:
        for event in events:
            await publisher.publish(event, "web-1")

    asyncio.run(publish_all())
    return recorder.sent


def wire_events() -> list[dict[str, Any]]:
    """Every catalogue type, as the services' publisher writes it."""
    return [json.loads(body) for _, body, _ in published(one_of_each())]


def run_hook() -> Envelope[RunHook]:
    (event,) = [e for e in wire_events() if e["type"] == RunHook.event_type()]
    return envelope_of(RunHook).model_validate(event)


def test_the_docs_have_a_request_example() -> None:
    types = [event["type"] for event in docs_events()]
    assert ReleaseRequested.event_type() in types


def test_the_asyncapi_document_is_a_3_0_document_the_parser_accepts_without_cycles() -> None:
    report = asyncapi_report([])
    assert report.version == "3.0.0"
    assert report.errors == []
    assert report.circular == []
    assert report.messages == len(CATALOGUE)


def wire(envelope: Envelope[Any]) -> dict[str, Any]:
    """The JSON the bus carries for ``envelope`` (what EventPublisher writes)."""
    loaded: dict[str, Any] = json.loads(envelope.model_dump_json())
    return loaded


def examples() -> list[dict[str, Any]]:
    return [*docs_events(), REQUEST_JSON, *wire_events()]


def test_every_catalogue_type_is_checked() -> None:
    assert sorted({event["type"] for event in wire_events()}) == sorted(
        entry.event.event_type() for entry in CATALOGUE
    )


def test_events_validate_against_their_published_json_schema_and_asyncapi_payload() -> None:
    events = examples()
    for event in events:
        assert schema_errors(event) == [], event["type"]
    report = asyncapi_report(events)
    assert report.event_errors == [(event["type"], []) for event in events]
    assert contract_problems(events) == []


def test_the_check_of_captured_events_names_what_each_tool_refuses() -> None:
    # What the end-to-end run applies to every event captured from the bus must be able to fail.
    good = {**wire(run_hook()), "id": "good"}
    unknown_field = {**good, "id": "unknown-field", "data": {**good["data"], "stepIndex": 1}}
    no_source = {key: value for key, value in good.items() if key != "source"} | {"id": "nosrc"}
    problems = contract_problems([good, unknown_field, no_source])
    assert not [p for p in problems if " good: " in p]
    assert [p.split(": ")[1] for p in problems if " unknown-field: " in p] == [
        "JSON Schema",
        "AsyncAPI payload",
    ]
    assert all("stepIndex" in p for p in problems if " unknown-field: " in p)
    assert [p.split(": ")[1] for p in problems if " nosrc: " in p] == [
        "JSON Schema",
        "AsyncAPI payload",
        "CloudEvents SDK",
    ]


def test_a_field_the_schema_does_not_know_fails_both_validators() -> None:
    # The validators must be able to say no: the camelCase spelling the schema had is refused.
    event = wire(run_hook())
    event["data"]["hook"]["timeoutSeconds"] = event["data"]["hook"].pop("timeout_seconds")
    assert any("timeoutSeconds" in error for error in schema_errors(event))
    ((_, errors),) = asyncapi_report([event]).event_errors
    assert any("timeoutSeconds" in error for error in errors)


def test_each_schema_declares_its_dialect_and_the_uri_events_point_at() -> None:
    for entry in CATALOGUE:
        schema = published_schema(entry.event.event_type())
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"] == f"{SCHEMA_BASE_URI}{entry.event.event_type()}.json"
    envelope = run_hook()
    assert (
        envelope.dataschema == f"{published_schema(RunHook.event_type())['$id']}#/properties/data"
    )


# --------------------------------------------------------------------------- CloudEvents


def test_the_cloudevents_sdk_reads_our_events_and_writes_them_back_unchanged() -> None:
    for event in examples():
        raw = json.dumps(event).encode()
        written = cloudevents_round_trip(raw)
        assert written == event
        assert parse_event(json.dumps(written)) == parse_event(raw)


def sdk_event(**attributes: Any) -> dict[str, Any]:
    """A release request written by the CloudEvents SDK, with ``attributes`` added."""
    event = CloudEvent(
        {
            "id": "ci-1",
            "source": "ci/shop",
            "type": ReleaseRequested.event_type(),
            "subject": "web-1",
            "time": datetime(2026, 12, 1, tzinfo=UTC),
            "datacontenttype": "application/json",
            **attributes,
        },
        REQUEST_JSON["data"],  # type: ignore[arg-type]
    )
    written: dict[str, Any] = json.loads(JSONFormat().write(event))
    return written


def test_an_event_the_sdk_wrote_with_optional_and_extension_attributes_is_accepted_and_kept() -> (
    None
):
    event = sdk_event(
        dataschema="https://schemas.example/release.json",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        priority=3,
        urgent=True,
    )
    envelope = parse_event(json.dumps(event))
    assert envelope.dataschema == "https://schemas.example/release.json"
    assert envelope.extensions == {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "priority": 3,
        "urgent": True,
    }
    attributes = {key: value for key, value in event.items() if key != "data"}
    assert {key: value for key, value in wire(envelope).items() if key != "data"} == attributes
    assert schema_errors(event) == []
    assert asyncapi_report([event]).event_errors == [(event["type"], [])]


def test_binary_data_as_the_sdk_writes_it_is_read_as_the_payload() -> None:
    event = sdk_event()
    event["data_base64"] = base64.b64encode(json.dumps(event.pop("data")).encode()).decode()
    envelope = parse_event(json.dumps(event))
    assert envelope.data.target == TargetRef(namespace="shop", name="web")


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"specversion": None}, "specversion"),
        ({"specversion": "2.0"}, "specversion"),
        ({"source": None}, "source"),
        ({"Trace_Parent": "x"}, "lower-case letters and digits"),
        ({"meta": {"nested": 1}}, "a string, an integer or a boolean"),
        ({"data_base64": "bm90IGpzb24="}, "data or data_base64"),
    ],
)
def test_what_cloudevents_refuses_we_refuse(change: dict[str, Any], complaint: str) -> None:
    event = {**REQUEST_JSON, **change}
    event = {key: value for key, value in event.items() if value is not None}
    with pytest.raises(ValidationError, match=complaint):
        Envelope[ReleaseRequested].model_validate(event)
    assert schema_errors(event) != []


def test_a_missing_type_is_refused_like_the_sdk_does() -> None:
    event = {key: value for key, value in REQUEST_JSON.items() if key != "type"}
    with pytest.raises(ValueError):
        parse_event(json.dumps(event))
    with pytest.raises(Exception, match="type"):
        JSONFormat().read(None, json.dumps(event).encode())


# --------------------------------------------------------------------------- served documents


def test_the_document_a_service_serves_is_read_by_the_parser_as_asyncapi_3() -> None:
    # What /asyncapi.json returns (tests/e2e/test_observability.py checks every running one).
    planner = build_planner(Settings(service="planner"))
    assert asyncapi_document_problems(planner.asyncapi()) == []


def test_a_valid_asyncapi_2_document_is_refused() -> None:
    document = {
        "asyncapi": "2.6.0",
        "info": {"title": "old", "version": "1.0.0"},
        "channels": {"canaryflow.release.requested.v1": {"subscribe": {"message": {}}}},
    }
    assert asyncapi_document_problems(document) == ["AsyncAPI 2.6.0, not 3.0.0"]
