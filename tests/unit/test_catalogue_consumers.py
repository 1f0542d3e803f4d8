"""The contract's catalogue is the one statement of who consumes what: each service's durable
consumers are checked against it (issue 18: it was written in three places)."""

from __future__ import annotations

from typing import Any, get_args

import pytest
from kubernetes.client import ApiClient

from canaryflow.executor.app import ConsumedEvent as ExecutorEvent
from canaryflow.executor.app import build_service as executor
from canaryflow.executor.notify import NOTIFIED
from canaryflow.executor.notify.base import NotifiedEvent
from canaryflow.metrics_watcher.app import ConsumedEvent as MetricsWatcherEvent
from canaryflow.metrics_watcher.app import build_service as metrics_watcher
from canaryflow.planner.app import FOLLOWED, ReleaseRequestPayload
from canaryflow.planner.app import build_service as planner
from canaryflow.planner.groups import GroupEvent
from canaryflow.planner.machine import DecidedEvent, FollowedEvent
from canaryflow.rollback.app import TRIGGERS
from canaryflow.rollback.app import build_service as rollback
from canaryflow.rollback.triggers import RollbackTrigger
from canaryflow.runtime.service import Service
from canaryflow.runtime.settings import Settings
from canaryflow_contracts import EventData
from canaryflow_contracts.events import CATALOGUE, ReleaseRequested


def _settings(service: str) -> Settings:
    return Settings(service=service, nats_url="nats://127.0.0.1:1", prefix="catalogue")


def _built(name: str) -> Service:
    """The service as its entry point composes it (nothing connects before ``start``)."""
    settings = _settings(name)
    if name == "planner":
        return planner(settings)
    if name == "executor":
        return executor(settings, api=ApiClient())
    if name == "rollback":
        return rollback(settings, api=ApiClient())
    return metrics_watcher(settings)


@pytest.mark.parametrize("name", ["planner", "executor", "metrics-watcher", "rollback"])
def test_each_service_consumes_exactly_what_the_catalogue_says(name: str) -> None:
    consumed: set[type[EventData]] = {
        ReleaseRequested if event is ReleaseRequestPayload else event
        for event in _built(name).consumes
    }
    catalogued = {entry.event for entry in CATALOGUE if name in entry.consumers}
    assert sorted(e.event_type() for e in consumed) == sorted(e.event_type() for e in catalogued)


def test_the_planner_follows_exactly_the_events_its_state_machine_handles() -> None:
    """``FOLLOWED`` (its consumers) and ``FollowedEvent`` (what ``_transition`` must handle,
    exhaustively: mypy's ``assert_never``) name the same events."""
    followed = {event.event_type() for event, _ in FOLLOWED}
    assert followed == {event.event_type() for event in get_args(FollowedEvent)}


# Each service's union of the events its handlers take (what its dispatch must handle: a
# match with assert_never where one handler takes several).
HANDLED: dict[str, Any] = {
    "planner": DecidedEvent | GroupEvent,
    "executor": ExecutorEvent,
    "metrics-watcher": MetricsWatcherEvent,
    "rollback": RollbackTrigger,
}


def _types(events: Any) -> list[str]:
    members = get_args(events) or (events,)
    return sorted(event.event_type() for event in members)


@pytest.mark.parametrize("name", sorted(HANDLED))
def test_each_service_handler_table_is_its_union_and_the_catalogue(name: str) -> None:
    """The table the service is wired from (``Service.route``), the union its dispatch is
    proved exhaustive over, and the catalogue's consumers of it name the same events."""
    table = _built(name).routes
    routed = {
        ReleaseRequested if row.event is ReleaseRequestPayload else row.event for row in table
    }
    catalogued = {entry.event for entry in CATALOGUE if name in entry.consumers}
    assert sorted(e.event_type() for e in routed) == sorted(e.event_type() for e in catalogued)
    assert sorted(e.event_type() for e in routed) == _types(HANDLED[name])
    assert len({row.name for row in table}) == len(table)  # one durable consumer per row


def test_the_rollback_consumes_exactly_its_triggers() -> None:
    """``TRIGGERS`` (its consumers) and ``RollbackTrigger`` (what ``reason_of`` must word,
    exhaustively) name the same events."""
    assert sorted(event.event_type() for event, _ in TRIGGERS) == _types(RollbackTrigger)


def test_the_executor_notifies_of_exactly_the_events_notification_for_handles() -> None:
    """``NOTIFIED`` (its notification consumers) and ``NotifiedEvent`` (what
    ``notification_for`` must handle, exhaustively) name the same events."""
    assert sorted(event.event_type() for event, _ in NOTIFIED) == _types(NotifiedEvent)
