"""What people are told about a release, decided from its events: no I/O here.

A notifier only delivers; which events become a notification, and what it says, is decided
once, here, so that every channel (a chat webhook today, e-mail or a pager tomorrow) tells the
same story in the same words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, assert_never

from canaryflow_contracts import Envelope
from canaryflow_contracts.events import (
    CommandRefused,
    OperatorCommandRefused,
    ReleaseFailed,
    ReleasePlanned,
    ReleaseRejected,
    ReleaseRolledBack,
    ReleaseStatusChanged,
    ReleaseSucceeded,
    StatusChange,
)
from canaryflow_contracts.policy import Notify, NotifyOn

# ReleaseStatusChanged statuses worth interrupting someone for.
STATUS_KINDS = {
    StatusChange.PAUSED: NotifyOn.PAUSED,
    StatusChange.WAITING: NotifyOn.WAITING,
    StatusChange.ROLLING_BACK: NotifyOn.ROLLING_BACK,
}


@dataclass(frozen=True)
class Notification:
    release_id: str
    namespace: str
    name: str
    kind: NotifyOn
    severity: str  # info | good | warning | danger
    title: str
    text: str
    event_type: str
    time: datetime
    event_id: str  # the event's id: the same on every delivery of it (Idempotency-Key)
    facts: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "releaseId": self.release_id,
            "target": {"namespace": self.namespace, "name": self.name},
            "kind": self.kind.value,
            "severity": self.severity,
            "title": self.title,
            "text": self.text,
            "eventType": self.event_type,
            "eventId": self.event_id,
            "time": self.time.isoformat(),
            "facts": dict(self.facts),
        }


NotifiedEvent = (
    ReleasePlanned
    | ReleaseStatusChanged
    | ReleaseSucceeded
    | ReleaseRolledBack
    | ReleaseFailed
    | ReleaseRejected
    | OperatorCommandRefused
    | CommandRefused
)
"""The events people are notified of (``NOTIFIED``, checked against the catalogue).
``notification_for`` handles each one, and mypy proves it (``assert_never``)."""


class Notifier(Protocol):
    async def send(self, url: str, notification: Notification) -> None:
        """Deliver or raise (the event is then redelivered, a bounded number of times)."""
        ...


def notification_for(envelope: Envelope[Any]) -> Notification | None:
    """The notification an event makes, or None for the events nobody needs to hear about."""
    data = envelope.data
    target = getattr(data, "target", None)
    if target is None or not isinstance(data, NotifiedEvent):
        return None
    rid = envelope.subject

    def make(kind: NotifyOn, severity: str, title: str, text: str, **facts: str) -> Notification:
        return Notification(
            rid,
            target.namespace,
            target.name,
            kind,
            severity,
            title,
            text,
            envelope.type,
            envelope.time,
            envelope.id,
            facts,
        )

    where = f"{target.namespace}/{target.name}"
    match data:
        case ReleasePlanned():
            steps = ", ".join(f"{s.weight}%" for s in data.steps)
            return make(
                NotifyOn.STARTED,
                "info",
                f"Release {rid} of {where} started",
                f"{data.version.image}, steps {steps} (policy {data.policy})",
                image=data.version.image,
            )
        case ReleaseStatusChanged():
            if data.status not in STATUS_KINDS:
                return None  # not worth interrupting anyone for
            kind = STATUS_KINDS[data.status]
            severity = "danger" if kind is NotifyOn.ROLLING_BACK else "warning"
            words = data.status.replace("_", " ")
            return make(kind, severity, f"Release {rid} of {where} is {words}", data.detail)
        case ReleaseSucceeded():
            return make(
                NotifyOn.SUCCEEDED, "good", f"Release {rid} of {where} promoted", data.summary
            )
        case ReleaseRolledBack():
            failing = [c for c in data.evidence if c.passed is False]
            evidence = "; ".join(
                f"{c.metric} ({c.track}) {c.value} vs {c.threshold}" for c in failing
            )
            text = data.summary + (f"\nEvidence: {evidence}" if evidence else "")
            return make(
                NotifyOn.ROLLED_BACK, "danger", f"Release {rid} of {where} rolled back", text
            )
        case ReleaseFailed():
            return make(NotifyOn.FAILED, "danger", f"Release {rid} of {where} failed", data.summary)
        case ReleaseRejected():
            reasons = "; ".join(data.reasons)
            return make(NotifyOn.FAILED, "warning", f"Release {rid} of {where} rejected", reasons)
        case CommandRefused():
            # Someone put a command on the bus that no live release asked for: worth a look.
            command = data.command.removeprefix("io.canaryflow.")
            return make(
                NotifyOn.REFUSED,
                "danger",
                f"A {command} for release {rid} of {where} was refused",
                "; ".join(data.reasons),
                source=data.source,
                command_id=data.command_id,
            )
        case OperatorCommandRefused():
            return make(
                NotifyOn.REFUSED,
                "warning",
                f"{data.actor} may not {data.action} release {rid} of {where}",
                data.refusal,
                actor=data.actor,
            )
        case _:
            assert_never(data)


def destinations(notification: Notification, targets: list[Notify], always: list[str]) -> list[str]:
    """The URLs that want this notification: the policy's (filtered by kind) and the global ones."""
    urls = [t.url for t in targets if not t.on or notification.kind in t.on]
    return list(dict.fromkeys([*urls, *always]))
