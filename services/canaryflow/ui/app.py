"""The web view's process: an aiohttp app over the bus (read) and the release state (read-only).

Why this shape: the page must stay live without reloads and must act with the CLI's authority,
nothing more. So the process holds one NATS connection (as the ``operator`` identity, the one
the CLI uses: it may read the events and the state, and publish operator commands, nothing
else; it never talks to Kubernetes), follows every new event of the installation with one
ordered consumer and fans each out to the browsers following it over server-sent events; a
browser told that its release moved asks for the release again, which is read from the KV state
and a replay of the release's events (``view.release_page``). A click becomes the very command
the CLI sends (``runtime.commands``), signed with the key of the person the proxy vouches for
(``identity``); the planner and the rollback service decide, and a refusal comes back on the bus
like any other event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
from aiohttp import web
from aiohttp_sse import sse_response
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.errors import BucketNotFoundError
from pydantic import ValidationError

from canaryflow.runtime import commands
from canaryflow.runtime.nats_access import NatsAccess
from canaryflow.runtime.settings import nats_servers
from canaryflow.runtime.store import ReleaseStore
from canaryflow.runtime.tracing import trace_id_of
from canaryflow.ui import view
from canaryflow.ui.identity import IdentityPolicy, parse_keys
from canaryflow_contracts import DEFAULT_PREFIX, Envelope, Subjects
from canaryflow_contracts.events import parse_event
from canaryflow_contracts.state import ReleaseState

log = logging.getLogger("canaryflow.ui")

STATIC = Path(__file__).parent / "static"
# uPlot as npm installs it (tools/ui/package.json; `make venv`), in a checkout of the repo.
DEFAULT_ASSETS = Path(__file__).resolve().parents[3] / "tools/ui/node_modules/uplot/dist"
ACTION_HEADER = "X-Canaryflow-Action"  # a cross-site form cannot set it (no CORS is allowed)
SOURCE = "canaryflow/ui"
REPLAY_IDLE_SECONDS = 0.5  # a release with no events yet answers after this


@dataclass(frozen=True)
class UiSettings:
    nats_url: str = "nats://127.0.0.1:4222"
    prefix: str = DEFAULT_PREFIX
    host: str = "127.0.0.1"
    port: int = 8080
    jaeger_ui: str = "http://127.0.0.1:16686"
    assets: Path = DEFAULT_ASSETS
    identity: IdentityPolicy = field(default_factory=IdentityPolicy)
    nats_access: NatsAccess = field(default_factory=NatsAccess)

    @classmethod
    def from_env(cls, environ: dict[str, str]) -> UiSettings:
        return cls(
            nats_url=environ.get("NATS_URL") or cls.nats_url,
            prefix=environ.get("CANARYFLOW_PREFIX") or DEFAULT_PREFIX,
            host=environ.get("CANARYFLOW_UI_HOST") or cls.host,
            port=int(environ.get("CANARYFLOW_UI_PORT") or cls.port),
            jaeger_ui=environ.get("JAEGER_UI_URL") or cls.jaeger_ui,
            assets=Path(environ.get("CANARYFLOW_UI_ASSETS") or DEFAULT_ASSETS),
            identity=IdentityPolicy(
                header=environ.get("CANARYFLOW_UI_IDENTITY_HEADER", ""),
                proxy_secret=environ.get("CANARYFLOW_UI_PROXY_SECRET", ""),
                keys=parse_keys(environ.get("CANARYFLOW_UI_OPERATOR_KEYS", "")),
            ),
            nats_access=NatsAccess.from_env("operator", environ),
        )


class Hub:
    """The browsers following events: each a queue, with the releases it follows (or all).

    A group's or a pipeline's page follows its own id and its members' release ids."""

    def __init__(self) -> None:
        self._followers: dict[asyncio.Queue[dict[str, Any]], frozenset[str]] = {}

    def join(self, *release_ids: str) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self._followers[queue] = frozenset(filter(None, release_ids))
        return queue

    def leave(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._followers.pop(queue, None)

    def publish(self, item: dict[str, Any]) -> None:
        for queue, release_ids in self._followers.items():
            if release_ids and item["release"] not in release_ids:
                continue
            if queue.full():  # a browser that stopped reading: it reloads what it missed
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(item)


@dataclass
class Ui:
    settings: UiSettings
    nc: Client
    keys: dict[str, Ed25519PrivateKey]
    hub: Hub = field(default_factory=Hub)

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.settings.prefix)

    async def store(self) -> ReleaseStore | None:
        try:
            return ReleaseStore(await self.nc.jetstream().key_value(self.subjects.releases_bucket))
        except BucketNotFoundError:
            return None  # no planner has started on this prefix yet

    async def replay(self, release_id: str) -> list[Envelope[Any]]:
        """Every stored event of one release, in order."""
        subscription = await self.nc.jetstream().subscribe(
            self.subjects.release(release_id),
            stream=self.subjects.events_stream.name,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        found: list[Envelope[Any]] = []
        try:
            while True:
                try:
                    msg = await subscription.next_msg(timeout=REPLAY_IDLE_SECONDS)
                except TimeoutError:
                    return found
                with contextlib.suppress(ValueError, ValidationError):
                    found.append(parse_event(msg.data))
                if msg.metadata.num_pending == 0:
                    return found
        finally:
            await subscription.unsubscribe()

    async def follow(self) -> None:
        """Every new event of the installation, to the hub (one ordered consumer)."""

        async def take(msg: Msg) -> None:
            try:
                envelope = parse_event(msg.data)
            except (ValueError, ValidationError):
                return
            self.hub.publish(
                {
                    "release": Subjects.release_id_of(msg.subject),
                    "id": envelope.id,
                    "type": envelope.type,
                    "t": envelope.time.timestamp(),
                }
            )

        await self.nc.jetstream().subscribe(
            f"{self.settings.prefix}.*.*.*.*",
            cb=take,
            stream=self.subjects.events_stream.name,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
        )

    def trace_link(self, traceparent: str) -> str:
        trace_id = trace_id_of(traceparent)
        return f"{self.settings.jaeger_ui.rstrip('/')}/trace/{trace_id}" if trace_id else ""

    def me(self, request: web.Request) -> dict[str, Any]:
        name = self.settings.identity.who(request.headers)
        return {
            "name": name,
            "can_act": name is not None,
            "signs": name is not None and name in self.keys,
            "identity_header": self.settings.identity.header or None,
        }


UI_KEY = web.AppKey("ui", Ui)


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def _release_html(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "release.html")


async def _me(request: web.Request) -> web.Response:
    return web.json_response(request.app[UI_KEY].me(request))


async def _group_html(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "group.html")


async def _pipeline_html(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "pipeline.html")


async def _releases(request: web.Request) -> web.Response:
    """The list page: releases, and the groups and pipelines with their members' states."""
    ui = request.app[UI_KEY]
    store = await ui.store()
    states = [versioned.state for versioned in await store.all()] if store else []
    groups = [versioned.state for versioned in await store.all_groups()] if store else []
    pipelines = [versioned.state for versioned in await store.all_pipelines()] if store else []
    namespace = request.query.get("namespace", "")
    status = request.query.get("status", "")
    now = datetime.now(UTC)
    by_id = {state.release_id: state for state in states}
    answer = view.release_list(states, now, namespace, status)
    answer["groups"] = view.group_list(groups, by_id, now, namespace, status)
    answer["pipelines"] = view.pipeline_list(pipelines, by_id, now, namespace, status)
    return web.json_response(answer)


async def _release(request: web.Request) -> web.Response:
    ui = request.app[UI_KEY]
    release_id = request.match_info["release_id"]
    store = await ui.store()
    versioned = await store.get(release_id) if store else None
    state = versioned.state if versioned else None
    events = await ui.replay(release_id)
    if state is None and not events:
        raise web.HTTPNotFound(text=f"no release {release_id}")
    link = ui.trace_link(state.trace_parent) if state else ""
    page = view.release_page(release_id, state, events, datetime.now(UTC), link)
    page["me"] = ui.me(request)
    return web.json_response(page)


async def _whole(request: web.Request, kind: str, read: Any, build: Any) -> web.Response:
    """A group's or a pipeline's page: its state, its members' release states, its events.

    ``read`` fetches the state from the store; ``build`` is the view's page function."""
    ui = request.app[UI_KEY]
    whole_id = request.match_info["whole_id"]
    store = await ui.store()
    versioned = await read(store, whole_id) if store else None
    state = versioned.state if versioned else None
    events = await ui.replay(whole_id)
    if state is None and not events:
        raise web.HTTPNotFound(text=f"no {kind} {whole_id}")
    ids = view.member_ids(state) if state else []
    releases: dict[str, ReleaseState | None] = {}
    for release_id in ids:
        member = await store.get(release_id) if store else None
        releases[release_id] = member.state if member else None
    link = ui.trace_link(state.trace_parent) if state else ""
    page = build(whole_id, state, releases, events, datetime.now(UTC), jaeger_link=link)
    return web.json_response(page)


async def _group(request: web.Request) -> web.Response:
    return await _whole(request, "group", ReleaseStore.get_group, view.group_page)


async def _pipeline(request: web.Request) -> web.Response:
    return await _whole(request, "pipeline", ReleaseStore.get_pipeline, view.pipeline_page)


async def _stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: one per bus event (of the releases named, or of any)."""
    ui = request.app[UI_KEY]
    queue = ui.hub.join(*request.query.getall("release", []))
    try:
        async with sse_response(request) as response:
            await response.send(json.dumps({"hello": True}), event="ready")
            while response.is_connected():
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=10)
                except TimeoutError:
                    continue
                await response.send(json.dumps(item), event="bus")
            return response
    finally:
        ui.hub.leave(queue)


async def _command(request: web.Request) -> web.Response:
    """A button: the operator command, as the CLI would send it, in the proven name."""
    ui = request.app[UI_KEY]
    if request.headers.get(ACTION_HEADER) != "1":
        raise web.HTTPForbidden(text=f"an action needs the {ACTION_HEADER} header")
    actor = ui.settings.identity.who(request.headers)
    if actor is None:
        raise web.HTTPForbidden(text="this page cannot tell who you are: no actions")
    release_id = request.match_info["release_id"]
    try:
        body = await request.json()
        weight = body.get("weight")
        command = commands.operator_command(
            str(body.get("action", "")),
            actor,
            str(body.get("reason", "")),
            weight=int(weight) if weight not in (None, "") else None,
            gate=body.get("gate") or None,
        )
    except (ValueError, TypeError, AttributeError, commands.CommandError) as error:
        raise web.HTTPBadRequest(text=str(error)) from error
    key = ui.keys.get(actor)
    envelope = commands.envelope_for(command, release_id, SOURCE, key)
    try:
        await commands.publish(ui.nc, ui.subjects, envelope)
    except commands.CommandError as error:
        raise web.HTTPServiceUnavailable(text=str(error)) from error
    log.info("%s sent %s for %s", actor, body.get("action"), release_id)
    return web.json_response({"id": envelope.id, "signed": key is not None, "actor": actor})


async def _health(request: web.Request) -> web.Response:
    connected = request.app[UI_KEY].nc.is_connected
    return web.json_response({"nats": connected}, status=200 if connected else 503)


def build_app(ui: Ui) -> web.Application:
    app = web.Application()
    app[UI_KEY] = ui
    app.router.add_get("/", _index)
    app.router.add_get("/releases/{release_id}", _release_html)
    app.router.add_get("/groups/{whole_id}", _group_html)
    app.router.add_get("/pipelines/{whole_id}", _pipeline_html)
    app.router.add_get("/api/me", _me)
    app.router.add_get("/api/releases", _releases)
    app.router.add_get("/api/releases/{release_id}", _release)
    app.router.add_get("/api/groups/{whole_id}", _group)
    app.router.add_get("/api/pipelines/{whole_id}", _pipeline)
    app.router.add_post("/api/releases/{release_id}/commands", _command)
    app.router.add_get("/api/stream", _stream)
    app.router.add_get("/healthz", _health)
    app.router.add_static("/static/", STATIC)
    if ui.settings.assets.is_dir():
        app.router.add_static("/assets/uplot/", ui.settings.assets)
    else:
        log.warning(
            "no uPlot at %s: the page shows no plots (make venv installs it)", ui.settings.assets
        )
    return app


def load_keys(policy: IdentityPolicy) -> dict[str, Ed25519PrivateKey]:
    """Every configured operator key, read at start: a bad one stops the process."""
    passphrase = os.environ.get("CANARYFLOW_OPERATOR_KEY_PASSPHRASE")
    return {name: commands.signing_key(path, passphrase) for name, path in policy.keys.items()}


@contextlib.asynccontextmanager
async def running(settings: UiSettings) -> AsyncIterator[web.AppRunner]:
    """The process's server and NATS connection, for as long as the context lasts."""
    keys = load_keys(settings.identity)
    nc = await nats.connect(
        nats_servers(settings.nats_url),
        name="canaryflow-ui",
        max_reconnect_attempts=-1,
        **settings.nats_access.client_options(),
    )
    ui = Ui(settings, nc, keys)
    await ui.follow()
    runner = web.AppRunner(build_app(ui))
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    log.info(
        "ui listening on http://%s:%d (prefix %s; identity header %s; %d operator keys)",
        settings.host,
        settings.port,
        settings.prefix,
        settings.identity.header or "none: read-only",
        len(keys),
    )
    try:
        yield runner
    finally:
        await runner.cleanup()
        await nc.drain()


async def serve(settings: UiSettings) -> None:
    async with running(settings):
        await asyncio.Event().wait()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = UiSettings.from_env(dict(os.environ))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings))
