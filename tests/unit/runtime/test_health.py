"""The probes' answers: ready only when every check passed, alive unless the loop stopped."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import urllib.error
import urllib.request
from unittest import mock

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, exposition

from canaryflow.runtime import health, observability
from canaryflow.runtime.health import Health


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _all_passed(state: Health) -> None:
    for check in health.CHECKS:
        state.record(check, None)
    state.round_done()


def test_a_service_is_not_ready_before_it_started_or_checked_anything() -> None:
    state = Health(Clock())

    ready, body = state.ready()

    assert not ready
    failures = json.loads(body)["failures"]
    assert set(failures) == {"service", *health.CHECKS}


def test_ready_once_started_and_every_check_passed() -> None:
    state = Health(Clock())
    state.started = True
    _all_passed(state)

    assert state.ready() == (True, b'{"status": "ready"}')


def test_one_failed_check_is_enough_to_be_not_ready_and_says_why() -> None:
    state = Health(Clock())
    state.started = True
    _all_passed(state)
    state.record("kubernetes", "API server unreachable: 401")

    ready, body = state.ready()

    assert not ready
    assert json.loads(body)["failures"] == {"kubernetes": "API server unreachable: 401"}
    assert state.live()[0], "an unreachable API server is no reason to restart"


def test_a_loop_that_stopped_running_the_checks_is_not_alive() -> None:
    clock = Clock()
    state = Health(clock)
    state.started = True
    _all_passed(state)

    clock.now += health.STUCK_SECONDS - 1
    assert state.live()[0]
    clock.now += 2
    alive, body = state.live()

    assert not alive and json.loads(body)["status"] == "stuck"
    assert not state.ready()[0]


async def test_the_probes_answer_200_or_503_on_the_metrics_port() -> None:
    state = Health(Clock())
    server = await observability.serve_metrics(0, None, {"/readyz": state.ready})
    assert server is None  # port 0 serves nothing
    server = await observability.serve_metrics(
        _free_port(), None, {"/readyz": state.ready, "/livez": state.live}
    )
    assert server is not None
    base = f"http://127.0.0.1:{server.addresses[0][1]}"

    def get(path: str) -> tuple[int, bytes]:  # in a thread: the server runs on this loop
        with urllib.request.urlopen(f"{base}{path}", timeout=5) as answer:
            return answer.status, answer.read()

    try:
        try:
            await asyncio.to_thread(get, "/readyz")
            raise AssertionError("a service that has not started answered ready")
        except urllib.error.HTTPError as refused:
            assert refused.code == 503
        status, _ = await asyncio.to_thread(get, "/livez")
        assert status == 200
        state.started = True
        _all_passed(state)
        _, body = await asyncio.to_thread(get, "/readyz")
        assert json.loads(body) == {"status": "ready"}
        _, body = await asyncio.to_thread(get, "/metrics")
        assert b"# HELP" in body
    finally:
        await server.cleanup()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_the_metrics_are_rendered_off_the_loop_in_the_format_and_encoding_asked_for() -> None:
    registry = CollectorRegistry()
    Counter("canaryflow_test_renders", "A counter of this test", registry=registry).inc(3)
    app = observability.http_application(registry=registry)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", _free_port())
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    rendered_on: list[str] = []
    real = exposition.generate_latest

    def spying(collector: CollectorRegistry) -> bytes:
        rendered_on.append(threading.current_thread().name)
        return real(collector)

    def get(headers: dict[str, str]) -> tuple[dict[str, str], bytes]:
        request = urllib.request.Request(f"{base}/metrics", headers=headers)
        with urllib.request.urlopen(request, timeout=5) as answer:
            return dict(answer.headers), answer.read()

    try:
        with mock.patch.object(exposition, "generate_latest", spying):
            headers, body = await asyncio.to_thread(get, {})
        assert b"canaryflow_test_renders_total 3.0" in body
        assert headers["Content-Type"].startswith("text/plain")
        assert rendered_on and threading.main_thread().name not in rendered_on
        headers, body = await asyncio.to_thread(
            get, {"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert headers["Content-Type"].startswith("application/openmetrics-text")
        assert body.endswith(b"# EOF\n")
        headers, body = await asyncio.to_thread(get, {"Accept-Encoding": "gzip"})
        assert headers.get("Content-Encoding") == "gzip"
        assert b"canaryflow_test_renders_total 3.0" in gzip.decompress(body)
    finally:
        await runner.cleanup()
