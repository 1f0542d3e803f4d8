"""Webhook hooks: the executor calls them, with a timeout per attempt and bounded retries.

A hook is how a release reaches a system canaryflow does not know (a load test to start, a
change record to open, a smoke test to run). Calling out belongs with the executor, which
already owns canaryflow's side effects; the planner only asks (RunHook) and waits for the
answer (HookCompleted), so a slow or dead endpoint never blocks the planner. A hook without a
URL is answered by whichever system subscribes to RunHook on the bus; this module skips it.

A hook is run once per command however often the command is delivered (another replica, a
redelivery on a busy machine): the run is claimed in the side-effect ledger first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from canaryflow.executor.ledger import ledger_key
from canaryflow.runtime import authority
from canaryflow.runtime.bus import Delivery
from canaryflow.runtime.ports import Publisher, Refuser, ReleaseReader
from canaryflow.runtime.service import Route
from canaryflow.runtime.signing import post_json
from canaryflow_contracts import Envelope
from canaryflow_contracts.events import HookCompleted, RunHook
from canaryflow_contracts.policy import Hook

log = logging.getLogger(__name__)

# Pause before retry n (the last repeats): short, a hook's own timeout bounds each attempt.
RETRY_BACKOFF_SECONDS = (0.5, 1.0, 2.0)
DETAIL_LIMIT = 300
PUBLISH_MARGIN_SECONDS = 15.0  # a publish is retried up to 10 s while JetStream elects a leader

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class HookOutcome:
    ok: bool
    detail: str
    attempts: int


def payload(release_id: str, command: RunHook) -> dict[str, Any]:
    """What a webhook receives: enough to act without asking canaryflow anything."""
    hook = command.hook
    return {
        "releaseId": release_id,
        "hook": hook.name,
        "type": hook.type.value,
        "step": command.step_index,
        "target": {"namespace": command.target.namespace, "name": command.target.name},
        "version": command.version.model_dump(mode="json"),
        "metadata": dict(hook.metadata),
    }


def judged(status: int, body: str) -> tuple[bool, str]:
    """2xx passes; anything else fails, with the start of what the endpoint said."""
    ok = 200 <= status < 300
    text = " ".join(body.split())[:DETAIL_LIMIT]
    return ok, f"HTTP {status}" + (f": {text}" if text else "")


def backoff(attempt: int, schedule: Sequence[float] = RETRY_BACKOFF_SECONDS) -> float:
    return schedule[min(attempt, len(schedule) - 1)]


def longest_run_seconds(hook: Hook) -> float:
    """The longest a run of ``hook`` can take (every attempt timing out), plus publishing its
    outcome: a claim older than that belongs to a replica that died."""
    attempts = hook.retries + 1
    pauses = sum(backoff(attempt) for attempt in range(attempts - 1))
    return attempts * hook.timeout_seconds + pauses + PUBLISH_MARGIN_SECONDS


class WebhookCaller:
    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        sleep: Sleep = asyncio.sleep,
        signing_key: str = "",
    ) -> None:
        self._client = client
        self._sleep = sleep
        self._signing_key = signing_key

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        return self._client

    async def call(self, release_id: str, command: RunHook) -> HookOutcome:
        hook = command.hook
        assert hook.url is not None
        body = payload(release_id, command)
        detail = ""
        attempts = hook.retries + 1
        for attempt in range(attempts):
            try:
                response = await post_json(
                    self._http(), hook.url, body, self._signing_key, hook.timeout_seconds
                )
                ok, detail = judged(response.status_code, response.text)
                if ok:
                    return HookOutcome(True, detail, attempt + 1)
            except httpx.HTTPError as error:
                detail = f"{type(error).__name__}: {error}"[:DETAIL_LIMIT]
            if attempt + 1 < attempts:
                await self._sleep(backoff(attempt))
        return HookOutcome(False, f"after {attempts} attempt(s): {detail}", attempts)


class Caller(Protocol):
    async def call(self, release_id: str, command: RunHook) -> HookOutcome: ...


class Ledger(Protocol):
    """Runs a side effect once however often its command is delivered (``SideEffectLedger``)."""

    async def once(
        self, key: str, send: Callable[[], Awaitable[None]], lease_seconds: float | None = None
    ) -> bool: ...


class Hooks:
    """The executor's RunHook handler: call the webhook, report each outcome once."""

    def __init__(
        self,
        releases: Callable[[], ReleaseReader],
        publisher: Publisher,
        refuser: Refuser,
        webhooks: Caller,
        ledger: Ledger,  # each run names its own lease (``longest_run_seconds``)
    ) -> None:
        self._releases = releases  # a getter: the service's store exists once it has started
        self._publisher = publisher
        self._refuser = refuser
        self._webhooks = webhooks
        self._ledger = ledger

    def routes(self) -> tuple[Route[Any], ...]:
        return (Route(RunHook, "run-hook", self.on_run_hook),)

    async def on_run_hook(self, envelope: Envelope[RunHook], delivery: Delivery) -> None:
        command, rid = envelope.data, envelope.subject
        hook = command.hook
        if hook.url is None:
            return  # a bus hook: another system answers it
        versioned = await self._releases().get(rid)
        refusals = authority.hook_refusals(rid, command, versioned.state if versioned else None)
        if refusals:
            await self._refuser.refuse(envelope, refusals)
            return
        url = hook.url

        async def run() -> None:
            outcome = await self._webhooks.call(rid, command)
            log.info("hook %s (%s): %s", hook.name, hook.type.value, outcome.detail)
            completed = HookCompleted(
                target=command.target,
                hook=hook.name,
                step_index=command.step_index,
                ok=outcome.ok,
                detail=outcome.detail,
            )
            await self._publisher.publish(
                completed, rid, event_id=f"{rid}.hook-done.{hook.name}.{command.step_index}"
            )

        async with delivery.keep_alive():
            key = ledger_key("hook", envelope.id, url)
            if not await self._ledger.once(key, run, lease_seconds=longest_run_seconds(hook)):
                log.info("hook %s already run for %s by another delivery", hook.name, envelope.id)
