"""The generic webhook notifier: one POST per notification, in a shape Slack accepts.

Slack's incoming webhooks take ``text`` (the fallback every client shows), ``blocks`` (the
formatted message) and ``metadata`` (``event_type`` and ``event_payload``, kept with the
message for apps). Other receivers (Mattermost, Teams through a relay, a ticketing system)
read ``text``, or the structured ``metadata.event_payload``; so one payload serves all.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from canaryflow.executor.notify.base import Notification
from canaryflow.runtime.signing import post_json

TIMEOUT_SECONDS = 5.0
SECTION_LIMIT = 2900  # Slack refuses a section text over 3000 characters
ICONS = {
    "info": ":rocket:",
    "good": ":white_check_mark:",
    "warning": ":warning:",
    "danger": ":rotating_light:",
}


class NotificationFailed(RuntimeError):
    """The receiver did not take it; the event is redelivered."""


def _escaped(text: str) -> str:
    # Slack's mrkdwn gives &, < and > a meaning; anything a release carries is plain text.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(notification: Notification) -> dict[str, Any]:
    icon = ICONS.get(notification.severity, "")
    title = _escaped(notification.title)
    body = _escaped(notification.text)[:SECTION_LIMIT]
    context = (
        f"release `{notification.release_id}` · {notification.namespace}/{notification.name} · "
        f"{notification.kind.value}"
    )
    return {
        "text": f"{icon} {notification.title}: {notification.text}".strip(),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"{icon} *{title}*\n{body}"}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        ],
        "metadata": {
            "event_type": "canaryflow_" + re.sub(r"[^a-z0-9]+", "_", notification.kind.value),
            "event_payload": notification.as_json(),
        },
    }


class WebhookNotifier:
    def __init__(self, client: httpx.AsyncClient | None = None, signing_key: str = "") -> None:
        self._client = client
        self._signing_key = signing_key

    async def send(self, url: str, notification: Notification) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        try:
            response = await post_json(
                self._client,
                url,
                slack_payload(notification),
                self._signing_key,
                TIMEOUT_SECONDS,
                # A delivery killed after the receiver's answer sends it again (executor/ledger):
                # the event's id lets the receiver drop that repeat.
                idempotency_key=notification.event_id,
            )
        except httpx.HTTPError as error:
            raise NotificationFailed(f"{type(error).__name__}: {error}") from error
        if not 200 <= response.status_code < 300:
            raise NotificationFailed(f"HTTP {response.status_code}: {response.text[:200]}")
