"""JetStream discipline in one place: streams, publishing, and consumers that never drop work.

Every consumer here is durable, pull-based and acknowledges explicitly *after* its handler
returned (FastStream's ``AckPolicy.MANUAL``: we do not let the framework terminate a message on
an exception). A failing handler's message is redelivered with a growing delay; after
``max_deliver`` attempts it is copied to the dead-letter stream with its error and terminated,
so an operator can inspect it (``canaryflow deadletters``) and nothing loops forever.
Nothing a body holds may escape that path: the body is checked against decoding limits before
any parser sees it, FastStream's own decoding is turned off (it parsed every body before our
handler ran, and a deeply nested one raised there), and a message whose subject, size, nesting,
envelope or release id breaks the contract is dead-lettered at once with the reason.
Publishing sets ``Nats-Msg-Id`` to the envelope id, so the server drops a re-published event
inside the duplicate window; handlers are idempotent for everything outside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import nats.errors
from faststream import AckPolicy
from faststream.message import StreamMessage
from faststream.nats import ConsumerConfig, JStream, NatsBroker, NatsRouter, PullSub
from faststream.nats.annotations import JsClient, NatsMessage
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import (
    BadRequestError,
    BucketNotFoundError,
    NoStreamResponseError,
    NotFoundError,
)
from opentelemetry.trace import Span
from pydantic import ValidationError

from canaryflow.runtime import observability, tracing
from canaryflow.runtime.decoding import check_limits
from canaryflow.runtime.settings import Settings
from canaryflow_contracts import (
    MESSAGE_ID_HEADER,
    Envelope,
    EventData,
    Subjects,
    envelope_of,
    new_event_id,
)
from canaryflow_contracts.events import DeadLetter
from canaryflow_contracts.identifiers import RELEASE_ID_PATTERN, is_release_id

log = logging.getLogger(__name__)

E = TypeVar("E", bound=EventData)
T = TypeVar("T")

# Delay before the n-th redelivery of a failed message (the last value repeats).
REDELIVERY_BACKOFF_SECONDS = (0.5, 2.0, 5.0, 15.0)
# The server delivers a message this many times more than our handler's own limit, so that
# our handler always gets to dead-letter a failing one (``watch_exhausted`` takes the rest).
SERVER_EXTRA_DELIVERIES = 2
# Waits before the second and later redeliveries of a message no handler settled (its replica
# was killed or hung while handling it); the first comes after the ack wait. Why growing: with
# a 1 s ack wait, replicas killed one after another (the fault campaign kills one every few
# seconds, a crash-looping Deployment does the same) spent all seven deliveries of a release
# request in 25 s and dead-lettered it, although the release had been planned (issue 13).
# Spread like this, a message is given up only after about two minutes that no replica
# could finish it.
UNSETTLED_BACKOFF_SECONDS = (2.0, 5.0, 10.0, 20.0, 40.0)
# Consumers keep this many KV revisions of each release: enough to audit recent transitions.
KV_HISTORY = 10
# A dead letter keeps this much of the body, so that it always fits in a NATS message.
DEAD_LETTER_PAYLOAD_BYTES = 64 * 1024

# How long a publish is tried again while JetStream does not answer (a leader election).
PUBLISH_RETRY_SECONDS = 10.0
# Messages one pull asks for; the subscriber pulls again while it has free workers. Not the
# workers (1,000 for analyses and steps): a pull of 1,000 messages left the last ones of the
# batch waiting for their handler, with no heartbeat, past the 1 s ack wait, so JetStream
# handed them out again and again: 72 of 200 steps were dead-lettered (bench/scale.py).
PULL_BATCH = 16
# A consumer's max_ack_pending: no limit from the server (each replica's workers limit it).
UNLIMITED_IN_FLIGHT = -1
# The keep-alive never beats more often than this, whatever the ack wait.
MIN_BEAT_SECONDS = 0.2


def server_max_deliver(max_deliver: int) -> int:
    return max_deliver + SERVER_EXTRA_DELIVERIES


def unsettled_backoff(ack_wait: float, max_deliver: int) -> list[float]:
    """The consumer's ``backoff``: the wait after each unsettled delivery but the last (the
    server refuses more values than deliveries minus one); never shorter than the ack wait,
    which the heartbeat keeps a live handler's message inside. Pure."""
    steps = [ack_wait, *(max(ack_wait, step) for step in UNSETTLED_BACKOFF_SECONDS)]
    return [steps[min(i, len(steps) - 1)] for i in range(server_max_deliver(max_deliver) - 1)]


async def ensure_streams(js: JetStreamContext, subjects: Subjects, replicas: int = 1) -> None:
    """Create or update the streams and the KV bucket. Safe to call from every replica.

    ``replicas``: copies JetStream keeps of each (R3 on a cluster). A stream's count is
    converged on an existing stream; a KV bucket's is only set when it is created.
    """
    for spec in (subjects.events_stream, subjects.deadletter_stream):
        config = StreamConfig(
            name=spec.name,
            description=spec.description,
            subjects=list(spec.subjects),
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            max_age=spec.max_age_seconds,
            duplicate_window=spec.duplicate_window_seconds,
            num_replicas=replicas,
        )
        try:
            await js.add_stream(config)
        except BadRequestError:
            # Exists with another configuration (e.g. an older version of ours): converge.
            await js.update_stream(config)
    try:
        await js.key_value(subjects.releases_bucket)
    except BucketNotFoundError:
        await js.create_key_value(
            KeyValueConfig(
                bucket=subjects.releases_bucket,
                description="canaryflow release state, written with compare-and-set",
                history=KV_HISTORY,
                storage=StorageType.FILE,
                replicas=replicas,
            )
        )


class EventPublisher:
    """Publishes typed events in their envelope, deduplicated by the envelope id."""

    def __init__(
        self,
        broker: NatsBroker,
        subjects: Subjects,
        source: str,
        trace_root: tracing.RootLookup | None = None,
    ) -> None:
        self._broker = broker
        self._subjects = subjects
        self._source = source
        # For publishes outside any handler (a webhook, a background loop): the release's trace.
        self._trace_root = trace_root

    async def publish(
        self, data: EventData, release_id: str, *, event_id: str | None = None
    ) -> Envelope[Any]:
        """Publish and wait for the stream's ack.

        Pass a deterministic ``event_id`` (e.g. ``f"{release_id}.reached.{step}"``) when the
        same fact may be published again by a retry: JetStream then stores it once.
        """
        envelope = Envelope.wrap(
            data, release_id=release_id, source=self._source, id=event_id or new_event_id()
        )
        subject = self._subjects.of(type(data), release_id)
        root = ""
        if self._trace_root is not None and tracing.tracer_enabled() and not tracing.in_trace():
            root = await self._trace_root(release_id)
        with (
            tracing.within(root),
            tracing.publishing(data, release_id, envelope.id, subject) as trace_headers,
        ):
            # Straight to JetStream, with the publishing span's context (see tracing).
            await self._store(
                subject,
                envelope.model_dump_json().encode(),
                {MESSAGE_ID_HEADER: envelope.id, "ce-type": envelope.type, **trace_headers},
            )
        log.info(
            "published %s",
            envelope.type,
            extra={"release_id": release_id, "event_id": envelope.id, "subject": subject},
        )
        return envelope

    async def _store(self, subject: str, body: bytes, headers: dict[str, str]) -> None:
        """Publish until the stream acknowledges it, through a short loss of its leader.

        Trying again is safe: the message id makes a second copy a duplicate the server drops.
        """
        await until_jetstream_answers(
            f"publish to {subject}",
            lambda: self._broker.connection.jetstream().publish(
                subject, body, headers=headers, stream=self._subjects.events_stream.name
            ),
            PUBLISH_RETRY_SECONDS,
        )


async def until_jetstream_answers(what: str, call: Callable[[], Awaitable[T]], seconds: float) -> T:
    """``call()`` again, with growing pauses, while JetStream does not answer, for ``seconds``.

    While a cluster elects a leader (a node was lost, or the cluster has just formed and is
    placing its first R3 streams) or the client reconnects, JetStream answers nothing for a
    moment; ``call`` must be safe to repeat.
    """
    deadline = time.monotonic() + seconds
    pause = 0.1
    while True:
        try:
            return await call()
        except (NoStreamResponseError, nats.errors.TimeoutError) as error:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("%s: JetStream did not answer (%r); again", what, error)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)


@dataclass
class Delivery:
    """What a handler knows about the message it is handling."""

    subject: str
    release_id: str
    attempt: int
    message: NatsMessage
    ack_wait_seconds: float

    @contextlib.asynccontextmanager
    async def keep_alive(self) -> AsyncIterator[None]:
        """Marks long work (waiting for pods, an analysis). The consumer already tells
        JetStream that every handler is still on its message (see ``Heartbeat``), so a
        handler needs nothing more: this only says, where it stands, that the wait is long."""
        yield


class Heartbeat:
    """Tells JetStream every third of the ack wait that the handler is still on the message.

    Every handler gets one, for as long as it runs: the ack wait can then be short (how soon
    a killed replica's message goes to another one) without a slow handler (an analysis
    holding for its step, a webhook that takes its time) being handed out twice. Two beats
    may be late (a busy loop, a slow machine) before JetStream gives up on us. Timers, not a
    task per message: most handlers end long before the first beat.
    """

    def __init__(self, raw: Any, ack_wait_seconds: float) -> None:
        self._raw = raw
        self._every = max(ack_wait_seconds / 3, MIN_BEAT_SECONDS)
        self._loop = asyncio.get_running_loop()
        self._beats: set[asyncio.Task[None]] = set()
        self._timer = self._loop.call_later(self._every, self._beat)

    def _beat(self) -> None:
        task = self._loop.create_task(self._in_progress())
        self._beats.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._beats.discard)
        self._timer = self._loop.call_later(self._every, self._beat)

    async def _in_progress(self) -> None:
        try:
            await self._raw.in_progress()
        except Exception as error:  # the bus is away, or the message was just acked
            log.debug("keep-alive of %s failed: %r", self._raw.subject, error)

    def stop(self) -> None:
        self._timer.cancel()


Handler = Callable[[Envelope[E], Delivery], Awaitable[None]]


@dataclass(frozen=True)
class Unreadable:
    """A message on a consumer's subjects that is not a valid event of its type."""

    subject: str
    release_id: str  # the release id the subject names, as sent ("" outside the grammar)
    message_key: str  # see _message_key
    problem: str


# Told of an unreadable message before it is dead-lettered: e.g. the planner answers the
# requester with a refusal.
MalformedHandler = Callable[[Unreadable], Awaitable[None]]


class PermanentError(Exception):
    """The message can never be handled (e.g. it does not parse): dead-letter it at once."""


class HandedOver(Exception):
    """A later delivery of this same message carries the work on: leave the message alone.

    Raised by a handler that finds its work taken over (a redelivery reached another replica
    while this one was stalled). Neither ack (the new owner acks when it is done, and must be
    redelivered if it dies) nor nak (that would hand the message out once more).
    """


def decode(subjects: Subjects, event: type[E], subject: str, body: bytes) -> Envelope[E]:
    """The ``event`` a message on ``subject`` carries, or ValueError (pydantic's
    ValidationError is one) naming the rule of the contract the message breaks.

    Pure and outside ``subscribe``, so that tests/unit/test_input_properties.py runs exactly
    what a consumer runs on generated and mutated messages.
    """
    release_id = subjects.release_in(event, subject)
    if release_id is None:
        grammar = subjects.of(event, "<release id>")
        raise ValueError(f"subject {subject!r} is not of the form {grammar!r}")
    if not is_release_id(release_id):
        raise ValueError(
            f"release id {release_id!r} in the subject is not a valid release id "
            f"(lower-case ASCII letters, digits and '-', at most 63: {RELEASE_ID_PATTERN})"
        )
    check_limits(body)
    envelope = envelope_of(event).model_validate_json(body).check_type()
    if envelope.subject != release_id:
        raise ValueError(
            f"the envelope's subject {envelope.subject!r} differs from the release id "
            f"{release_id!r} the NATS subject names"
        )
    return envelope


def subscribe(
    router: NatsRouter | NatsBroker,
    settings: Settings,
    event: type[E],
    handler_name: str,
    handler: Handler[E],
    *,
    message_tracing: tracing.MessageTracing,
    ack_wait_seconds: float | None = None,
    on_malformed: MalformedHandler | None = None,
    quiet: Callable[[Envelope[E]], bool] | None = None,
    subject_filter: str | None = None,
    workers: int | None = None,
) -> None:
    """Register ``handler`` as a durable, explicitly acknowledged consumer of ``event``.

    ``workers``: messages handled at once by this replica (default ``settings.workers``).

    ``quiet`` picks the messages the handler only takes note of: they get no span of their
    own unless their handling fails (see ``tracing.MessageTracing``). ``subject_filter``
    widens what the consumer reads (e.g. every subject under a public prefix), so that a
    message on a subject outside the grammar is refused instead of stored and never read.
    """
    subjects = settings.subjects
    durable = subjects.consumer(settings.service, handler_name)
    ack_wait = ack_wait_seconds or settings.ack_wait_seconds
    concurrency = workers or settings.workers
    metrics = observability.service_metrics()
    # Exported at 0 from the start, so "no redelivery yet" is a value, not a missing series.
    metrics.redeliveries.labels(settings.service, handler_name)
    metrics.dead_letters.labels(settings.service, handler_name)

    def read(subject: str, body: bytes) -> Envelope[E]:
        return decode(subjects, event, subject, body)

    # The messages this replica's handlers hold, by stream sequence, with their attempt. A
    # loop late by more than the ack wait (a starved machine) lets JetStream hand a message
    # out again while its handler here still runs; handling it twice doubled the work, which
    # made the loop later still: at 200 releases every step was carried out 2.6 times and
    # 72 were dead-lettered (bench/scale.py). The running handler keeps it, and its ack (or
    # its heartbeat) names the same stream sequence, which JetStream settles.
    in_hand: dict[int, int] = {}

    async def on_message(msg: NatsMessage, js: JsClient) -> None:
        # ``js``: the broker's JetStream context, given by FastStream (its public annotation)
        # for the dead letters.
        raw = msg.raw_message
        sequence = raw.metadata.sequence.stream
        if sequence in in_hand:
            log.info(
                "%s (attempt %d) is still being handled here (attempt %d): left to it",
                raw.subject,
                raw.metadata.num_delivered,
                in_hand[sequence],
            )
            return
        in_hand[sequence] = raw.metadata.num_delivered
        try:
            await _handled(msg, js, raw)
        finally:
            in_hand.pop(sequence, None)

    async def _handled(msg: NatsMessage, js: JsClient, raw: Any) -> None:
        started, started_ns = time.perf_counter(), time.time_ns()
        try:
            envelope: Envelope[E] | ValueError = read(raw.subject, raw.data)
        except (ValidationError, ValueError) as error:
            envelope = error
        except Exception as error:  # RecursionError, MemoryError...: refused like the rest
            envelope = ValueError(f"{type(error).__name__}: {error}")
        mute = quiet is not None and isinstance(envelope, Envelope) and quiet(envelope)
        try:
            async with message_tracing.consuming(raw.subject, raw.headers, quiet=mute) as span:
                await handle(msg, js, envelope, span, started=started, started_ns=started_ns)
        except Exception:
            # Settling itself failed (the dead letter or the ack could not be sent): the message
            # stays unacknowledged and JetStream redelivers it after ack_wait. Said here, with
            # the traceback, as FastStream would print only the first of such errors.
            log.exception(
                "could not settle %s (attempt %d); it will be redelivered",
                raw.subject,
                raw.metadata.num_delivered,
            )

    async def handle(
        msg: NatsMessage,
        js: JetStreamContext,
        envelope: Envelope[E] | ValueError,
        span: Span,
        *,
        started: float,
        started_ns: int,
    ) -> None:
        raw = msg.raw_message
        attempt = raw.metadata.num_delivered
        release_id = Subjects.release_id_of(raw.subject)
        if attempt > 1:
            metrics.redeliveries.labels(settings.service, handler_name).inc()
            span.set_attribute("messaging.nats.delivery_attempt", attempt)
        try:
            if isinstance(envelope, ValueError):
                problem = f"malformed {event.event_type()}: {envelope}"
                if on_malformed is not None:  # a failure here is retried like any other
                    named = subjects.release_in(event, raw.subject) or ""
                    await on_malformed(Unreadable(raw.subject, named, _message_key(raw), problem))
                raise PermanentError(problem) from envelope
            if (raw.headers or {}).get(MESSAGE_ID_HEADER) != envelope.id:
                span.set_attribute(tracing.EVENT_ID, envelope.id)  # else the span has it already
            heartbeat = Heartbeat(raw, ack_wait)
            try:
                with observability.release_context(release_id, envelope.id):
                    await handler(
                        envelope, Delivery(raw.subject, release_id, attempt, msg, ack_wait)
                    )
            finally:
                heartbeat.stop()
        except HandedOver as handed:
            log.info(
                "left %s (attempt %d) to its newer delivery: %s",
                raw.subject,
                attempt,
                handed,
                extra={"release_id": release_id},
            )
            return
        except Exception as error:
            failed = span
            if not span.is_recording() and tracing.tracer_enabled():  # a quiet message's
                failed = tracing.failure_span(raw.subject, started_ns, raw.headers)
            failed.record_exception(error)
            tracing.mark_failed(failed, f"{type(error).__name__}: {error}")
            if failed is not span:
                failed.end()
            permanent = isinstance(error, PermanentError)
            if permanent or attempt >= settings.max_deliver:
                log.error(
                    "giving up on %s after %d attempt(s): %s",
                    raw.subject,
                    attempt,
                    error,
                    extra={"release_id": release_id},
                )
                stored = Stored(raw.subject, raw.data, raw.metadata.sequence.stream)
                problem = f"{type(error).__name__}: {error}"
                await dead_letter(js, settings, durable, stored, deliveries=attempt, error=problem)
                metrics.dead_letters.labels(settings.service, handler_name).inc()
                await raw.term()
            else:
                delay = REDELIVERY_BACKOFF_SECONDS[
                    min(attempt - 1, len(REDELIVERY_BACKOFF_SECONDS) - 1)
                ]
                log.warning(
                    "handling %s failed (attempt %d of %d), retrying in %.1fs: %r",
                    raw.subject,
                    attempt,
                    settings.max_deliver,
                    delay,
                    error,
                    extra={"release_id": release_id},
                )
                await raw.nak(delay=delay)
            return
        finally:
            metrics.handling_seconds.labels(settings.service, handler_name).observe(
                time.perf_counter() - started
            )
        await raw.ack()

    router.subscriber(
        subject_filter or subjects.every(event),
        stream=JStream(name=subjects.events_stream.name, declare=False),
        durable=durable,
        pull_sub=PullSub(batch_size=min(concurrency, PULL_BATCH), timeout=1.0),
        # The pulled messages come to this identity's own inbox (FastStream's subscriber has
        # its own default, "_INBOX.", which the service's NATS permissions do not allow).
        inbox_prefix=f"{settings.nats_access.inbox}.".encode(),
        config=ConsumerConfig(
            ack_wait=ack_wait,
            max_deliver=server_max_deliver(settings.max_deliver),
            backoff=unsettled_backoff(ack_wait, settings.max_deliver),
            # Not the server's default of 1,000 in flight for all replicas together: each
            # replica's own ``workers`` is the limit.
            max_ack_pending=UNLIMITED_IN_FLIGHT,
        ),
        ack_policy=AckPolicy.MANUAL,
        decoder=_undecoded,
        max_workers=concurrency,
        title=f"{settings.service}:{handler_name}",
        description=(event.__doc__ or "").strip().splitlines()[0],
    )(on_message)


async def _undecoded(message: StreamMessage[Any]) -> bytes:
    """The body as it came: ``read`` checks and parses it (FastStream's decoder would parse it
    first, unchecked, and a deeply nested body raised there, out of our reach)."""
    body: bytes = message.body
    return body


async def converge_consumer(
    js: JetStreamContext, subjects: Subjects, durable: str, ack_wait: float, max_deliver: int
) -> None:
    """Give an existing durable consumer this version's ack wait, redelivery backoff and
    in-flight limit.

    A consumer keeps the configuration it was created with (FastStream only creates one that
    is missing), so an installation upgraded from the 30 s ack wait would keep waiting that
    long for a killed replica's messages, one from before the backoff would spend its
    deliveries in seconds, and one from before the unlimited in-flight count would keep the
    server's 1,000. All are fields JetStream lets a consumer change in place.
    """
    stream = subjects.events_stream.name
    try:
        info = await js.consumer_info(stream, durable)
    except NotFoundError:
        return
    current = info.config
    backoff = unsettled_backoff(ack_wait, max_deliver)
    same_wait = current.ack_wait is not None and math.isclose(current.ack_wait, ack_wait)
    same_backoff = len(current.backoff or []) == len(backoff) and all(
        math.isclose(a, b) for a, b in zip(current.backoff or [], backoff, strict=True)
    )
    if same_wait and same_backoff and current.max_ack_pending == UNLIMITED_IN_FLIGHT:
        return
    log.info(
        "consumer %s: ack wait %ss -> %ss, backoff %s -> %s, in flight %s -> unlimited",
        durable,
        current.ack_wait,
        ack_wait,
        current.backoff,
        backoff,
        current.max_ack_pending,
    )
    changed = dataclasses.replace(
        current,
        ack_wait=ack_wait,
        backoff=backoff,
        max_deliver=server_max_deliver(max_deliver),
        max_ack_pending=UNLIMITED_IN_FLIGHT,
    )
    await js.add_consumer(stream, config=changed)


def _message_key(raw: Any) -> str:
    """What identifies this message to its sender: the envelope's ``id`` if the body has one,
    else its Nats-Msg-Id, else its place in the stream."""
    with contextlib.suppress(Exception):
        check_limits(raw.data)
        found = json.loads(raw.data).get("id")
        if isinstance(found, str) and found:
            return found
    msg_id = (raw.headers or {}).get(MESSAGE_ID_HEADER)
    return str(msg_id) if msg_id else f"{raw.metadata.stream}:{raw.metadata.sequence.stream}"


@dataclass(frozen=True)
class Stored:
    """A message as the events stream holds it."""

    subject: str
    data: bytes
    sequence: int


async def dead_letter(
    js: JetStreamContext,
    settings: Settings,
    consumer: str,
    stored: Stored,
    *,
    deliveries: int,
    error: str,
) -> None:
    """Copy a message to the dead-letter stream with its error, once per message and consumer
    (the id is the stream position and the consumer, so replicas and retries store one)."""
    letter = DeadLetter(
        consumer=consumer,
        original_subject=stored.subject,
        deliveries=deliveries,
        error=error,
        payload=stored.data[:DEAD_LETTER_PAYLOAD_BYTES].decode(errors="replace"),
        payload_bytes=len(stored.data),
        payload_truncated=len(stored.data) > DEAD_LETTER_PAYLOAD_BYTES,
    )
    release_id = Subjects.release_id_of(stored.subject)
    envelope = Envelope.wrap(
        letter,
        release_id=release_id if is_release_id(release_id) else "unknown",
        source=f"canaryflow/{settings.service}",
        id=f"dl-{stored.sequence}-{consumer}",
    )
    await js.publish(
        f"{settings.subjects.prefix}.deadletter.{consumer}.{envelope.subject}",
        envelope.model_dump_json().encode(),
        headers={MESSAGE_ID_HEADER: envelope.id},
        stream=settings.subjects.deadletter_stream.name,
    )


# JetStream's advisory when a consumer has delivered a message max_deliver times unsettled.
MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"


async def watch_exhausted(
    js: JetStreamContext, nc: Any, settings: Settings, consumers: set[str]
) -> Any:
    """Dead-letter what JetStream stops delivering because no handler ever settled it.

    Our handler dead-letters a message at its ``max_deliver``-th failure; the server's own
    limit is two deliveries more, spread over minutes (``unsettled_backoff``). A message
    whose handling never ends (the process is killed by it each time, say) would still reach
    that limit and be dropped in silence. JetStream
    announces it with an advisory naming the stream position: every replica hears it, reads
    the message from the stream and dead-letters it (the dead letter's id makes it one).
    Returns the subscription.
    """
    stream = settings.subjects.events_stream.name

    async def on_advisory(msg: Any) -> None:
        try:
            advisory = json.loads(msg.data)
            consumer, sequence = advisory["consumer"], int(advisory["stream_seq"])
            if consumer not in consumers:
                return
            found = await js.get_msg(stream, sequence)
            stored = Stored(found.subject or "", found.data or b"", sequence)
            deliveries = int(advisory["deliveries"])
            why = (
                f"delivered {deliveries} times and never settled: its handler did not "
                "finish (killed, or hung past the ack wait each time)"
            )
            await dead_letter(js, settings, consumer, stored, deliveries=deliveries, error=why)
            log.error("dead-lettered #%d of %s: %s", sequence, consumer, why)
        except Exception:
            log.exception("could not dead-letter after the advisory %r", msg.data[:500])

    return await nc.subscribe(f"{MAX_DELIVERIES_ADVISORY}.{stream}.*", cb=on_advisory)
