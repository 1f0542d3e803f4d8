"""A generic HTTP/JSON metrics backend, for sources that are not Prometheus.

Many metric stores (an in-house API, a vendor's query endpoint, a small adapter in front of
anything) can answer "evaluate this query" over HTTP with JSON. This provider asks
``GET <url>`` with the query in the URL (a ``{query}`` placeholder, URL-encoded, or a
``query`` parameter when there is none) and reads the number at a dotted path of the answer
(``data.value``); for a per-label answer it reads a list of ``{"labels": {...}, "value": n}``
at another path. What it cannot read is a ProviderError, never "no data".
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from canaryflow.metrics_watcher.providers.base import ProviderError

DEFAULT_TIMEOUT_SECONDS = 2.0
ONLINE_QUERY = "1"


def _at(body: Any, path: str) -> Any:
    node = body
    for part in path.split(".") if path else []:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(path)
    return node


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError) as error:
        raise ProviderError(f"not a number: {value!r}") from error
    return None if math.isnan(number) or math.isinf(number) else number


def read_value(query: str, body: Any, path: str) -> float | None:
    try:
        return _number(_at(body, path))
    except KeyError as error:
        raise ProviderError(f"answer to {query!r} has nothing at {path!r}") from error


def read_series(query: str, body: Any, path: str, label: str) -> dict[str, float]:
    try:
        series = _at(body, path)
    except KeyError as error:
        raise ProviderError(f"answer to {query!r} has nothing at {path!r}") from error
    if not isinstance(series, list):
        raise ProviderError(f"answer to {query!r}: {path!r} is not a list")
    values: dict[str, float] = {}
    for item in series:
        labels = item.get("labels") if isinstance(item, dict) else None
        if not isinstance(labels, dict) or label not in labels:
            continue
        value = _number(item.get("value"))
        if value is not None:
            values[str(labels[label])] = value
    return values


class HttpJsonProvider:
    def __init__(
        self,
        url: str,
        *,
        value_path: str = "value",
        series_path: str = "series",
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url
        self.value_path = value_path
        self.series_path = series_path
        self._client = httpx.AsyncClient(timeout=timeout_seconds, transport=transport)

    @property
    def name(self) -> str:
        return "http-json"

    async def _get(self, query: str, extra: dict[str, str] | None = None) -> Any:
        if "{query}" in self.url:
            url = self.url.replace("{query}", quote(query, safe=""))
            if extra:  # httpx's params would replace the query string the URL already has
                url += ("&" if "?" in url else "?") + urlencode(extra)
            params = None
        else:
            url, params = self.url, {"query": query, **(extra or {})}
        try:
            response = await self._client.get(url, params=params)
        except httpx.HTTPError as error:
            raise ProviderError(
                f"http-json source {self.url} unreachable: {type(error).__name__}: {error}"
            ) from error
        if response.status_code != 200:
            raise ProviderError(f"http-json source refused {query!r}: HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError as error:
            raise ProviderError(f"http-json source answered {query!r} without JSON") from error

    async def query(self, query: str) -> float | None:
        return read_value(query, await self._get(query), self.value_path)

    async def query_vector(self, query: str, label: str) -> dict[str, float]:
        body = await self._get(query, {"by": label})
        return read_series(query, body, self.series_path, label)

    async def is_online(self) -> bool:
        try:
            await self.query(ONLINE_QUERY)
        except ProviderError:
            return False
        return True

    async def collection_gap(self, window_seconds: float) -> float | None:
        """Unknown: an HTTP JSON source says nothing about how it collects."""
        return None

    async def aclose(self) -> None:
        await self._client.aclose()
