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
from typing import Any

from nats.js import JetStreamContext

from canaryflow.executor.ledger import SideEffectLedger, ledger_key
from canaryflow.executor.notify.base import Notification, Notifier, destinations, notification_for
from canaryflow.executor.notify.webhook import TIMEOUT_SECONDS, WebhookNotifier, slack_payload
from canaryflow.runtime.bus import Delivery
from canaryflow.runtime.service import Service
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


def register(
    service: Service, notifier: Notifier | None = None, always: list[str] | None = None
) -> None:
    """Subscribe to the events people hear about and deliver each to its receivers."""
    sender = notifier or WebhookNotifier(signing_key=service.settings.signing_key)
    everywhere = urls_from_env() if always is None else always
    ledger = SideEffectLedger(LEASE_SECONDS)

    async def open_ledger(js: JetStreamContext) -> None:
        await ledger.open(js, service.settings.subjects.releases_bucket)

    service.when_connected(open_ledger)

    async def on_event(envelope: Envelope[Any], delivery: Delivery) -> None:
        notification = notification_for(envelope)
        if notification is None:
            return
        versioned = await service.store.get(envelope.subject)
        targets = versioned.state.notify if versioned is not None else []
        for url in destinations(notification, targets, everywhere):
            shown = url.split("?")[0]

            async def send(url: str = url) -> None:
                await sender.send(url, notification)

            if await ledger.once(ledger_key("notified", envelope.id, url), send):
                log.info("notified %s: %s", shown, notification.title)
            else:
                log.info("already notified %s: %s", shown, notification.title)

    for event, name in NOTIFIED:
        service.subscribe(event, name, on_event)


__all__ = ["Notification", "Notifier", "WebhookNotifier", "register", "slack_payload"]
