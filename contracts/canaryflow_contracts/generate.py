"""Generates the published contract from the models: JSON Schemas, AsyncAPI, the policy CRD.

Run ``python -m canaryflow_contracts.generate [--check]``. The files are committed so that
systems in any language can read them; ``--check`` (used by the tests) fails when the
committed files have drifted from the code.

The schemas describe the bytes the bus carries, so they are made the way the services
serialise (``model_dump_json``: field names, not the policy's camelCase aliases), and in the
AsyncAPI document each message's payload is its envelope, named ``<Event>Envelope``, whose
``data`` is the event's own model (named ``<Event>``): the two must never share a name.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from canaryflow_contracts import policy
from canaryflow_contracts.envelope import EventData, envelope_of
from canaryflow_contracts.events import CATALOGUE
from canaryflow_contracts.identifiers import RELEASE_ID_PATTERN
from canaryflow_contracts.subjects import DEFAULT_PREFIX

PACKAGE_DIR = Path(__file__).parent
REPO_DIR = PACKAGE_DIR.parent.parent
CRD_PATH = (
    REPO_DIR / "deploy" / "helm" / "canaryflow" / "crds" / "releasepolicies.canaryflow.io.json"
)
CONTRACT_VERSION = "1.0.0"
# What a channel's last token is, per EventData.subject_key.
CHANNEL_KEYS = {
    "releaseId": f"Release id ({RELEASE_ID_PATTERN}).",
    "requestToken": "The refused request's token: its envelope id when that is a valid "
    "release id, else 'r-' and the first 40 hex digits of the SHA-256 of its UTF-8 bytes.",
    "groupId": f"Release group id ({RELEASE_ID_PATTERN}, at most 59 characters: its members "
    "are the releases '<group id>-m<i>').",
    "pipelineId": f"Release pipeline id ({RELEASE_ID_PATTERN}, at most 59 characters: its "
    "environments are the releases '<pipeline id>-e<i>').",
}
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def envelope_schema(event: type[EventData]) -> dict[str, Any]:
    """The JSON Schema of one event type as published: envelope and data, field names."""
    schema = envelope_of(event).model_json_schema(by_alias=False, mode="serialization")
    schema = {"$schema": JSON_SCHEMA_DIALECT, "$id": event.schema_uri(), **schema}
    schema["title"] = event.__name__
    schema["properties"]["type"]["const"] = event.event_type()
    return schema


def _envelope_name(event: type[EventData]) -> str:
    return f"{event.__name__}Envelope"


def _add_component(schemas: dict[str, Any], name: str, definition: dict[str, Any]) -> None:
    """Add a schema component, refusing a second, different one of the same name."""
    known = schemas.setdefault(name, definition)
    if known != definition:
        raise ValueError(f"two different schemas are both named {name!r} in the AsyncAPI document")


def json_schemas() -> dict[str, dict[str, Any]]:
    return {entry.event.event_type(): envelope_schema(entry.event) for entry in CATALOGUE}


def asyncapi() -> dict[str, Any]:
    """An AsyncAPI 3.0 document: one channel and one message per event type."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    components: dict[str, Any] = {"messages": {}, "schemas": {}}
    for entry in CATALOGUE:
        event = entry.event
        name = event.__name__
        schema = envelope_schema(event)
        # AsyncAPI's default schema format is its own (a JSON Schema draft 7 superset): the
        # JSON Schema file's dialect and id stay in the file.
        del schema["$schema"], schema["$id"]
        for def_name, definition in schema.pop("$defs", {}).items():
            _add_component(components["schemas"], def_name, definition)
        _add_component(components["schemas"], _envelope_name(event), schema)
        components["messages"][name] = {
            "name": name,
            "title": event.event_type(),
            "summary": (event.__doc__ or "").strip().splitlines()[0],
            "contentType": "application/json",
            "headers": {
                "type": "object",
                "properties": {
                    "Nats-Msg-Id": {"type": "string", "description": "The envelope id."},
                    "traceparent": {"type": "string", "description": "W3C trace context."},
                },
            },
            "payload": {"$ref": f"#/components/schemas/{_envelope_name(event)}"},
        }
        key = event.subject_key
        channels[name] = {
            "address": f"{DEFAULT_PREFIX}.{event.subject_stem()}.{{{key}}}",
            "parameters": {key: {"description": CHANNEL_KEYS[key]}},
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "description": f"Published by {entry.publisher}; consumed by "
            f"{', '.join(entry.consumers) or 'anyone following releases'}.",
        }
        operations[f"publish{name}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{name}"},
            "summary": f"{entry.publisher} publishes {event.event_type()}",
        }
    text = json.dumps({"channels": channels, "components": components})
    text = text.replace('"#/$defs/', '"#/components/schemas/')
    body = json.loads(text)
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "canaryflow release events",
            "version": CONTRACT_VERSION,
            "description": "Request a release by publishing ReleaseRequested on NATS JetStream; "
            "follow it on the other channels. Every message is a CloudEvents 1.0 envelope.",
        },
        "defaultContentType": "application/json",
        "channels": body["channels"],
        "operations": operations,
        "components": body["components"],
    }


def _structural(schema: Any, defs: dict[str, Any]) -> Any:
    """Turn a pydantic JSON Schema into a Kubernetes structural schema (no refs, no anyOf null)."""
    if isinstance(schema, list):
        return [_structural(item, defs) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        return _structural(copy.deepcopy(defs[schema["$ref"].rsplit("/", 1)[-1]]), defs)
    if "anyOf" in schema:
        options = [option for option in schema["anyOf"] if option.get("type") != "null"]
        if len(options) == 1:
            merged = {**_structural(options[0], defs), "nullable": True}
            if "description" in schema:
                merged["description"] = schema["description"]
            if schema.get("default") is not None:
                merged["default"] = schema["default"]
            return merged
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("title", "$defs", "const"):
            continue
        if key == "additionalProperties":
            # A map (dict[str, str]) keeps its value schema, or the API server prunes every
            # key; a model's "no extra fields" (false) has no structural equivalent.
            if isinstance(value, dict) and "properties" not in schema:
                out[key] = _structural(value, defs)
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            # JSON Schema 2020-12's numeric bound is OpenAPI 3.0's bound plus a flag.
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        else:
            out[key] = _structural(value, defs)
    if out.get("default") is None:
        out.pop("default", None)
    return out


def crd() -> dict[str, Any]:
    spec_schema = policy.ReleasePolicySpec.model_json_schema(by_alias=True)
    structural = _structural(spec_schema, spec_schema.get("$defs", {}))
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{policy.PLURAL}.{policy.GROUP}"},
        "spec": {
            "group": policy.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": policy.KIND,
                "plural": policy.PLURAL,
                "singular": "releasepolicy",
                "shortNames": ["rpol"],
            },
            "versions": [
                {
                    "name": policy.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {"spec": structural},
                        }
                    },
                    # The services list a Deployment's policies by this field, not the
                    # namespace's all (Kubernetes 1.32+).
                    "selectableFields": [{"jsonPath": ".spec.targetRef"}],
                    "additionalPrinterColumns": [
                        {"name": "Target", "type": "string", "jsonPath": ".spec.targetRef"},
                        {"name": "Max weight", "type": "integer", "jsonPath": ".spec.maxWeight"},
                    ],
                }
            ],
        },
    }


def rendered() -> dict[Path, str]:
    """Every generated file and its exact content."""

    def dump(value: Any) -> str:
        return json.dumps(value, indent=2, sort_keys=True) + "\n"

    files = {
        PACKAGE_DIR / "schemas" / f"{event_type}.json": dump(schema)
        for event_type, schema in json_schemas().items()
    }
    files[PACKAGE_DIR / "asyncapi.json"] = dump(asyncapi())
    files[CRD_PATH] = dump(crd())
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed files drifted")
    args = parser.parse_args(argv)
    drifted = []
    for path, content in rendered().items():
        current = path.read_text() if path.exists() else None
        if current == content:
            continue
        if args.check:
            drifted.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            print(f"wrote {path}")
    if drifted:
        print(
            "generated contract files drifted from the code; run "
            "`python -m canaryflow_contracts.generate`:\n  " + "\n  ".join(drifted),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
