"""Reading Prometheus answers: one number, no data, or a provider error; never a guess."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from aiohttp import web

from canaryflow.metrics_watcher.providers import PrometheusProvider, ProviderError, prometheus
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


async def test_answers_that_do_not_depend_on_the_release_are_asked_once_for_every_analysis() -> (
    None
):
    asked: list[str] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params["query"])
        await asyncio.sleep(0.05)  # still in flight while the others ask
        return httpx.Response(200, json=vector("1"))

    clock = [1000.0]
    provider = PrometheusProvider(
        "http://prom:9090", transport=httpx.MockTransport(answer), clock=lambda: clock[0]
    )

    online = await asyncio.gather(*(provider.is_online() for _ in range(50)))
    gaps = await asyncio.gather(*(provider.collection_gap(30) for _ in range(50)))
    assert all(online) and gaps == [1.0] * 50
    assert len(asked) == 2, asked  # one of each for a hundred callers
    clock[0] += prometheus.SHARED_SECONDS
    assert await provider.is_online()
    assert len(asked) == 3  # a second later: asked again
    await provider.query("up")
    await provider.query("up")
    assert len(asked) == 5  # the releases' own queries are never shared
    await provider.aclose()


async def test_a_query_waiting_for_its_turn_is_not_counted_as_a_slow_prometheus() -> None:
    in_flight = 0
    most = 0

    async def slow_prometheus(request: web.Request) -> web.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.3)
        in_flight -= 1
        return web.json_response(vector("2"))

    app = web.Application()
    app.router.add_get("/api/v1/query", slow_prometheus)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    # Each query takes 0.3 s of a 1 s timeout; 64 at once take four turns, 1.2 s in all.
    provider = PrometheusProvider(f"http://127.0.0.1:{port}", timeout_seconds=1.0)
    try:
        answers = await asyncio.gather(*(provider.query(f"q{i}") for i in range(64)))
    finally:
        await provider.aclose()
        await runner.cleanup()

    assert answers == [2.0] * 64
    assert most == prometheus.CONCURRENT_QUERIES
