"""Wiring: command line, the two loops, and the rule that nothing short of a signal stops them.

The stack starts the simulator before or while the API server comes up and restarts the API
server under it, so every failure here (no kubeconfig yet, connection refused, a timeout)
is logged and retried at the next refresh. Kubernetes calls block, so they run in a worker
thread; the request loop and the HTTP server never wait on the API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import cast

from prometheus_client import CollectorRegistry, disable_created_metrics

from canaryflow.simulator import logs
from canaryflow.simulator.discovery import CoreApi, Discoverer
from canaryflow.simulator.metrics import PrometheusSink
from canaryflow.simulator.server import SimulatorServer, State, parse_listen
from canaryflow.simulator.split import ReadyPodSplit
from canaryflow.simulator.traffic import StickySessions, TrafficGenerator

TICK_S = 0.1
# While discovery keeps failing the same way, repeat the error line this often, not every refresh.
_ERROR_REPEAT_S = 30.0

log = logs.Log()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m canaryflow.simulator",
        description="Simulated users for Services whose pods are fake: per-version metrics.",
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG)")
    parser.add_argument("--listen", default="127.0.0.1:19464", help="HOST:PORT to serve on")
    parser.add_argument(
        "--default-rps", type=float, default=20.0, help="requests/s for a Service without"
        " the canaryflow.io/simulate-rps annotation"
    )  # fmt: skip
    parser.add_argument("--refresh", type=float, default=1.0, help="seconds between discoveries")
    parser.add_argument("--seed", type=int, help="seed the random generator (reproducible runs)")
    parser.add_argument(
        "--sticky-users",
        type=int,
        default=0,
        help="enable sticky sessions with a pool of this many users (0: off)",
    )
    parser.add_argument(
        "--session-seconds",
        type=float,
        default=30.0,
        help="mean session length for sticky sessions",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    args = parser.parse_args(argv)
    if args.refresh <= 0 or args.default_rps < 0 or args.session_seconds <= 0:
        parser.error("--refresh and --session-seconds must be > 0, --default-rps >= 0")
    if args.sticky_users < 0:
        parser.error("--sticky-users must be >= 0")
    try:
        parse_listen(args.listen)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def make_api(kubeconfig: str | None) -> CoreApi:
    """A CoreV1Api for the kubeconfig given, or in-cluster config, or ~/.kube/config."""
    from kubernetes import client

    from canaryflow.runtime.kube import api_client

    return cast(CoreApi, client.CoreV1Api(api_client(kubeconfig)))


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(seconds, 0.0))


def describe_error(exc: BaseException) -> str:
    """The error without object addresses, so a repeated failure reads the same each time."""
    return re.sub(r" at 0x[0-9a-f]+", "", repr(exc))


async def discovery_loop(
    make_api: Callable[[], CoreApi],
    discoverer: Discoverer,
    state: State,
    sink: PrometheusSink,
    *,
    refresh_s: float,
    stop: asyncio.Event,
) -> None:
    api: CoreApi | None = None
    failing_since: float | None = None
    last_error: tuple[str, float] | None = None
    while not stop.is_set():
        started = time.monotonic()
        try:
            if api is None:
                api = await asyncio.to_thread(make_api)
            targets = await asyncio.to_thread(discoverer.discover, api)
        except Exception as exc:
            # Build a fresh client next time: the kubeconfig may have been rewritten with new
            # credentials or a new port by a restarted stack.
            api = None
            sink.discovery_errors.inc()
            failing_since = failing_since or started
            error = describe_error(exc)
            if (
                last_error is None
                or last_error[0] != error
                or started - last_error[1] > _ERROR_REPEAT_S
            ):
                log.error(
                    "discovery failed; retrying",
                    error=error,
                    failing_for_s=round(started - failing_since, 1),
                    refresh_s=refresh_s,
                )
                last_error = (error, started)
        else:
            if failing_since is not None:
                log.info("discovery recovered", failed_for_s=round(started - failing_since, 1))
            elif not state.discovered:
                log.info("first discovery done", services=len(targets))
            failing_since, last_error = None, None
            sink.sync(targets.values(), time.monotonic())
            sink.last_discovery.set_to_current_time()
            state.publish(targets)
        await _pause(stop, refresh_s - (time.monotonic() - started))


async def traffic_loop(generator: TrafficGenerator, state: State, stop: asyncio.Event) -> None:
    next_at = time.monotonic()
    while not stop.is_set():
        try:
            generator.tick(state.targets.values())
        except Exception:
            log.error("request generation failed; continuing", exc_info=True)
        next_at += TICK_S
        now = time.monotonic()
        next_at = max(next_at, now)
        await _pause(stop, next_at - now)


async def run(args: argparse.Namespace) -> int:
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    sink = PrometheusSink(registry)
    state = State()
    host, port = parse_listen(args.listen)
    try:
        server = SimulatorServer((host, port), registry, state)
    except OSError as exc:
        log.error("cannot listen", listen=args.listen, error=str(exc))
        return 2
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()

    kubeconfig: str | None = args.kubeconfig or os.environ.get("KUBECONFIG") or None
    timeout_s = min(10.0, max(2.0, 5 * args.refresh))

    discoverer = Discoverer(ReadyPodSplit(), args.default_rps, log, timeout_s=timeout_s)

    sticky = StickySessions(args.sticky_users, args.session_seconds) if args.sticky_users else None
    generator = TrafficGenerator(sink, random.Random(args.seed), sticky=sticky)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "simulator started",
        listen=f"{host}:{port}",
        kubeconfig=kubeconfig or "(in-cluster or ~/.kube/config)",
        default_rps=args.default_rps,
        refresh_s=args.refresh,
        sticky_users=args.sticky_users,
        pid=os.getpid(),
    )
    try:
        await asyncio.gather(
            discovery_loop(
                lambda: make_api(kubeconfig),
                discoverer,
                state,
                sink,
                refresh_s=args.refresh,
                stop=stop,
            ),
            traffic_loop(generator, state, stop),
        )
    finally:
        server.shutdown()
        server.server_close()
    log.info("simulator stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logs.configure(getattr(logging, str(args.log_level).upper(), logging.INFO))
    return asyncio.run(run(args))
