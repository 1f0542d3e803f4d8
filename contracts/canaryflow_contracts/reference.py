"""Markdown reference pages written from the models: the policy's fields and the event catalogue.

Why: a reference typed by hand drifts from the code the day a default or a bound changes. The
docs site (``docs/hooks/generated.py``, an MkDocs hook) puts these tables into the pages at
build time, so the models stay the one source of truth: the policy reference is read from
the same JSON Schema the CRD is generated from, the catalogue table from ``CATALOGUE``.
"""

from __future__ import annotations

import json
from typing import Any

from canaryflow_contracts.events import CATALOGUE, RequestRefused
from canaryflow_contracts.policy import ReleasePolicySpec
from canaryflow_contracts.subjects import Subjects

_REF = "#/$defs/"
# JSON Schema keywords shown as a field's bounds, in this order.
_BOUNDS = (
    ("minimum", "≥ {}"),
    ("exclusiveMinimum", "> {}"),
    ("maximum", "≤ {}"),
    ("exclusiveMaximum", "< {}"),
    ("minLength", "length ≥ {}"),
    ("maxLength", "length ≤ {}"),
    ("minItems", "items ≥ {}"),
    ("maxItems", "items ≤ {}"),
    ("pattern", "matches `{}`"),
)


def _anchor(name: str) -> str:
    return f"policy-{name.lower()}"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _type(schema: dict[str, Any]) -> str:
    """A field's type in words, with links to the sections of nested objects and enums."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix(_REF)
        return f"[{name}](#{_anchor(name)})"
    if "anyOf" in schema:
        kinds = [_type(option) for option in schema["anyOf"] if option.get("type") != "null"]
        return " or ".join(kinds)
    kind = schema.get("type")
    if kind == "array":
        return f"list of {_type(schema.get('items', {}))}"
    if kind == "object":
        values = schema.get("additionalProperties")
        return f"map of string to {_type(values)}" if isinstance(values, dict) else "object"
    return str(kind or "any")


def _bounds(schema: dict[str, Any]) -> str:
    # Optional fields keep their bounds inside the non-null branch of anyOf.
    branches = [schema, *(option for option in schema.get("anyOf", []) if "type" in option)]
    found = [
        text.format(branch[key]) for branch in branches for key, text in _BOUNDS if key in branch
    ]
    return "; ".join(found)


def _default(schema: dict[str, Any], required: bool) -> str:
    if required:
        return "required"
    if "default" in schema:
        return f"`{json.dumps(schema['default'])}`"
    # A default made by a factory is not in the schema: an empty list, or the object's defaults.
    return "`[]`" if schema.get("type") == "array" else "its fields' defaults"


def _section(name: str, schema: dict[str, Any], heading: str) -> list[str]:
    lines = [f"### {heading} {{#{_anchor(name)}}}", ""]
    if schema.get("description"):
        lines += [" ".join(schema["description"].split()), ""]
    if "enum" in schema:
        values = ", ".join(f"`{value}`" for value in schema["enum"])
        return [*lines, f"One of: {values}.", ""]
    required = set(schema.get("required", []))
    lines += ["| field | type | default | bounds | meaning |", "|---|---|---|---|---|"]
    for field, prop in schema.get("properties", {}).items():
        lines.append(
            f"| `{field}` | {_type(prop)} | {_default(prop, field in required)} "
            f"| {_cell(_bounds(prop))} | {_cell(prop.get('description', ''))} |"
        )
    return [*lines, ""]


def _referenced(schema: dict[str, Any]) -> list[str]:
    """The names of the definitions ``schema`` refers to, in the order they appear."""
    text = json.dumps(schema)
    names: list[str] = []
    for part in text.split('"$ref": "')[1:]:
        name = part.split('"', 1)[0].removeprefix(_REF)
        if name not in names:
            names.append(name)
    return names


def policy_reference() -> str:
    """Every field of a ReleasePolicy's ``spec``, one section per object, depth first."""
    schema = ReleasePolicySpec.model_json_schema(by_alias=True)
    definitions: dict[str, dict[str, Any]] = schema.pop("$defs", {})
    lines = _section("spec", schema, "`spec`")
    order: list[str] = []
    pending = _referenced(schema)
    while pending:
        name = pending.pop(0)
        if name in order:
            continue
        order.append(name)
        pending = [*_referenced(definitions[name]), *pending]
    for name in order:
        lines += _section(name, definitions[name], f"`{name}`")
    return "\n".join(lines).rstrip() + "\n"


def catalogue_table(subjects: Subjects | None = None) -> str:
    """Who publishes and who consumes each event, from ``CATALOGUE``."""
    subjects = subjects or Subjects()
    lines = [
        "| event | type | subject | published by | consumed by |",
        "|---|---|---|---|---|",
    ]
    for entry in CATALOGUE:
        event = entry.event
        consumers = ", ".join(entry.consumers) or "(followers only)"
        # A refusal is keyed by the request, never by a release (it did not become one).
        key = "<request token>" if event is RequestRefused else "<release>"
        lines.append(
            f"| `{event.__name__}` | `{event.event_type()}` "
            f"| `{subjects.of(event, key)}` | {entry.publisher} | {consumers} |"
        )
    return "\n".join(lines) + "\n"
