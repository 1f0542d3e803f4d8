"""One pod's shop over real HTTP on loopback: the funnel, the version header, its metrics."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from canaryflow.dataplane.shop import PodIdentity, Shop
from canaryflow.runtime.behaviour import Behaviour

FAST = {"median_s": 0.001, "p99_s": 0.002}


async def _no_wait(seconds: float) -> None:
    return None


async def _serve(shop: Shop) -> AsyncIterator[str]:
    runner = web.AppRunner(shop.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _shop(behaviour: Behaviour) -> Shop:
    pod = PodIdentity("shop", "web-abc", "uid-1", "v2")
    return Shop(pod, lambda: behaviour, random.Random(7), sleep=_no_wait)


@pytest.fixture
async def converting() -> AsyncIterator[tuple[Shop, str]]:
    shop = _shop(Behaviour(error_rate=0.0, conversion_rate=1.0, **FAST))
    async for url in _serve(shop):
        yield shop, url


async def test_a_convinced_visit_fills_a_cart_and_buys_it(converting: tuple[Shop, str]) -> None:
    shop, url = converting
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(url + "/") as landing:
            page = await landing.json()
            assert landing.headers["X-Version"] == "v2"
            assert landing.headers["X-Pod"] == "web-abc"
        async with http.post(url + "/cart", json={"product": page["buy"]}) as added:
            assert (await added.json())["cart"] == [page["buy"]]
        async with http.post(url + "/purchase") as paid:
            assert (await paid.json())["bought"] == [page["buy"]]
        async with http.post(url + "/purchase") as again:
            assert again.status == 400  # the cart was emptied by the purchase

    text = shop.metrics.exposition().decode()
    assert 'shop_visits_total{version="v2"} 1.0' in text
    assert 'shop_purchases_total{version="v2"} 1.0' in text
    refused = 'http_requests_total{code="400",handler="purchase",method="POST",version="v2"} 1.0'
    assert refused in text


async def test_every_request_of_a_failing_version_is_a_counted_500() -> None:
    shop = _shop(Behaviour(error_rate=1.0, **FAST))
    async for url in _serve(shop):
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                async with http.get(url + "/") as response:
                    assert response.status == 500
                    assert response.headers["X-Version"] == "v2"
    text = shop.metrics.exposition().decode()
    assert 'http_requests_total{code="500",handler="home",method="GET",version="v2"} 3.0' in text
    assert 'shop_visits_total{version="v2"} 0.0' in text


def test_latency_follows_the_configured_median_and_tail() -> None:
    shop = _shop(Behaviour(median_s=0.1, p99_s=0.3, tail_probability=0.5, tail_multiplier=10.0))
    draws = sorted(shop.latency(shop._behaviour()) for _ in range(4000))
    # Stretched draws have a median of 1 s: 86 % of them exceed 0.6 s, plain ones ~never.
    share_slow = sum(d > 0.6 for d in draws) / len(draws)
    assert 0.38 < share_slow < 0.48
    assert 0.05 < draws[len(draws) // 4] < 0.15  # the fast half stays near the median
