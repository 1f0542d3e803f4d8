"""Pushed alerts: an Alertmanager notification turned into a failed verdict, with no I/O.

Every canary tool polls, so a failure is seen at the next tick at best; an alert that
already fires in the platform team's monitoring should not wait for it. Alertmanager's
webhook (payload version 4) carries each alert's labels; an alert names the release's
target with ``namespace`` plus ``deployment`` (or ``target``), and a firing one becomes a
final failed verdict that asks for a rollback at once. Anything that cannot be tied to a
release in flight is refused with the reason, so a misrouted alert is visible, not lost.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from canaryflow_contracts.events import (
    AnalysisVerdict,
    MetricCheck,
    TargetRef,
    VerdictAction,
    VerdictResult,
)
from canaryflow_contracts.state import ReleaseState, ReleaseStatus

TARGET_LABELS = ("deployment", "target", "canaryflow_target")
MAX_ALERTS = 100
# A fingerprint kept as it is: ends an event id, so short and of a subject token's letters.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,32}")


class AlertRefused(Exception):
    """The notification cannot be acted on; ``status`` is the HTTP answer (4xx)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class FiringAlert:
    name: str
    target: TargetRef
    labels: dict[str, str]
    summary: str
    fingerprint: str


def _target(labels: dict[str, str], name: str) -> TargetRef:
    namespace = labels.get("namespace")
    deployment = next((labels[key] for key in TARGET_LABELS if labels.get(key)), None)
    if not namespace or not deployment:
        raise AlertRefused(
            422,
            f"alert {name!r} carries no target: it needs the labels namespace and "
            f"one of {', '.join(TARGET_LABELS)} (it has {', '.join(sorted(labels)) or 'none'})",
        )
    try:
        return TargetRef(namespace=namespace, name=deployment)
    except ValidationError as error:
        raise AlertRefused(422, f"alert {name!r}: invalid target labels: {error}") from error


def _fingerprint(given: Any, labels: dict[str, str]) -> str:
    """The alert's fingerprint when it is a short token (Alertmanager's are 16 hex digits),
    else 16 hex digits of a hash of it (or of the labels, when there is none).

    It ends the verdict's event id, which is also the Nats-Msg-Id header: a fingerprint of
    300 characters made the id longer than an envelope allows (ValidationError, answered
    500), and one with a space or a line break was sent as a header value (found by
    tests/unit/test_input_properties.py).
    """
    text = str(given or "")
    if _TOKEN.fullmatch(text):
        return text
    seed = text or json.dumps(labels, sort_keys=True)
    return hashlib.sha256(seed.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def parse_alerts(body: Any) -> list[FiringAlert]:
    """The firing alerts of an Alertmanager webhook payload; resolved ones are dropped."""
    if not isinstance(body, dict) or not isinstance(body.get("alerts"), list):
        raise AlertRefused(400, "not an Alertmanager notification: expected an object with alerts")
    raw_alerts: list[Any] = body["alerts"]
    if len(raw_alerts) > MAX_ALERTS:
        raise AlertRefused(
            413, f"{len(raw_alerts)} alerts in one notification; at most {MAX_ALERTS}"
        )
    common: dict[str, Any] = body.get("commonLabels") or {}
    if not isinstance(common, dict):
        common = {}
    firing: list[FiringAlert] = []
    for index, raw in enumerate(raw_alerts):
        if not isinstance(raw, dict) or not isinstance(raw.get("labels", {}), dict):
            raise AlertRefused(400, f"alert {index} is not an object with labels")
        status = raw.get("status", body.get("status"))
        if status not in ("firing", "resolved"):
            raise AlertRefused(
                400, f"alert {index} has status {status!r}; expected firing or resolved"
            )
        if status != "firing":
            continue
        labels = {str(k): str(v) for k, v in {**common, **raw.get("labels", {})}.items()}
        name = labels.get("alertname", f"alert-{index}")
        annotations: dict[str, Any] = raw.get("annotations") or {}
        if not isinstance(annotations, dict):
            annotations = {}
        summary = str(annotations.get("summary") or annotations.get("description") or "")
        fingerprint = _fingerprint(raw.get("fingerprint"), labels)
        firing.append(FiringAlert(name, _target(labels, name), labels, summary, fingerprint))
    return firing


def in_flight(state: ReleaseState | None) -> bool:
    """Whether an alert can still stop this release (not over, not already going back)."""
    return (
        state is not None
        and not state.status.terminal
        and state.status is not ReleaseStatus.ROLLING_BACK
    )


def alert_verdict(alert: FiringAlert, state: ReleaseState) -> tuple[AnalysisVerdict, str]:
    """The failed, final verdict a firing alert means for ``state``'s current step, and its
    event id (one per alert and step: a repeated notification is a duplicate)."""
    step = state.current_step
    reason = f"alert {alert.name} is firing" + (f": {alert.summary}" if alert.summary else "")
    check = MetricCheck(
        metric=f"alert:{alert.name}",
        track="canary",
        query=json.dumps(alert.labels, sort_keys=True),
        value=None,
        threshold=None,
        comparison="n/a",
        sample_size=0,
        passed=False,
        method="alert",
        decision=reason,
    )
    verdict = AnalysisVerdict(
        target=state.target,
        step=step,
        result=VerdictResult.FAIL,
        action=VerdictAction.ROLLBACK,
        final=True,
        reason=reason,
        checks=[check],
    )
    return verdict, f"{state.release_id}.verdict.{step.index}.alert.{alert.fingerprint}"
