"""Users: real HTTP clients that arrive, browse, buy and leave, each with its own cookies.

Why real clients: stickiness is a property of cookies and connections, and a split is a
property of the gateway's balancing; neither can be checked by drawing random numbers. Each
user here is an aiohttp session with its own cookie jar (the gateway's sticky cookie and the
shop's cart live there) and its own connections. Users arrive as a Poisson process at a
configurable rate (independent people do), walk the shop's funnel (landing page, some
products, and a cart and a purchase when the page convinced them) with think times between
clicks, and leave.

What it reports is what users saw: the version of every response (``X-Version``), which
version each session started on, and every session that saw two versions. Counted in
``Tally`` (for tests and the demo) and exported as Prometheus series when run as a process.
With ``record`` every response is also kept with its send time and session (``Response``),
so a test can tell what users got before and after a moment, such as a failing verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter

from canaryflow.dataplane.shop import VERSION_HEADER
from canaryflow.runtime import observability

log = logging.getLogger("canaryflow.dataplane.users")
NO_VERSION = "none"
"""The version of a response no pod served (the gateway's own 404/502/503)."""


@dataclass(frozen=True)
class Behaviour:
    """How users behave: arrivals per second, pages per visit, think time between clicks."""

    arrivals_per_s: float = 5.0
    pages: int = 2
    think_s: float = 0.2
    timeout_s: float = 10.0


@dataclass(frozen=True)
class Response:
    """One request as its user saw it."""

    sent: float
    """Wall-clock time it was sent (comparable with events' times)."""
    session: int
    version: str
    status: int
    """0: a connection error or a timeout."""


@dataclass
class Tally:
    """Everything users saw, counted as it happens."""

    sessions: Counter[str] = field(default_factory=Counter)
    """Sessions by the version of their first answered request."""
    requests: Counter[tuple[str, int]] = field(default_factory=Counter)
    """Requests by (version, status); status 0 is a connection error or a timeout."""
    purchases: Counter[str] = field(default_factory=Counter)
    mixed: int = 0
    """Sessions that saw two versions or more."""
    failed_sessions: int = 0
    """Sessions that got no answer from any pod at all."""
    unrouted: int = 0
    """Users who found no endpoint to go to (a Service with no Ready pod)."""

    @property
    def total_sessions(self) -> int:
        return sum(self.sessions.values())

    def share(self, version: str) -> float:
        total = self.total_sessions
        return self.sessions[version] / total if total else 0.0

    def errors(self) -> int:
        """Requests that did not get a 2xx or 4xx answer from a pod."""
        return sum(n for (v, code), n in self.requests.items() if code == 0 or code >= 500)


class Metrics:
    """The load generator's own series, when it runs as a process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.sessions = PromCounter(
            "users_sessions", "Sessions by the version they started on.", ("version",),
            registry=registry,
        )  # fmt: skip
        self.requests = PromCounter(
            "users_requests", "Requests by the version that answered and status.",
            ("version", "code"), registry=registry,
        )  # fmt: skip
        self.purchases = PromCounter(
            "users_purchases", "Purchases by version.", ("version",), registry=registry
        )
        self.mixed = PromCounter(
            "users_mixed_sessions", "Sessions that saw two versions or more.", registry=registry
        )


Endpoint = Callable[[], str | None]
"""Where a new user goes: a base URL, or None when there is nowhere to go."""


class Users:
    """Sends users to ``url`` (with a ``Host`` header for the gateway's routing rule).

    ``url`` may also be a function called once per user, as a Service's kube-proxy picks one
    Ready endpoint per connection: each user then stays on the pod it got for its visit.
    """

    def __init__(
        self,
        url: str | Endpoint,
        host: str | None,
        behaviour: Behaviour,
        rng: random.Random,
        metrics: Metrics | None = None,
        *,
        record: bool = False,
    ) -> None:
        self._endpoint = url if callable(url) else None
        self.url = "" if callable(url) else url.rstrip("/")
        self.host = host
        self.behaviour = behaviour
        self.rng = rng
        self.metrics = metrics
        self.tally = Tally()
        self.active = 0
        self.record = record
        self.responses: list[Response] = []
        """Every response, with ``record``."""
        self._sessions = 0

    async def run(
        self,
        sessions: int | None = None,
        seconds: float | None = None,
        stop: asyncio.Event | None = None,
    ) -> Tally:
        """Let users arrive until ``sessions`` have arrived, ``seconds`` have passed or
        ``stop`` is set; wait for all of them to leave."""
        if sessions is None and seconds is None and stop is None:
            raise ValueError("give sessions, seconds or stop")
        started = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        arrived = 0
        while (
            (sessions is None or arrived < sessions)
            and (seconds is None or time.monotonic() - started < seconds)
            and (stop is None or not stop.is_set())
        ):
            task = asyncio.create_task(self.session())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            arrived += 1
            await asyncio.sleep(self.rng.expovariate(self.behaviour.arrivals_per_s))
        if tasks:
            await asyncio.gather(*tasks)
        return self.tally

    async def session(self) -> None:
        """One user: landing page, some products, and a cart and a purchase if convinced."""
        base = self.url
        if self._endpoint is not None:
            picked = self._endpoint()
            if picked is None:
                self.tally.unrouted += 1
                return
            base = picked.rstrip("/")
        self.active += 1
        self._sessions += 1
        session = self._sessions
        seen: list[str] = []
        headers = {"Host": self.host} if self.host else {}
        timeout = aiohttp.ClientTimeout(total=self.behaviour.timeout_s)
        jar = aiohttp.CookieJar(unsafe=True)  # the gateway is an IP address: keep its cookies
        try:
            async with aiohttp.ClientSession(
                cookie_jar=jar, headers=headers, timeout=timeout, trust_env=False
            ) as http:
                page = await self._request(http, "GET", base + "/", seen, session)
                buy = page.get("buy") if isinstance(page, dict) else None
                for _ in range(self.behaviour.pages):
                    await self._think()
                    product = self.rng.choice(("socks", "mug", "poster", "cap", "tote"))
                    await self._request(http, "GET", f"{base}/products/{product}", seen, session)
                if isinstance(buy, str):
                    await self._think()
                    added = await self._request(
                        http, "POST", base + "/cart", seen, session, body={"product": buy}
                    )
                    if isinstance(added, dict) and "cart" in added:
                        await self._think()
                        paid = await self._request(http, "POST", base + "/purchase", seen, session)
                        if isinstance(paid, dict) and "bought" in paid:
                            version = str(paid.get("version", NO_VERSION))
                            self.tally.purchases[version] += 1
                            if self.metrics:
                                self.metrics.purchases.labels(version).inc()
        finally:
            self.active -= 1
            self._close(seen)

    def _close(self, seen: list[str]) -> None:
        versions = [v for v in seen if v != NO_VERSION]
        if not versions:
            self.tally.failed_sessions += 1
            return
        self.tally.sessions[versions[0]] += 1
        if self.metrics:
            self.metrics.sessions.labels(versions[0]).inc()
        if len(set(versions)) > 1:
            self.tally.mixed += 1
            if self.metrics:
                self.metrics.mixed.inc()

    async def _think(self) -> None:
        if self.behaviour.think_s > 0:
            await asyncio.sleep(self.rng.expovariate(1.0 / self.behaviour.think_s))

    async def _request(
        self,
        http: aiohttp.ClientSession,
        method: str,
        url: str,
        seen: list[str],
        session: int,
        *,
        body: object = None,
    ) -> object:
        version, status, payload = NO_VERSION, 0, None
        sent = time.time()
        try:
            async with http.request(method, url, json=body) as response:
                status = response.status
                version = response.headers.get(VERSION_HEADER, NO_VERSION)
                if response.content_type == "application/json":
                    payload = await response.json()
                else:
                    await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("%s %s failed: %r", method, url, exc)
        seen.append(version)
        if self.record:
            self.responses.append(Response(sent, session, version, status))
        self.tally.requests[(version, status)] += 1
        if self.metrics:
            self.metrics.requests.labels(version, str(status)).inc()
        return payload


async def _main(args: argparse.Namespace) -> int:
    registry = CollectorRegistry()
    host, _, port = args.listen.rpartition(":")
    metrics = observability.http_application(registry=registry)
    server = await observability.start_http(metrics, host, int(port))
    users = Users(
        args.url,
        args.host,
        Behaviour(args.rate, args.pages, args.think),
        random.Random(args.seed),
        Metrics(registry),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    run = asyncio.create_task(users.run(seconds=args.seconds or float("inf")))
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({run, waiter}, return_when=asyncio.FIRST_COMPLETED)
    run.cancel()
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await run
    await server.cleanup()
    t = users.tally
    print(
        f"sessions {dict(t.sessions)} mixed {t.mixed} failed {t.failed_sessions} "
        f"purchases {dict(t.purchases)} errors {t.errors()}",
        flush=True,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m canaryflow.dataplane.users",
        description="Users browsing a shop through the gateway (run inside the stack's "
        "namespace: `python -m canaryflow_stack exec -- ...`).",
    )
    parser.add_argument("--url", default="http://127.0.0.1:18000", help="the gateway")
    parser.add_argument("--host", help="Host header the gateway routes by")
    parser.add_argument("--rate", type=float, default=5.0, help="users arriving per second")
    parser.add_argument("--pages", type=int, default=2, help="product pages per visit")
    parser.add_argument("--think", type=float, default=0.2, help="mean seconds between clicks")
    parser.add_argument("--seconds", type=float, help="stop after this long (default: never)")
    parser.add_argument("--listen", default="127.0.0.1:19466", help="HOST:PORT of /metrics")
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.pages < 0 or args.think < 0:
        parser.error("--rate must be > 0, --pages and --think >= 0")
    logging.basicConfig(level=logging.INFO)
    return asyncio.run(_main(args))


if __name__ == "__main__":
    raise SystemExit(main())
