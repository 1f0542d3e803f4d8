"""Notifications: release events in, messages to people out, behind the ``Notifier`` interface.

The policy's ``notify`` list (recorded in the release's state) says where each target's news
goes; ``CANARYFLOW_NOTIFY_URLS`` (comma-separated) adds receivers for every release, rejections
included. A receiver that fails makes the event come back, a bounded number of times, and then
it is dead-lettered with the error like any other; a receiver that took it is not sent it again
by another delivery of the same event (see ``canaryflow.executor.ledger``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from canaryflow.executor.ledger import ledger_key
from canaryflow.executor.notify.base import (
    Notification,
    NotifiedEvent,
    Notifier,
    destinations,
    notification_for,
)
from canaryflow.executor.notify.webhook import TIMEOUT_SECONDS, WebhookNotifier, slack_payload
from canaryflow.runtime.bus import Delivery
from canaryflow.runtime.ports import ReleaseReader
from canaryflow.runtime.service import Route
from canaryflow_contracts import Envelope, EventData
from canaryflow_contracts.events import (
    CommandRefused,
    OperatorCommandRefused,
    ReleaseFailed,
    ReleasePlanned,
    ReleaseRejected,
    ReleaseRolledBack,
    ReleaseStatusChanged,
    ReleaseSucceeded,
)

log = logging.getLogger(__name__)

# A send that has not finished by then never will: its replica died (see executor.ledger).
LEASE_SECONDS = 3 * TIMEOUT_SECONDS

# The events people are notified of (``NotifiedEvent``), each with its own durable consumer.
NOTIFIED: tuple[tuple[type[EventData], str], ...] = (
    (ReleasePlanned, "notify-planned"),
    (ReleaseStatusChanged, "notify-status"),
    (ReleaseSucceeded, "notify-succeeded"),
    (ReleaseRolledBack, "notify-rolled-back"),
    (ReleaseFailed, "notify-failed"),
    (ReleaseRejected, "notify-rejected"),
    (OperatorCommandRefused, "notify-refused"),
    (CommandRefused, "notify-command-refused"),
)


def urls_from_env() -> list[str]:
    raw = os.environ.get("CANARYFLOW_NOTIFY_URLS", "")
    return [url.strip() for url in raw.split(",") if url.strip()]


class Ledger(Protocol):
    """Runs a side effect once however often its event is delivered (``SideEffectLedger``)."""

    async def once(self, key: str, send: Callable[[], Awaitable[None]]) -> bool: ...


class Notifications:
    """The executor's notification handler: each event people hear about, to its receivers."""

    def __init__(
        self,
        releases: Callable[[], ReleaseReader],
        sender: Notifier,
        ledger: Ledger,
        everywhere: list[str],  # receivers of every release's news (CANARYFLOW_NOTIFY_URLS)
    ) -> None:
        self._releases = releases  # a getter: the service's store exists once it has started
        self._sender = sender
        self._ledger = ledger
        self._everywhere = everywhere

    def routes(self) -> tuple[Route[Any], ...]:
        """The handler table: every event in ``NOTIFIED`` to ``on_event``."""
        return tuple(Route(event, name, self.on_event) for event, name in NOTIFIED)

    async def on_event(self, envelope: Envelope[NotifiedEvent], delivery: Delivery) -> None:
        notification = notification_for(envelope)
        if notification is None:
            return
        versioned = await self._releases().get(envelope.subject)
        targets = versioned.state.notify if versioned is not None else []
        for url in destinations(notification, targets, self._everywhere):
            shown = url.split("?")[0]

            async def send(url: str = url) -> None:
                await self._sender.send(url, notification)

            if await self._ledger.once(ledger_key("notified", envelope.id, url), send):
                log.info("notified %s: %s", shown, notification.title)
            else:
                log.info("already notified %s: %s", shown, notification.title)


__all__ = [
    "LEASE_SECONDS",
    "NOTIFIED",
    "Notification",
    "Notifications",
    "Notifier",
    "WebhookNotifier",
    "slack_payload",
    "urls_from_env",
]
