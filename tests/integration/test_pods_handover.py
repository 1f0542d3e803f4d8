"""A pod whose address KWOK hands on keeps answering the connections it has, on loopback.

Given the pods server serving a pod at an address, when a new pod gets that address, then
the new pod answers new connections at once, and a keep-alive connection the old pod had
(a gateway's) is still answered by the old pod until the grace ends, not reset: a reset
answered 502 at a promotion (test_traffic). No stack: the listeners are on 127.0.0.x.
"""

from __future__ import annotations

import asyncio
import random
import socket

import aiohttp

from canaryflow.dataplane.pods import Plan, PodServer, ServedPod


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.7", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_a_handed_on_address_serves_out_the_old_pods_connections() -> None:
    port = _free_port()
    old = ServedPod("uid-old", "shop", "web-a", "127.0.0.7", (port,), "v1")
    new = ServedPod("uid-new", "shop", "web-b", "127.0.0.7", (port,), "v2")
    server = PodServer(core=None, rng=random.Random(1), grace_s=1.5)
    url = f"http://127.0.0.7:{port}/"
    kept = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), trust_env=False)
    try:
        await server.apply(Plan(stop=(), start=(old,)))
        async with kept.get(url) as first:
            assert first.headers["X-Version"] == "v1"
            await first.read()

        await server.apply(Plan(stop=("uid-old",), start=(new,)))

        async with kept.get(url) as on_the_kept_connection:  # the pool's one connection
            assert on_the_kept_connection.status == 200
            assert on_the_kept_connection.headers["X-Version"] == "v1"
            await on_the_kept_connection.read()
        async with aiohttp.ClientSession(trust_env=False) as fresh, fresh.get(url) as answer:
            assert answer.headers["X-Version"] == "v2"
        await asyncio.sleep(2.0)  # the grace is over: the old pod's connections are closed
        async with kept.get(url) as after_the_grace:
            assert after_the_grace.headers["X-Version"] == "v2"
    finally:
        await kept.close()
        await server.close()
