"""The generic HTTP/JSON provider and the Prometheus vector answer, against fake servers."""

from __future__ import annotations

import httpx
import pytest

from canaryflow.metrics_watcher.providers import ProviderError, ProviderPool
from canaryflow.metrics_watcher.providers.http_json import HttpJsonProvider
from canaryflow.metrics_watcher.providers.prometheus import PrometheusProvider, parse_vector_result
from canaryflow_contracts.policy import ProviderRef


def answering(
    body: object, status: int = 200, seen: list[httpx.Request] | None = None
) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handler)


async def test_a_value_is_read_at_its_path_and_the_query_goes_in_the_url() -> None:
    seen: list[httpx.Request] = []
    provider = HttpJsonProvider(
        "http://metrics.local/q?expr={query}",
        value_path="data.result",
        series_path="data.series",
        transport=answering({"data": {"result": "0.25", "series": []}}, seen=seen),
    )
    assert await provider.query('errors{service="web"}') == 0.25
    assert "errors%7Bservice%3D%22web%22%7D" in str(seen[0].url)
    assert await provider.is_online()
    await provider.query_vector("b", "le")
    assert str(seen[-1].url) == "http://metrics.local/q?expr=b&by=le"


async def test_series_are_read_by_label() -> None:
    body = {
        "series": [{"labels": {"le": "0.1"}, "value": 5}, {"labels": {"le": "+Inf"}, "value": 9}]
    }
    provider = HttpJsonProvider("http://metrics.local/query", transport=answering(body))
    assert await provider.query_vector("buckets", "le") == {"0.1": 5.0, "+Inf": 9.0}


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"other": 1}, 200, "nothing at"),
        ({"value": "x"}, 200, "not a number"),
        ({}, 500, "HTTP 500"),
    ],
)
async def test_what_cannot_be_read_is_a_provider_error(
    body: object, status: int, words: str
) -> None:
    provider = HttpJsonProvider("http://metrics.local/query", transport=answering(body, status))
    with pytest.raises(ProviderError, match=words):
        await provider.query("q")
    assert not await provider.is_online()


def test_prometheus_vectors_map_a_label_to_values() -> None:
    body = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {"metric": {"le": "0.1"}, "value": [1, "3"]},
                {"metric": {"le": "+Inf"}, "value": [1, "7"]},
                {"metric": {}, "value": [1, "1"]},
            ],
        },
    }
    assert parse_vector_result("q", "le", 200, body) == {"0.1": 3.0, "+Inf": 7.0}


def test_a_policy_can_name_its_own_backend_and_it_is_made_once() -> None:
    default = PrometheusProvider("http://127.0.0.1:9")
    pool = ProviderPool(default)
    assert pool.get(None) is default
    ref = ProviderRef(type="http-json", address="http://metrics.local/q")
    assert isinstance(pool.get(ref), HttpJsonProvider) and pool.get(ref) is pool.get(ref)
