"""The shape every canaryflow service has: connect, converge streams, subscribe, run, stop.

A service module builds a ``Service``, registers its handlers with ``service.subscribe`` (and
optional background loops); its ``__main__`` hands that composition to ``main``, which sets up
the process's logging and tracing and runs it. Nothing else differs between them, so
the JetStream discipline and the telemetry cannot drift from one service to the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import hashlib
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import nats.errors
from aiohttp import web
from faststream import FastStream
from faststream.nats import NatsBroker
from faststream.specification import AsyncAPI
from kubernetes.client import VersionApi
from kubernetes.client.exceptions import ApiException
from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError

from canaryflow.runtime import health, kube, observability, tracing
from canaryflow.runtime.authority import Refusal
from canaryflow.runtime.bus import (
    EventPublisher,
    Handler,
    MalformedHandler,
    converge_consumer,
    ensure_streams,
    subscribe,
    until_jetstream_answers,
    watch_exhausted,
)
from canaryflow.runtime.settings import Settings
from canaryflow.runtime.store import ReleaseStore
from canaryflow_contracts import Envelope, EventData
from canaryflow_contracts.events import CommandRefused

log = logging.getLogger(__name__)

E = TypeVar("E", bound=EventData)

# How long a starting service waits for JetStream to answer its setup (a new cluster).
STARTUP_SECONDS = 60.0
BackgroundLoop = Callable[[], Awaitable[None]]
# Opens what a service keeps in JetStream besides the shared streams (e.g. a KV bucket).
ConnectHook = Callable[[JetStreamContext], Awaitable[None]]


@dataclass(frozen=True)
class Route(Generic[E]):
    """One row of a service's handler table: the event, its durable consumer's name (which
    must never change: JetStream keeps the consumer's position under it), the handler, and how
    it is consumed (see ``Service.subscribe``). mypy checks the handler takes the event."""

    event: type[E]
    name: str
    handler: Handler[E]
    quiet: Callable[[Envelope[E]], bool] | None = None
    on_malformed: MalformedHandler | None = None
    subject_filter: str | None = None
    workers: int | None = None


class Service:
    def __init__(self, settings: Settings) -> None:
        # The process's logging and tracing are its entry point's (``main``), not set up here.
        self.settings = settings
        # Each message's consumer span, in its release's trace (see runtime.tracing).
        self.message_tracing = tracing.MessageTracing(settings.subjects, self._stored_trace_parent)
        self.broker = NatsBroker(
            settings.nats_servers,
            # TLS, this service's NKey and its own inbox (runtime/nats_access).
            **settings.nats_access.broker_options(),
            name=f"canaryflow-{settings.service}",  # what NATS's monitoring lists it as
            # Keep retrying a lost connection: an outage of the bus pauses work, never ends it.
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            # FastStream's own lines go through our JSON logs, and its per-message "Received"
            # and "Processed" only at DEBUG: its default logger printed both for every message,
            # in its own format, to stdout.
            logger=logging.getLogger("canaryflow.broker"),
            log_level=logging.DEBUG,
        )
        self.publisher = EventPublisher(
            self.broker,
            settings.subjects,
            source=f"canaryflow/{settings.service}",
            trace_root=self._stored_trace_parent,
        )
        self._store: ReleaseStore | None = None
        # This service's durable consumers: a message JetStream gives up on is dead-lettered.
        self._durables: set[str] = set()
        # The events it consumes, to be checked against the contract's catalogue (a test).
        self.consumes: set[type[EventData]] = set()
        # Its handler table, as routed (``route``): also checked against the catalogue.
        self.routes: list[Route[Any]] = []
        self._loops: list[BackgroundLoop] = []
        self._connect_hooks: list[ConnectHook] = []
        self._ack_waits: dict[str, float] = {}  # durable consumer -> its ack wait
        self._tasks: list[asyncio.Task[None]] = []
        self._http: web.AppRunner | None = None
        self.health = health.Health()

    @property
    def store(self) -> ReleaseStore:
        if self._store is None:
            raise RuntimeError("the release store is available once the service has started")
        return self._store

    def subscribe(
        self,
        event: type[E],
        handler_name: str,
        handler: Handler[E],
        *,
        ack_wait_seconds: float | None = None,
        on_malformed: MalformedHandler | None = None,
        quiet: Callable[[Envelope[E]], bool] | None = None,
        subject_filter: str | None = None,
        workers: int | None = None,
    ) -> None:
        durable = self.settings.subjects.consumer(self.settings.service, handler_name)
        self._durables.add(durable)
        self.consumes.add(event)
        self._ack_waits[durable] = ack_wait_seconds or self.settings.ack_wait_seconds
        subscribe(
            self.broker,
            self.settings,
            event,
            handler_name,
            handler,
            message_tracing=self.message_tracing,
            ack_wait_seconds=ack_wait_seconds,
            on_malformed=on_malformed,
            quiet=quiet,
            subject_filter=subject_filter,
            workers=workers,
        )

    def route(self, table: tuple[Route[Any], ...]) -> None:
        """Subscribe every row of a service's handler table, in its order."""
        self.routes.extend(table)
        for row in table:
            self.subscribe(
                row.event,
                row.name,
                row.handler,
                on_malformed=row.on_malformed,
                quiet=row.quiet,
                subject_filter=row.subject_filter,
                workers=row.workers,
            )

    async def refuse(self, envelope: Envelope[Any], refusals: list[Refusal]) -> None:
        """Say why a command is not obeyed: a warning, a metric per check, a CommandRefused.

        The refusal's id derives from the command's, so a redelivered command is refused once.
        """
        command, release_id = envelope.data, envelope.subject
        reasons = [refusal.reason for refusal in refusals]
        checks = sorted({refusal.check for refusal in refusals})
        log.warning(
            "refused %s %s from %s: %s",
            command.event_type(),
            envelope.id,
            envelope.source,
            "; ".join(reasons),
        )
        counter = observability.service_metrics().commands_refused
        for check in checks:
            counter.labels(self.settings.service, command.event_type(), check).inc()
        refused = CommandRefused(
            command=command.event_type(),
            command_id=envelope.id,
            source=envelope.source,
            target=getattr(command, "target", None),
            reasons=reasons,
            checks=checks,
        )
        digest = hashlib.sha256(envelope.id.encode()).hexdigest()[:12]
        await self.publisher.publish(
            refused, release_id, event_id=f"{release_id}.command-refused.{digest}"
        )

    def when_connected(self, hook: ConnectHook) -> None:
        """Run ``hook`` once connected, before the first message is taken."""
        self._connect_hooks.append(hook)

    def every(self, loop: BackgroundLoop) -> None:
        """Run ``loop`` in the background while the service runs (it should loop itself)."""
        self._loops.append(loop)

    def asyncapi(self) -> dict[str, Any]:
        """This service's AsyncAPI document, generated by FastStream from its subscribers."""
        app = FastStream(
            self.broker,
            specification=AsyncAPI(title=f"canaryflow {self.settings.service}", version="1.0.0"),
        )
        schema: dict[str, Any] = app.schema.to_specification().to_jsonable()
        return schema

    async def _stored_trace_parent(self, release_id: str) -> str:
        """The release's root ``traceparent`` from its state ("" before the planner stored it)."""
        if self._store is None:
            return ""
        try:
            versioned = await self._store.get(release_id)
        except (nats.errors.TimeoutError, NoStreamResponseError) as error:
            # The bucket has no leader for a moment (a cluster node was lost): the event
            # still goes out, in a trace of its own rather than not at all.
            log.warning("trace of %s unknown for now (%r)", release_id, error)
            return ""
        return versioned.state.trace_parent if versioned is not None else ""

    async def _set_up_jetstream(self, js: JetStreamContext) -> None:
        await ensure_streams(js, self.settings.subjects, self.settings.stream_replicas)
        self._store = ReleaseStore(await js.key_value(self.settings.subjects.releases_bucket))
        for hook in self._connect_hooks:
            await hook(js)
        for durable, ack_wait in self._ack_waits.items():
            await converge_consumer(
                js, self.settings.subjects, durable, ack_wait, self.settings.max_deliver
            )

    async def _start_consuming(self) -> None:
        """The broker's subscribers bound to their consumers, or none of them: on a busy
        R3 cluster a consumer's creation can outlast the request's timeout (a planner exited
        on it at the start of a campaign), and a retry must not subscribe twice."""
        try:
            await self.broker.start()
        except BaseException:
            for subscriber in self.broker.subscribers:  # the broker's stop would drain NATS
                with contextlib.suppress(Exception):
                    await subscriber.stop()
            raise

    async def start(self) -> None:
        kube.use_call_threads(asyncio.get_running_loop())
        # Made on the first request, not here: a restarted replica that takes over a killed
        # one's work (a rollback) should not spend a tenth of a second on a document first.
        asyncapi = functools.cache(lambda: json.dumps(self.asyncapi(), indent=2).encode())
        self._http = await observability.serve_metrics(
            self.settings.metrics_port,
            {"/asyncapi.json": asyncapi},
            {"/livez": self.health.live, "/readyz": self.health.ready},
        )
        if self._http is not None:  # probes to answer: keep their checks fresh
            self._tasks.append(asyncio.create_task(_guarded(self._check_health)))
        await self.broker.connect()
        js = self.broker.connection.jetstream()
        # A cluster that has just formed places its R3 streams and consumers for a while:
        # every step here is safe to repeat, so it is tried again rather than exiting.
        await until_jetstream_answers(
            "set up streams and consumers", lambda: self._set_up_jetstream(js), STARTUP_SECONDS
        )
        # A plain subscription, made once: inside the repeated setup, a retry after it would
        # have made a second one (every advisory handled twice).
        await watch_exhausted(js, self.broker.connection, self.settings, self._durables)
        # What exists by now (modules, schemas, clients) lives as long as the process: move it
        # out of the collector's sight, so each full collection scans only the objects of the
        # work in flight (it was ~100 ms over ~180k objects, and a tenth of a handler's CPU).
        gc.collect()
        gc.freeze()
        await until_jetstream_answers("bind the consumers", self._start_consuming, STARTUP_SECONDS)
        for loop in self._loops:
            self._tasks.append(asyncio.create_task(_guarded(loop)))
        self.health.started = True
        log.info(
            "service started",
            extra={"nats_url": self.settings.nats_url, "prefix": self.settings.prefix},
        )

    async def _check_health(self) -> None:
        """Every few seconds: NATS connected, this replica's consumers there, API server up.

        The API server is asked for ``/version``, which every authenticated account may read,
        so the check needs no rule of its own and fails on a token the server refuses.
        """
        api: Any = None
        timeout = health.CHECK_TIMEOUT_SECONDS
        while True:
            connected = self.broker._connection is not None and self.broker.connection.is_connected
            self.health.record("nats", None if connected else "not connected to NATS")
            if connected and self.health.started:
                js = self.broker.connection.jetstream(timeout=timeout)
                stream = self.settings.subjects.events_stream.name
                try:
                    for durable in sorted(self._durables):
                        await js.consumer_info(stream, durable)
                    self.health.record("consumers", None)
                except Exception as error:
                    self.health.record("consumers", f"consumer info failed: {error!r}")
            elif not connected:
                self.health.record("consumers", "not connected to NATS")
            try:
                if api is None:
                    api = kube.api_client(self.settings.kubeconfig)
                version = VersionApi(api).get_code
                await kube.call(version, _request_timeout=timeout)
                self.health.record("kubernetes", None)
            except ApiException as error:
                answer = f"API server answered {error.status} {error.reason}"
                self.health.record("kubernetes", answer)
            except Exception as error:
                self.health.record("kubernetes", f"API server unreachable: {error!r}")
            self.health.round_done()
            await asyncio.sleep(health.CHECK_SECONDS)

    async def stop(self) -> None:
        for task in self._tasks:
            await stop_task(task)
        await self.broker.stop()
        if self._http is not None:
            await self._http.cleanup()
        log.info("service stopped")


async def stop_task(task: asyncio.Task[Any], retry_seconds: float = 0.5) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling again if a cancellation is lost.

    On Python 3.11, ``asyncio.wait_for`` returns the awaited result instead of raising when the
    task is cancelled just as the reply arrives (fixed in 3.12; nats-py awaits every request
    that way): a background loop then goes on with its next pass, and a stop that waited for
    it once was seen to wait for ever.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=retry_seconds)
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("background task %s had failed: %r", task.get_name(), error)


async def _guarded(loop: BackgroundLoop) -> None:
    """Restart a background loop that crashed, after a pause, instead of losing it."""
    while True:
        try:
            await loop()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background loop %s failed; restarting in 2s", loop.__name__)
            await asyncio.sleep(2)


def main(
    service_name: str, build: Callable[[Settings], Service], *, quiet: tuple[str, ...] = ()
) -> None:
    """A service's process: its settings from the environment, the process's logging and
    tracing set up (here, once, before anything logs), then the service ``build`` composes, run
    until stopped. ``quiet``: libraries' loggers kept to warnings."""
    settings = Settings.from_env(service_name)
    observability.configure_process(settings.service)
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)

    async def serve() -> None:
        await run_service(build(settings))

    asyncio.run(serve())


async def run_service(service: Service) -> None:
    """Run until SIGINT/SIGTERM, then stop cleanly (in-flight messages are redelivered)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    try:
        await stop.wait()
    finally:
        await service.stop()
