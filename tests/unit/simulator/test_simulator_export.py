"""What Prometheus, the stack and a person debugging see: metrics, endpoints, logs, resilience."""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from canaryflow.runtime.behaviour import DEFAULT_BEHAVIOUR
from canaryflow.simulator.app import describe_error, parse_args
from canaryflow.simulator.logs import JsonFormatter
from canaryflow.simulator.metrics import PrometheusSink
from canaryflow.simulator.model import GroupKey, Route, ServiceKey, Share, Target
from canaryflow.simulator.server import SimulatorServer, State, parse_listen
from canaryflow.simulator.traffic import Outcome

SHOP = ServiceKey("demo", "shop")
V1 = GroupKey("v1", "stable")
V2 = GroupKey("v2", "canary")
LABELS = {"namespace": "demo", "service": "shop", "version": "v2", "track": "canary"}


def shop(*groups: GroupKey) -> Target:
    routes = tuple(Route(Share(g, 1, 1 / len(groups)), DEFAULT_BEHAVIOUR) for g in groups)
    return Target(SHOP, 20.0, routes)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_series_exist_from_the_start_and_count_requests() -> None:
    registry = CollectorRegistry()
    sink = PrometheusSink(registry)
    sink.sync([shop(V1, V2)], now=0.0)
    assert value(registry, "http_requests_total", **LABELS, code="500") == 0.0
    assert value(registry, "shop_purchases_total", **LABELS) == 0.0

    sink.record(SHOP, V2, Outcome("500", 0.12, purchased=False))
    sink.record(SHOP, V2, Outcome("200", 0.03, purchased=True))
    assert value(registry, "http_requests_total", **LABELS, code="500") == 1.0
    assert value(registry, "http_requests_total", **LABELS, code="200") == 1.0
    assert value(registry, "shop_visits_total", **LABELS) == 2.0
    assert value(registry, "shop_purchases_total", **LABELS) == 1.0
    assert value(registry, "http_request_duration_seconds_count", **LABELS) == 2.0
    assert value(registry, "http_request_duration_seconds_bucket", **LABELS, le="0.05") == 1.0
    assert value(registry, "http_request_duration_seconds_bucket", **LABELS, le="0.15") == 2.0
    assert value(registry, "http_request_duration_seconds_sum", **LABELS) == pytest.approx(0.15)

    sink.unrouted(SHOP, 4)
    assert (
        value(registry, "simulator_unrouted_requests_total", namespace="demo", service="shop") == 4
    )


def test_series_of_gone_groups_are_dropped_after_the_retention() -> None:
    registry = CollectorRegistry()
    sink = PrometheusSink(registry, retention_s=60.0)
    sink.sync([shop(V1, V2)], now=0.0)
    sink.record(SHOP, V2, Outcome("503", 0.1, purchased=False))
    sink.unrouted(SHOP, 1)
    sink.sync([shop(V1)], now=30.0)
    assert value(registry, "shop_visits_total", **LABELS) == 1.0
    sink.sync([shop(V1)], now=91.0)
    assert value(registry, "shop_visits_total", **LABELS) is None
    assert value(registry, "http_requests_total", **LABELS, code="503") is None
    assert value(registry, "http_request_duration_seconds_count", **LABELS) is None
    v1 = {**LABELS, "version": "v1", "track": "stable"}
    assert value(registry, "shop_visits_total", **v1) == 0.0
    assert (
        value(registry, "simulator_unrouted_requests_total", namespace="demo", service="shop") == 1
    )
    sink.sync([], now=200.0)
    assert value(registry, "shop_visits_total", **v1) is None
    assert (
        value(registry, "simulator_unrouted_requests_total", namespace="demo", service="shop")
        is None
    )


@pytest.fixture
def served() -> Iterator[tuple[str, State, CollectorRegistry]]:
    registry = CollectorRegistry()
    PrometheusSink(registry).sync([shop(V1, V2)], now=0.0)
    state = State()
    server = SimulatorServer(("127.0.0.1", 0), registry, state)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state, registry
    finally:
        server.shutdown()
        server.server_close()


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def test_endpoints(served: tuple[str, State, CollectorRegistry]) -> None:
    base, state, _ = served
    assert get(f"{base}/healthz")[0] == 503
    state.publish({SHOP: shop(V1, V2)})
    assert get(f"{base}/healthz")[0] == 200

    status, content_type, body = get(f"{base}/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    labels = 'code="500",namespace="demo",service="shop",track="canary",version="v2"'
    assert f"http_requests_total{{{labels}}} 0.0" in body

    status, content_type, body = get(f"{base}/split")
    assert (status, content_type) == (200, "application/json")
    split = json.loads(body)
    assert split["discovered"] is True
    (service,) = split["services"]
    assert (service["namespace"], service["service"], service["ready_pods"]) == ("demo", "shop", 2)
    assert [(g["version"], g["track"], g["share"]) for g in service["groups"]] == [
        ("v1", "stable", 0.5),
        ("v2", "canary", 0.5),
    ]
    assert service["groups"][0]["behaviour"]["latency_ms"]["median"] == pytest.approx(50)

    assert get(f"{base}/nope")[0] == 404


def test_listen_address_parsing() -> None:
    assert parse_listen("127.0.0.1:19464") == ("127.0.0.1", 19464)
    assert parse_listen("[::1]:9") == ("::1", 9)
    assert parse_listen(":80") == ("127.0.0.1", 80)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen("localhost")


def test_command_line_defaults_and_validation() -> None:
    args = parse_args(["--kubeconfig", "/tmp/kc"])
    assert (args.listen, args.default_rps, args.refresh) == ("127.0.0.1:19464", 20.0, 1.0)
    assert args.sticky_users == 0
    with pytest.raises(SystemExit):
        parse_args(["--refresh", "0"])


def test_log_lines_are_json_objects_with_fields() -> None:
    record = logging.LogRecord(
        "canaryflow.simulator", logging.WARNING, __file__, 1, "bad %s", ("x",), None
    )
    record.fields = {"namespace": "demo", "key": "v2"}
    line = json.loads(JsonFormatter().format(record))
    assert set(line) == {"time", "level", "msg", "fields"}
    assert line["level"] == "warning"
    assert line["msg"] == "bad x"
    assert line["fields"] == {"namespace": "demo", "key": "v2"}
    assert line["time"].endswith("Z")


def test_error_descriptions_are_stable() -> None:
    class Boom(Exception):
        pass

    first = describe_error(Boom(f"pool {object()!r}"))
    second = describe_error(Boom(f"pool {object()!r}"))
    assert first == second
    assert "0x" not in first
