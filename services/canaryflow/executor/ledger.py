"""Side effects done once: one notification per event and receiver, one hook run per command,
across replicas and redeliveries.

Why: a notification or a webhook hook is a side effect that no compare-and-set on the cluster
or on the release state guards. JetStream hands a message on again whenever the replica
holding it did not say in time that it was still on it (a stalled event loop on a busy
machine, a replica killed mid-call): the fault campaign (``make chaos``) saw receivers get
"Release ... started" twice, 0.4 s apart, from two executor replicas with no kill at all, and
the suite on a loaded machine saw a failing smoke hook called by both executor replicas.

So before acting, a delivery claims the effect in the release bucket (JetStream KV,
compare-and-set): ``sending <time>`` while it acts, ``sent`` once done. Another delivery of
the same message finds the claim: ``sent`` means nothing to do; a fresh ``sending`` means wait
(its own keep-alive holds its message meanwhile) until the first one is done or has been
silent for a lease longer than the effect may take, which means it died, and then take over.
A failed attempt removes the claim, so the redelivery tries again. What remains: a replica
that dies between the receiver's answer and writing ``sent`` acts again after the lease,
which no caller can avoid alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

SENT = b"sent"
CLAIM = b"sending"
POLL_SECONDS = 0.2


def ledger_key(kind: str, event_id: str, receiver: str) -> str:
    """One key per (kind of effect, message, receiver); hashed, as ids and URLs may hold
    characters keys may not. ``kind`` is ``notified`` or ``hook``."""
    digest = hashlib.sha256(f"{event_id}\n{receiver}".encode()).hexdigest()[:32]
    return f"{kind}.{digest}"


class SideEffectLedger:
    def __init__(self, lease_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self._lease = lease_seconds
        self._clock = clock
        self._kv: KeyValue | None = None

    async def open(self, js: JetStreamContext, bucket: str) -> None:
        self._kv = await js.key_value(bucket)

    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("the side-effect ledger is open once the service started")
        return self._kv

    def _claim(self) -> bytes:
        return CLAIM + f" {self._clock():.3f}".encode()

    def _claimed_at(self, value: bytes) -> float:
        try:
            return float(value.split()[1])
        except (IndexError, ValueError):
            return 0.0  # unreadable: as good as abandoned

    async def once(
        self, key: str, send: Callable[[], Awaitable[None]], lease_seconds: float | None = None
    ) -> bool:
        """Run ``send`` unless another delivery did or is doing it; True when this one did.
        ``lease_seconds``: how long ``send`` may take at most, when not the ledger's own."""
        lease = self._lease if lease_seconds is None else lease_seconds
        while True:
            try:
                entry = await self.kv.get(key)
            except KeyNotFoundError:  # never claimed, or the claim of a failed send was removed
                entry = None
            try:
                if entry is None or entry.value is None or entry.revision is None:
                    revision = await self.kv.create(key, self._claim())
                elif entry.value == SENT:
                    return False
                elif self._clock() - self._claimed_at(entry.value) < lease:
                    await asyncio.sleep(POLL_SECONDS)  # another delivery is sending right now
                    continue
                else:  # its sender went silent for longer than any send takes: it died
                    revision = await self.kv.update(key, self._claim(), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue  # another delivery claimed it in between: look again
            try:
                await send()
            except BaseException:
                # If this fails too, the claim lapses after the lease instead.
                with contextlib.suppress(Exception):
                    await self.kv.delete(key, last=revision)
                raise
            await self.kv.put(key, SENT)
            return True
