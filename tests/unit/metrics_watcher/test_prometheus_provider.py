"""Reading Prometheus answers: one number, no data, or a provider error; never a guess."""

from __future__ import annotations

import httpx
import pytest

from canaryflow.metrics_watcher.providers import PrometheusProvider, ProviderError
from canaryflow.metrics_watcher.providers.prometheus import parse_instant_result


def vector(*values: str) -> dict[str, object]:
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": {"i": str(i)}, "value": [0, v]} for i, v in enumerate(values)],
        },
    }


def test_one_sample_is_its_value() -> None:
    assert parse_instant_result("q", 200, vector("0.25")) == 0.25


@pytest.mark.parametrize("body", [vector(), vector("NaN"), vector("+Inf")])
def test_empty_nan_and_infinite_results_are_no_data(body: dict[str, object]) -> None:
    assert parse_instant_result("q", 200, body) is None


def test_scalar_results_are_read() -> None:
    body = {"status": "success", "data": {"resultType": "scalar", "result": [0, "1"]}}
    assert parse_instant_result("q", 200, body) == 1.0


def test_several_series_are_refused_rather_than_picked() -> None:
    with pytest.raises(ProviderError, match="2 series"):
        parse_instant_result("q", 200, vector("1", "2"))


def test_a_refused_query_is_a_provider_error() -> None:
    body = {"status": "error", "errorType": "bad_data", "error": "parse error"}
    with pytest.raises(ProviderError, match="bad_data: parse error"):
        parse_instant_result("q", 400, body)
    with pytest.raises(ProviderError, match="no JSON body"):
        parse_instant_result("q", 502, None)


async def test_queries_go_to_the_instant_query_api() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, json=vector("1" if request.url.params["query"] == "vector(1)" else "3")
        )

    provider = PrometheusProvider("http://prom:9090/", transport=httpx.MockTransport(answer))
    assert await provider.is_online()
    assert await provider.query('sum(x{a="b"})') == 3
    assert seen[-1].url.path == "/api/v1/query"
    assert seen[-1].url.params["query"] == 'sum(x{a="b"})'
    await provider.aclose()


async def test_an_unreachable_prometheus_is_offline_and_queries_raise() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    provider = PrometheusProvider("http://prom:9090", transport=httpx.MockTransport(refuse))
    assert not await provider.is_online()
    with pytest.raises(ProviderError, match="unreachable"):
        await provider.query("up")
    await provider.aclose()
