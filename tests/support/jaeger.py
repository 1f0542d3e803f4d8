"""Jaeger's query API (the HTTP JSON API the UI uses) for tests.

Why: a span sent over OTLP is only proven stored when it can be read back, by trace id,
through the same API a person uses.
"""

from __future__ import annotations

import json
from typing import Any

import httpx


class JaegerQuery:
    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, trust_env=False)

    def close(self) -> None:
        self._client.close()

    def services(self) -> list[str]:
        response = self._client.get("/api/services")
        response.raise_for_status()
        return list(response.json().get("data") or [])

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        """The trace with this id (32 hex digits), or None while Jaeger does not have it."""
        response = self._client.get(f"/api/traces/{trace_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        data = response.json().get("data") or []
        return dict(data[0]) if data else None

    def find_traces(
        self, service: str, tags: dict[str, str], lookback: str = "1h", limit: int = 100
    ) -> list[dict[str, Any]]:
        """Traces with a span of ``service`` carrying every tag in ``tags`` (the UI's search)."""
        response = self._client.get(
            "/api/traces",
            params={
                "service": service,
                "tags": json.dumps(tags),
                "lookback": lookback,
                "limit": str(limit),
            },
        )
        response.raise_for_status()
        return [dict(found) for found in response.json().get("data") or []]

    @staticmethod
    def service_of(trace: dict[str, Any], span: dict[str, Any]) -> str:
        return str(trace["processes"][span["processID"]]["serviceName"])
