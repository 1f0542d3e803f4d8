"""Prometheus over its HTTP API, the first metrics backend.

Timeouts are short because a tick must not outlive its interval: a slow Prometheus is
treated like an unreachable one (insufficient data, so the release pauses), never waited on.
A query must reduce to a single number; a vector of several series is refused rather than
silently picking one, since that would judge the wrong version.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import httpx

from canaryflow.metrics_watcher.providers.base import ANSWER_SECONDS, ProviderError

DEFAULT_TIMEOUT_SECONDS = 2.0
# Queries one replica has at Prometheus at once; the rest wait here, where the wait is not
# counted as Prometheus' slowness (Prometheus runs 20 at once by default and queues the rest,
# inside our read timeout). At 200 analyses at once, an unbounded pool timed out queries by
# the hundred (ConnectTimeout, PoolTimeout) and paused good releases (bench/scale.py).
CONCURRENT_QUERIES = 16
# How long a query may wait for its turn here before the tick counts it unanswered.
TURN_WAIT_SECONDS = 10.0
# Answers that do not depend on the release (is Prometheus up, how long it collected
# nothing) are asked once per this many seconds for every analysis of the replica.
SHARED_SECONDS = 1.0
# At each instant of the window (a subquery), how old the freshest scrape of any target was;
# its maximum is the longest time Prometheus collected nothing. Every Prometheus has ``up``.
COLLECTION_GAP_QUERY = "max_over_time((time() - max(timestamp(up)))[{window}s:{step}s])"


class PrometheusProvider:
    def __init__(
        self,
        base_url: str,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout_seconds,
            limits=httpx.Limits(max_connections=CONCURRENT_QUERIES),
            transport=transport,
        )
        self._turns = asyncio.Semaphore(CONCURRENT_QUERIES)
        self._shared: dict[str, tuple[float, asyncio.Future[float | None]]] = {}

    @property
    def name(self) -> str:
        return "prometheus"

    async def query(self, query: str) -> float | None:
        response = await self._ask(query)
        return parse_instant_result(query, response.status_code, _json(response))

    async def query_vector(self, query: str, label: str) -> dict[str, float]:
        response = await self._ask(query)
        return parse_vector_result(query, label, response.status_code, _json(response))

    async def _ask(self, query: str) -> httpx.Response:
        """The instant query's response, once it is this query's turn (``CONCURRENT_QUERIES``);
        the time Prometheus took goes to ``ANSWER_SECONDS``, the wait for the turn does not."""
        try:
            await asyncio.wait_for(self._turns.acquire(), TURN_WAIT_SECONDS)
        except TimeoutError as error:
            raise ProviderError(
                f"no turn at prometheus within {TURN_WAIT_SECONDS:g}s: this replica has "
                f"{CONCURRENT_QUERIES} queries there and more waiting"
            ) from error
        started = time.monotonic()
        try:
            return await self._client.get("/api/v1/query", params={"query": query})
        except httpx.HTTPError as error:
            raise ProviderError(
                f"prometheus at {self.base_url} unreachable: {type(error).__name__}: {error}"
            ) from error
        finally:
            self._turns.release()
            answered = ANSWER_SECONDS.get()
            if answered is not None:
                answered.append(time.monotonic() - started)

    async def is_online(self) -> bool:
        try:
            return await self._shared_query("vector(1)") == 1.0
        except ProviderError:
            return False

    async def collection_gap(self, window_seconds: float) -> float | None:
        window = max(1, math.ceil(window_seconds))
        step = max(1, math.ceil(window / 300))  # at most 300 points, whatever the window
        return await self._shared_query(COLLECTION_GAP_QUERY.format(window=window, step=step))

    async def _shared_query(self, query: str) -> float | None:
        """``query``'s answer, asked at most once per ``SHARED_SECONDS`` by this replica: the
        analyses asking within it share the one answer (or the one error)."""
        now = self._clock()
        asked = self._shared.get(query)
        if asked is None or now - asked[0] >= SHARED_SECONDS:
            asked = (now, asyncio.ensure_future(self.query(query)))
            self._shared[query] = asked
        # Shielded: one waiter cancelled (its analysis ended) must not cancel the others'.
        return await asyncio.shield(asked[1])

    async def aclose(self) -> None:
        await self._client.aclose()


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _data(query: str, status_code: int, body: Any) -> Any:
    if not isinstance(body, dict) or body.get("status") != "success":
        detail = (
            f"{body.get('errorType')}: {body.get('error')}"
            if isinstance(body, dict)
            else "no JSON body"
        )
        raise ProviderError(f"prometheus refused {query!r} (HTTP {status_code}): {detail}")
    return body.get("data") or {}


def parse_vector_result(query: str, label: str, status_code: int, body: Any) -> dict[str, float]:
    """One number per value of ``label``; series without the label or with NaN are skipped."""
    data = _data(query, status_code, body)
    if data.get("resultType") != "vector":
        raise ProviderError(
            f"{query!r} returned a {data.get('resultType')} result; expected a vector"
        )
    values: dict[str, float] = {}
    for sample in data.get("result") or []:
        key = (sample.get("metric") or {}).get(label)
        if key is None:
            continue
        value = float(sample["value"][1])
        if not math.isnan(value):
            values[str(key)] = value
    return values


def parse_instant_result(query: str, status_code: int, body: Any) -> float | None:
    """One number from an instant-query answer; None for no data; ProviderError otherwise."""
    data = _data(query, status_code, body)
    kind = data.get("resultType")
    result: Any = data.get("result")
    if kind == "scalar":
        raw = result[1]
    elif kind == "vector":
        if not result:
            return None
        if len(result) > 1:
            labels = [sample.get("metric", {}) for sample in result[:3]]
            raise ProviderError(
                f"{query!r} returned {len(result)} series (e.g. {labels}); "
                "a metric query must reduce to one value"
            )
        raw = result[0]["value"][1]
    else:
        raise ProviderError(f"{query!r} returned a {kind} result; expected a vector or scalar")
    value = float(raw)
    # NaN is 0/0 (no requests in the window) and +Inf a quantile with no buckets: no data.
    return None if math.isnan(value) or math.isinf(value) else value
