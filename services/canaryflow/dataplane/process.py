"""What the data plane's stack processes share: their command line, their own HTTP port, and a
refresh loop that outlives an API server restarted under it.

The pods' server and the users' server both list something every ``--refresh`` seconds and
keep what they have when a list fails (the stack restarts the API server under them); a
failure is logged once, and its recovery once, not every refresh. Between lists the loop can
also handle events as they come (the pods' server binds a pod a watch shows Ready at once);
the list stays the truth, so a lost event costs only the wait for the next one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from canaryflow.runtime import observability


def own_app(synced: Callable[[], bool], registry: CollectorRegistry, what: str) -> web.Application:
    """The process's own port: /healthz (after the first good list of ``what``), /metrics."""

    async def healthz(request: web.Request) -> web.Response:
        if synced():
            return web.Response(text="ok\n")
        return web.Response(status=503, text=f"waiting for the first list of {what}\n")

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


def non_negative(raw: str) -> float:
    """An argparse type: a number of seconds, 0 or more."""
    value = float(raw)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {raw}")
    return value


def parse(
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    listen: str,
    extra: Callable[[argparse.ArgumentParser], object] = lambda parser: None,
) -> argparse.Namespace:
    """The common command line, plus what ``extra`` adds to the parser."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG)")
    parser.add_argument("--listen", default=listen, help="HOST:PORT of /healthz and /metrics")
    parser.add_argument("--refresh", type=float, default=0.5, help="seconds between lists")
    parser.add_argument("--seed", type=int, help="seed of the random draws")
    extra(parser)
    args = parser.parse_args(argv)
    if args.refresh <= 0:
        parser.error("--refresh must be > 0")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return args


async def serve(
    own: web.Application,
    args: argparse.Namespace,
    *,
    refresh: Callable[[], Awaitable[None]],
    close: Callable[[], Awaitable[None]],
    what: str,
    log: logging.Logger,
    on_failure: Callable[[], None] = lambda: None,
    events: asyncio.Queue[Any] | None = None,
    on_event: Callable[[Any], Awaitable[None]] | None = None,
) -> int:
    """Serve ``own`` on ``--listen`` and ``refresh()`` every ``--refresh`` s until a signal;
    in between, ``on_event`` each item of ``events`` as it comes."""
    if (events is None) != (on_event is None):
        raise ValueError("give both events and on_event, or neither")
    host, _, port = args.listen.rpartition(":")
    runner = await observability.start_http(own, host, int(port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("listening on %s (pid %d)", args.listen, os.getpid())
    failing = False
    try:
        while not stop.is_set():
            while events is not None and on_event is not None and not events.empty():
                await on_event(events.get_nowait())
            try:
                await refresh()
                if failing:
                    log.info("listing %s works again", what)
                failing = False
            except Exception as exc:
                on_failure()
                if not failing:
                    log.error("listing %s failed; going on with the last, retrying: %r", what, exc)
                failing = True
            deadline = loop.time() + args.refresh
            while not stop.is_set() and (left := deadline - loop.time()) > 0:
                if events is None or on_event is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=left)
                    continue
                try:
                    event = await asyncio.wait_for(events.get(), timeout=left)
                except TimeoutError:
                    continue
                await on_event(event)
    finally:
        await close()
        await runner.cleanup()
    return 0
