"""A small Prometheus HTTP API client for tests: instant queries and scrape-target registration.

Why not a library: tests need two things, "evaluate this PromQL now" and "scrape my
/metrics endpoint", and both are one HTTP call or one file. Registration writes a file_sd
file into the stack's targets folder, which Prometheus re-reads within about 2 s.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


class PromQueryError(RuntimeError):
    """Prometheus refused the query (bad PromQL) or answered with an error."""


class PrometheusQuery:
    def __init__(self, base_url: str, targets_dir: Path, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.targets_dir = targets_dir
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, trust_env=False)

    def close(self) -> None:
        self._client.close()

    def query(self, expr: str) -> list[Sample]:
        """Evaluate an instant query; a vector or scalar result becomes a list of samples."""
        response = self._client.get("/api/v1/query", params={"query": expr})
        body: dict[str, Any] = response.json()
        if body.get("status") != "success":
            raise PromQueryError(f"{expr!r}: {body.get('errorType')}: {body.get('error')}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return [Sample({}, float(data["result"][1]))]
        if data["resultType"] != "vector":
            raise PromQueryError(f"{expr!r}: unsupported result type {data['resultType']}")
        return [Sample(dict(r["metric"]), float(r["value"][1])) for r in data["result"]]

    def by_label(self, expr: str, label: str) -> dict[str, float]:
        """The query's samples keyed by one label's value."""
        return {s.labels.get(label, ""): s.value for s in self.query(expr)}

    def targets(self) -> list[dict[str, Any]]:
        response = self._client.get("/api/v1/targets", params={"state": "active"})
        active: list[dict[str, Any]] = response.json()["data"]["activeTargets"]
        return active

    def register_target(self, name: str, address: str, labels: dict[str, str]) -> Path:
        """Have Prometheus scrape ``http://address/metrics``; returns the file to delete later."""
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        path = self.targets_dir / f"{safe}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": [address], "labels": labels}]))
        tmp.replace(path)
        return path
