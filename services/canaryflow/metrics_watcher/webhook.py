"""The HTTP side of pushed alerts: an Alertmanager-compatible receiver on CANARYFLOW_HTTP_PORT.

Handlers only translate: parse (``alerts``), find the release holding the target's lock in
the store, publish the failed verdict the rollback service acts on. Every refusal is logged
with its reason and answered 4xx, so Alertmanager's own logs show why nothing happened.
A call without this receiver's bearer token is refused (401) before its body is read: a
firing alert rolls a release back (runtime/signing.py says why).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from canaryflow.metrics_watcher.alerts import AlertRefused, alert_verdict, in_flight, parse_alerts
from canaryflow.runtime import observability
from canaryflow.runtime.decoding import BodyOverLimit, check_limits
from canaryflow.runtime.signing import bearer_refusal
from canaryflow.runtime.store import Versioned
from canaryflow_contracts.events import AnalysisVerdict, TargetRef

log = logging.getLogger(__name__)

PATH = "/alerts"
MAX_BODY_BYTES = 1 << 20

Publish = Callable[[str, AnalysisVerdict, str], Awaitable[None]]


class Releases(Protocol):
    async def holder_of(self, target: TargetRef) -> str | None: ...

    async def get(self, release_id: str) -> Versioned | None: ...


async def receive(body: Any, releases: Releases, publish: Publish) -> dict[str, Any]:
    """Act on one notification; raises AlertRefused when nothing in it can be acted on."""
    firing = parse_alerts(body)
    if not firing:
        return {"status": "ok", "rolled_back": [], "detail": "no firing alert"}
    acted: list[dict[str, str]] = []
    unknown: list[str] = []
    for alert in firing:
        release_id = await releases.holder_of(alert.target)
        versioned = await releases.get(release_id) if release_id else None
        state = versioned.state if versioned is not None else None
        if state is None or not in_flight(state):
            unknown.append(f"{alert.name}: no release in flight for {alert.target.key()}")
            continue
        verdict, event_id = alert_verdict(alert, state)
        await publish(state.release_id, verdict, event_id)
        log.warning(
            "alert %s fails release %s: rollback requested",
            alert.name,
            state.release_id,
            extra={"release_id": state.release_id},
        )
        acted.append({"alert": alert.name, "release_id": state.release_id})
    if not acted:
        raise AlertRefused(404, "; ".join(unknown))
    return {"status": "ok", "rolled_back": acted, "ignored": unknown}


async def respond(raw: bytes, releases: Releases, publish: Publish) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON answer to one request body (no I/O but ``releases`` and
    ``publish``): a refusal is a 4xx with its reason, never an exception."""
    try:
        if len(raw) > MAX_BODY_BYTES:
            raise AlertRefused(413, f"body of {len(raw)} bytes; at most {MAX_BODY_BYTES}")
        try:
            # The depth limit first: json.loads recurses once per level, and a body nested
            # 100,000 deep (well under the size limit) raised RecursionError, answered 500
            # (found by tests/unit/test_input_properties.py).
            check_limits(raw, MAX_BODY_BYTES)
        except BodyOverLimit as error:
            raise AlertRefused(400, str(error)) from error
        try:
            body = json.loads(raw)
        except ValueError as error:
            raise AlertRefused(400, f"body is not JSON: {error}") from error
        answer = await receive(body, releases, publish)
    except AlertRefused as refused:
        log.warning("alert notification refused (%d): %s", refused.status, refused.reason)
        return refused.status, {"status": "refused", "reason": refused.reason}
    return 200, answer


def application(releases: Callable[[], Releases], publish: Publish, token: str) -> web.Application:
    async def on_alerts(request: web.Request) -> web.Response:
        # The token before the body: a stranger's call is not even read.
        refusal = bearer_refusal(request.headers.get("Authorization"), token)
        if refusal is not None:
            log.warning("alert notification refused (401): %s", refusal)
            return web.json_response({"status": "refused", "reason": refusal}, status=401)
        status, answer = await respond(await request.read(), releases(), publish)
        return web.json_response(answer, status=status)

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application(client_max_size=MAX_BODY_BYTES + 1)
    app.router.add_post(PATH, on_alerts)
    app.router.add_post("/api/v2/alerts", on_alerts)  # where Alertmanager-style senders post
    app.router.add_get("/healthz", healthz)
    return app


def serve(
    port: int,
    releases: Callable[[], Releases],
    publish: Publish,
    token: str,
    host: str = "0.0.0.0",
) -> Callable[[], Awaitable[None]]:
    """A background loop for ``Service.every``: serves until cancelled."""

    async def loop() -> None:
        if not token:
            log.error("the alert webhook has no CANARYFLOW_ALERTS_TOKEN: it refuses every call")
        runner = await observability.start_http(application(releases, publish, token), host, port)
        log.info("alert webhook listening on %s:%d%s", host, port, PATH)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    loop.__name__ = "alert_webhook"
    return loop
