"""What the stack's users read from the cluster: a Service's wish and its ready endpoints."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace as NS
from typing import Any

from prometheus_client import CollectorRegistry

from canaryflow.dataplane.load import (
    DEFAULT_RATE,
    PAGES_ANNOTATION,
    RATE_ANNOTATION,
    Wanted,
    _Collector,
    ready_endpoints,
    wanted,
)
from canaryflow.dataplane.users import Tally


def _service(annotations: dict[str, str] | None) -> Any:
    return NS(metadata=NS(namespace="shop", name="web", annotations=annotations))


def test_a_service_asks_for_users_per_second_and_pages() -> None:
    wish, problems = wanted(_service({RATE_ANNOTATION: "40", PAGES_ANNOTATION: "2"}))
    assert wish == Wanted("shop", "web", 40.0, 2)
    assert problems == []


def test_without_annotations_a_service_gets_the_default_rate_and_one_page_visits() -> None:
    assert wanted(_service(None)) == (Wanted("shop", "web", DEFAULT_RATE, 0), [])


def test_unusable_annotations_fall_back_to_defaults_and_say_why() -> None:
    wish, problems = wanted(_service({RATE_ANNOTATION: "lots", PAGES_ANNOTATION: "-1"}))
    assert (wish.rate, wish.pages) == (DEFAULT_RATE, 0)
    assert problems == [
        f"{RATE_ANNOTATION}: not a number: 'lots'",
        f"{PAGES_ANNOTATION}: outside [0, 20]: '-1'",
    ]


def _endpoint(address: str, ready: bool | None) -> Any:
    return NS(addresses=[address], conditions=None if ready is None else NS(ready=ready))


def test_ready_endpoints_are_those_kube_proxy_would_send_to() -> None:
    slices = [
        NS(
            ports=[NS(port=8080, protocol="TCP")],
            endpoints=[
                _endpoint("10.244.0.5", True),
                _endpoint("10.244.0.6", False),  # not ready: out of the Service
                _endpoint("10.244.0.7", None),  # unset means ready
            ],
        ),
        NS(ports=None, endpoints=[_endpoint("10.244.0.9", True)]),  # no port: nothing to reach
        NS(ports=[NS(port=8080, protocol="TCP")], endpoints=None),
    ]
    assert ready_endpoints(slices) == ["http://10.244.0.5:8080", "http://10.244.0.7:8080"]


def test_what_users_saw_is_exported_per_service_with_the_sessions_on_two_versions() -> None:
    tally = Tally(sessions=Counter({"v1": 9, "v2": 1}), mixed=2, unrouted=1)
    tally.requests[("v2", 200)] = 4
    crowd = NS(users=NS(tally=tally, active=3))
    registry = CollectorRegistry()
    registry.register(_Collector(NS(crowds={"shop/web": crowd})))  # type: ignore[arg-type]
    where = {"namespace": "shop", "service": "web"}

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {**where, **labels})

    assert value("canaryflow_users_sessions_total", version="v2") == 1
    assert value("canaryflow_users_requests_total", version="v2", code="200") == 4
    assert value("canaryflow_users_mixed_sessions_total") == 2
    assert value("canaryflow_users_unrouted_total") == 1
    assert value("canaryflow_users_active") == 3
