"""A trace read from Jaeger's query API, as a tree a test can ask questions of.

Why: "one connected trace, in causal order" is a property of the tree (every parent present,
one root, each service's spans below the spans that caused them), which is awkward to check
on Jaeger's flat JSON span list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Span:
    span_id: str
    trace_id: str
    parent_id: str | None
    name: str
    service: str
    start_us: int
    duration_us: int
    tags: dict[str, Any]


class TraceView:
    def __init__(self, trace: dict[str, Any]) -> None:
        processes = trace["processes"]
        self.trace_id: str = trace["traceID"]
        self.spans: dict[str, Span] = {}
        for raw in trace["spans"]:
            parents = [r["spanID"] for r in raw.get("references", []) if r["refType"] == "CHILD_OF"]
            span = Span(
                span_id=raw["spanID"],
                trace_id=raw["traceID"],
                parent_id=parents[0] if parents else None,
                name=raw["operationName"],
                service=processes[raw["processID"]]["serviceName"],
                start_us=int(raw["startTime"]),
                duration_us=int(raw["duration"]),
                tags={tag["key"]: tag["value"] for tag in raw.get("tags", [])},
            )
            self.spans[span.span_id] = span

    def roots(self) -> list[Span]:
        return [s for s in self.spans.values() if s.parent_id is None]

    def missing_parents(self) -> list[Span]:
        """Spans whose parent is not in the trace (a broken tree)."""
        return [s for s in self.spans.values() if s.parent_id and s.parent_id not in self.spans]

    def services(self) -> set[str]:
        return {s.service for s in self.spans.values()}

    def named(self, prefix: str, service: str | None = None) -> list[Span]:
        found = [
            s
            for s in self.spans.values()
            if s.name.startswith(prefix) and (service is None or s.service == service)
        ]
        return sorted(found, key=lambda s: s.start_us)

    def ancestors(self, span: Span) -> list[Span]:
        """From the span's parent up to the root."""
        chain: list[Span] = []
        current = span
        while current.parent_id is not None and current.parent_id in self.spans:
            current = self.spans[current.parent_id]
            chain.append(current)
        return chain

    def descends_from(self, span: Span, ancestor: Span) -> bool:
        return any(a.span_id == ancestor.span_id for a in self.ancestors(span))
