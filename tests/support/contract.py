"""Checks an event the way a system outside canaryflow would: with standard tools only.

Why: the contract is true when other people's tools agree with it, not ours. Each event (as
JSON, the bytes the bus carries) is checked against the published files in the contracts
package, never against schemas regenerated in memory:
- its JSON Schema, with the ``jsonschema`` validator the schema's ``$schema`` names;
- its AsyncAPI message payload, with the official ``@asyncapi/parser`` (npm), run through node
  by ``tools/asyncapi/check.mjs`` (installed by ``make venv``);
- the CloudEvents Python SDK, which must read it and write it back unchanged.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from cloudevents.core.formats.json import JSONFormat

import canaryflow_contracts

CONTRACTS_DIR = Path(canaryflow_contracts.__file__).parent
ASYNCAPI_PATH = CONTRACTS_DIR / "asyncapi.json"
SCHEMAS_DIR = CONTRACTS_DIR / "schemas"
REPO_DIR = Path(__file__).resolve().parents[2]
ASYNCAPI_CHECK = REPO_DIR / "tools" / "asyncapi" / "check.mjs"


@cache
def published_schema(event_type: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS_DIR / f"{event_type}.json").read_text())
    return schema


def schema_errors(event: dict[str, Any]) -> list[str]:
    """What the event's published JSON Schema says is wrong with it (nothing: valid)."""
    schema = published_schema(event["type"])
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    return [
        f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(event)
    ]


@dataclass(frozen=True)
class AsyncApiReport:
    """The AsyncAPI parser's verdict on the document, and on each event given to it."""

    version: str | None
    errors: list[str]
    circular: list[str]
    messages: int
    event_errors: list[tuple[str, list[str]]]


def asyncapi_report(events: list[dict[str, Any]], document: Path = ASYNCAPI_PATH) -> AsyncApiReport:
    node = shutil.which("node")
    if node is None or not (ASYNCAPI_CHECK.parent / "node_modules").is_dir():
        raise AssertionError("the AsyncAPI parser needs node and `make venv` (npm ci)")
    completed = subprocess.run(
        [node, str(ASYNCAPI_CHECK), str(document)],
        input="".join(json.dumps(event) + "\n" for event in events),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if completed.returncode != 0:
        raise AssertionError(f"the AsyncAPI check failed to run: {completed.stderr[-2000:]}")
    raw = json.loads(completed.stdout)
    return AsyncApiReport(
        version=raw["version"],
        errors=raw["errors"],
        circular=raw["circular"],
        messages=raw["messages"],
        event_errors=[(item["type"], item["errors"]) for item in raw["events"]],
    )


def cloudevents_round_trip(raw: bytes) -> dict[str, Any]:
    """The event as the CloudEvents SDK reads it and writes it back (raises if it refuses)."""
    sdk = JSONFormat()
    event = sdk.read(None, raw)
    written: dict[str, Any] = json.loads(sdk.write(event))
    return written


def contract_problems(events: list[dict[str, Any]]) -> list[str]:
    """Everything the three standard tools find wrong with ``events`` (nothing: all valid):
    each event's JSON Schema, its AsyncAPI payload, and the CloudEvents SDK's round trip."""
    problems = [
        f"{event.get('type')} {event.get('id')}: JSON Schema: {error}"
        for event in events
        for error in schema_errors(event)
    ]
    report = asyncapi_report(events)
    problems += [f"AsyncAPI document: {error}" for error in report.errors + report.circular]
    problems += [
        f"{event.get('type')} {event.get('id')}: AsyncAPI payload: {error}"
        for event, (_, errors) in zip(events, report.event_errors, strict=True)
        for error in errors
    ]
    for event in events:
        try:
            written = cloudevents_round_trip(json.dumps(event).encode())
        except Exception as error:  # the SDK refused it: that is the finding
            problems.append(f"{event.get('type')} {event.get('id')}: CloudEvents SDK: {error!r}")
            continue
        if written != event:
            problems.append(
                f"{event.get('type')} {event.get('id')}: CloudEvents SDK wrote back {written}"
            )
    return problems


ASYNCAPI_VERSION = "3.0.0"


def asyncapi_document_problems(document: dict[str, Any]) -> list[str]:
    """What the official parser finds wrong with an AsyncAPI document (nothing: it is a valid
    document of the version canaryflow publishes, 3.0.0; a valid 2.x document is a problem)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "asyncapi.json"
        path.write_text(json.dumps(document))
        report = asyncapi_report([], path)
    problems = [f"parser: {error}" for error in report.errors]
    problems += [f"circular payload: {message}" for message in report.circular]
    if report.version != ASYNCAPI_VERSION:
        problems.append(f"AsyncAPI {report.version}, not {ASYNCAPI_VERSION}")
    return problems
