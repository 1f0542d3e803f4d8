"""One pod's application: a small shop that behaves as its version is configured.

Why a shop: a canary is judged on errors and latency, but the product question is often
"does the new version sell more?", and that needs a funnel a user walks through. Each
landing page is a visit; a version's conversion rate is the chance that the visit is
convinced (the page says so, the user then fills a cart and pays); errors and latency are
drawn per request from the version's behaviour, and the latency is real (the handler waits).

The cart lives in a cookie, not in the pod: any pod of a version can serve the next step, as
with a stateless app behind a Service. Every response says which version and pod served it
(``X-Version``, ``X-Pod``), as many real apps do, so users can tell what they saw.

What a pod exports on ``/metrics`` is what an instrumented app exports: requests by
handler, method and code, a latency histogram, and business counters, each with the app's own
``version``. Namespace, pod, service and track are added by Prometheus from the pod's
metadata (``deploy/prometheus/kubernetes-jobs.yml.in``), as in a real cluster.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from canaryflow.runtime.behaviour import Behaviour

LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
)  # fmt: skip
PRODUCTS = ("socks", "mug", "poster", "cap", "tote")
CART_COOKIE = "cart"
VERSION_HEADER = "X-Version"
POD_HEADER = "X-Pod"
HANDLERS = ("home", "product", "cart", "purchase")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class PodIdentity:
    """What a pod knows about itself (its downward API, as it were)."""

    namespace: str
    name: str
    uid: str
    version: str


class ShopMetrics:
    """The app's own series; created at 0 so a first error is a rate, not a new series."""

    def __init__(self, version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.version = version
        self.requests = Counter(
            "http_requests_total",
            "Requests served, by handler, method and status code.",
            ("version", "handler", "method", "code"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "http_request_duration_seconds",
            "Time to serve a request, including the version's configured latency.",
            ("version", "handler"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.visits = Counter(
            "shop_visits", "Landing pages served (visits).", ("version",), registry=self.registry
        )
        self.cart_adds = Counter(
            "shop_cart_adds", "Products put in a cart.", ("version",), registry=self.registry
        )
        self.purchases = Counter(
            "shop_purchases", "Carts paid for.", ("version",), registry=self.registry
        )
        for handler, method in (
            ("home", "GET"),
            ("product", "GET"),
            ("cart", "POST"),
            ("purchase", "POST"),
        ):
            for code in ("200", "500"):
                self.requests.labels(version, handler, method, code)
            self.duration.labels(version, handler)
        for counter in (self.visits, self.cart_adds, self.purchases):
            counter.labels(version)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class Shop:
    """The handlers of one pod. ``behaviour`` is read per request: a ConfigMap change applies
    to the next request without restarting the pod."""

    def __init__(
        self,
        pod: PodIdentity,
        behaviour: Callable[[], Behaviour],
        rng: random.Random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.pod = pod
        self._behaviour = behaviour
        self._rng = rng
        self._sleep = sleep
        self.metrics = ShopMetrics(pod.version)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._timed("home", self._home))
        app.router.add_get("/products/{product}", self._timed("product", self._product))
        app.router.add_post("/cart", self._timed("cart", self._cart))
        app.router.add_post("/purchase", self._timed("purchase", self._purchase))
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        return app

    def _timed(self, handler: str, inner: Handler) -> Handler:
        async def run(request: web.Request) -> web.StreamResponse:
            start = time.monotonic()
            behaviour = self._behaviour()
            await self._sleep(self.latency(behaviour))
            if self._rng.random() < behaviour.error_rate:
                response: web.StreamResponse = web.json_response(
                    {"error": "injected failure", "version": self.pod.version}, status=500
                )
            else:
                response = await inner(request)
            response.headers[VERSION_HEADER] = self.pod.version
            response.headers[POD_HEADER] = self.pod.name
            self.metrics.requests.labels(
                self.pod.version, handler, request.method, str(response.status)
            ).inc()
            self.metrics.duration.labels(self.pod.version, handler).observe(
                time.monotonic() - start
            )
            return response

        return run

    def latency(self, behaviour: Behaviour) -> float:
        """A log-normal draw (median and p99 as configured), sometimes stretched by the tail."""
        latency = self._rng.lognormvariate(behaviour.mu, behaviour.sigma)
        if behaviour.tail_probability > 0.0 and self._rng.random() < behaviour.tail_probability:
            latency *= behaviour.tail_multiplier
        return latency

    async def _home(self, request: web.Request) -> web.StreamResponse:
        self.metrics.visits.labels(self.pod.version).inc()
        convinced = self._rng.random() < self._behaviour().conversion_rate
        return web.json_response(
            {
                "version": self.pod.version,
                "pod": self.pod.name,
                "products": list(PRODUCTS),
                # What the version's page makes of this visitor: its conversion rate at work.
                "buy": self._rng.choice(PRODUCTS) if convinced else None,
            }
        )

    async def _product(self, request: web.Request) -> web.StreamResponse:
        product = request.match_info["product"]
        if product not in PRODUCTS:
            return web.json_response({"error": f"no product {product!r}"}, status=404)
        return web.json_response({"product": product, "version": self.pod.version})

    async def _cart(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        product = body.get("product") if isinstance(body, dict) else None
        if product not in PRODUCTS:
            return web.json_response({"error": "expected {'product': <a product>}"}, status=400)
        cart = [p for p in request.cookies.get(CART_COOKIE, "").split(".") if p] + [product]
        self.metrics.cart_adds.labels(self.pod.version).inc()
        response = web.json_response({"cart": cart})
        response.set_cookie(CART_COOKIE, ".".join(cart), path="/", httponly=True)
        return response

    async def _purchase(self, request: web.Request) -> web.StreamResponse:
        cart = [p for p in request.cookies.get(CART_COOKIE, "").split(".") if p in PRODUCTS]
        if not cart:
            return web.json_response({"error": "the cart is empty"}, status=400)
        self.metrics.purchases.labels(self.pod.version).inc()
        response = web.json_response({"bought": cart, "version": self.pod.version})
        response.del_cookie(CART_COOKIE, path="/")
        return response

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok\n")
