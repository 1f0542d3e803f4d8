"""What an engineer sees of releases on the real stack: one trace each, metrics, logs, links.

Given the four services as processes exporting to the stack's Jaeger and scraped by its
Prometheus, when one release is promoted and another rolled back, then each is exactly one
connected trace in Jaeger (read through its query API only), rooted at the request, with the
four services in causal order and the verdicts' evidence on their spans; every log line of a
release carries its trace id; the CLI links to the trace; and each service's metrics are in
Prometheus.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from kubernetes import client

from canaryflow.cli import main as cli
from canaryflow.demo import shop
from canaryflow.demo.launcher import ServiceLauncher
from canaryflow_contracts.events import ReleaseRolledBack, ReleaseSucceeded
from tests.e2e.conftest import Releases
from tests.support import JaegerQuery, PrometheusQuery, StackEnv, wait_until
from tests.support.contract import asyncapi_document_problems
from tests.support.traces import Span, TraceView

pytestmark = pytest.mark.stack

PLANNER, EXECUTOR = "canaryflow-planner", "canaryflow-executor"
WATCHER, ROLLBACK = "canaryflow-metrics-watcher", "canaryflow-rollback"
SERVICES = (PLANNER, EXECUTOR, WATCHER, ROLLBACK)
RELEASE_ID = "canaryflow.release.id"


def _traces_of(jaeger: JaegerQuery, release_id: str) -> dict[str, dict[str, object]]:
    """Every trace in which any service tagged a span with this release, by trace id."""
    found: dict[str, dict[str, object]] = {}
    for service in SERVICES:
        for trace in jaeger.find_traces(service, {RELEASE_ID: release_id}):
            found[str(trace["traceID"])] = trace
    return found


def _settled_trace(jaeger: JaegerQuery, release_id: str, last: str) -> TraceView:
    """The release's trace once its last decision is in and no span waits for its parent."""

    def complete() -> TraceView | None:
        traces = _traces_of(jaeger, release_id)
        if len(traces) != 1:
            return None
        found = jaeger.trace(next(iter(traces)))
        if found is None:
            return None
        view = TraceView(found)
        settled = view.named(last, PLANNER) and not view.missing_parents()
        return view if settled and view.services() == set(SERVICES) else None

    return wait_until(
        complete,
        timeout=60,
        message=f"one complete trace of {release_id} ending with {last!r} in Jaeger",
        interval=1,
    )


def _service_path(trace: TraceView, span: Span) -> list[str]:
    """The services on the way from the root to ``span``, each hop once."""
    path: list[str] = []
    for step in [*reversed(trace.ancestors(span)), span]:
        name = step.service.removeprefix("canaryflow-")
        if not path or path[-1] != name:
            path.append(name)
    return path


def _assert_one_tree(trace: TraceView, release_id: str) -> None:
    assert not trace.missing_parents(), [s.name for s in trace.missing_parents()]
    assert {s.trace_id for s in trace.spans.values()} == {trace.trace_id}
    roots = trace.roots()
    assert [(r.name, r.service) for r in roots] == [(f"release {release_id}", PLANNER)]
    for span in trace.spans.values():
        if span.parent_id is not None:
            parent = trace.spans[span.parent_id]
            assert parent.start_us <= span.start_us, (parent.name, span.name)


def _log_lines(services: ServiceLauncher, release_id: str) -> list[dict[str, object]]:
    lines = []
    for path in services.log_dir.glob("*.log"):
        for raw in path.read_text(errors="replace").splitlines():
            # Every line is JSON: FastStream's own lines included (they were not, once).
            assert raw.startswith("{"), f"{path.name}: not a JSON log line: {raw[:200]!r}"
            entry = json.loads(raw)
            if entry.get("release_id") == release_id:
                lines.append(entry)
    return lines


async def test_each_release_is_one_connected_trace_across_the_four_services(
    as_operator: None,
    *,
    kube: client.ApiClient,
    shop_namespace: str,
    releases: Releases,
    services: ServiceLauncher,
    jaeger: JaegerQuery,
    stack: StackEnv,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shop.deploy(kube, shop_namespace, name="api")
    shop.apply_policy(kube, shop_namespace, shop.quick_policy("api"), name="api")
    good, bad = await asyncio.gather(
        releases.request(shop_namespace, shop.image("v2"), target="web"),
        releases.request(shop_namespace, shop.image("v2-bad", "api"), target="api"),
    )
    good_events, bad_events = await asyncio.gather(releases.events(good), releases.events(bad))
    assert isinstance(good_events[-1].data, ReleaseSucceeded)
    assert isinstance(bad_events[-1].data, ReleaseRolledBack)

    promoted = await asyncio.to_thread(_settled_trace, jaeger, good, "decide promotion.completed")
    rolled_back = await asyncio.to_thread(_settled_trace, jaeger, bad, "decide rollback.completed")

    # Exactly one trace per release, and it is one tree rooted at the request.
    assert promoted.trace_id != rolled_back.trace_id
    for release_id, trace in ((good, promoted), (bad, rolled_back)):
        assert list(_traces_of(jaeger, release_id)) == [trace.trace_id]
        _assert_one_tree(trace, release_id)

    # Causal order: each service's work hangs below the event of the service before it.
    promote = promoted.named("promote", EXECUTOR)
    assert promote, "no promotion span"
    assert _service_path(promoted, promote[0]) == [
        *["planner", "executor", "planner", "metrics-watcher"] * 3,
        "planner",
        "executor",
    ]
    rollback = rolled_back.named("rollback", ROLLBACK)
    assert rollback, "no rollback span"
    assert _service_path(rolled_back, rollback[0]) == [
        "planner",
        "executor",
        "planner",
        "metrics-watcher",
        "rollback",
    ]
    assert rollback[0].tags["canaryflow.seconds_to_restore"] > 0
    assert [s.name for s in promoted.named("apply step", EXECUTOR)] == [
        "apply step 1 (10%)",
        "apply step 2 (30%)",
        "apply step 3 (50%)",
    ]
    # A span per Kubernetes write, in the service that wrote.
    assert promoted.named("k8s POST deployments", EXECUTOR), "the canary's creation"
    assert rolled_back.named("k8s PUT deployments/api", ROLLBACK), "stable's restore"

    # Verdicts carry their decision and evidence.
    final_passes = [
        s for s in promoted.named("verdict pass", WATCHER) if s.tags["canaryflow.verdict.final"]
    ]
    assert len(final_passes) == 3
    failed = rolled_back.named("verdict fail", WATCHER)
    assert failed, "no failing verdict span"
    tags = failed[0].tags
    assert tags["canaryflow.verdict.action"] == "rollback"
    evidence = json.loads(tags["canaryflow.verdict.evidence"])
    assert any(check["passed"] is False for check in evidence), evidence
    assert tags["canaryflow.check.error-rate.canary.passed"] is False
    assert tags["canaryflow.check.error-rate.canary.value"] > 0.05

    # Every log line of a release leads to its trace.
    for release_id, trace in ((good, promoted), (bad, rolled_back)):
        lines = _log_lines(services, release_id)
        assert lines, f"no log line of {release_id}"
        strays = [line for line in lines if line.get("trace_id") != trace.trace_id]
        assert not strays, strays[:3]

    # The CLI links to the trace.
    capsys.readouterr()
    args = ["--nats", stack.nats_url, "--prefix", services.prefix]
    assert await cli.run([*args, "status", "--all"]) == 0
    assert await cli.run([*args, "watch", good]) == 0
    printed = capsys.readouterr().out
    assert f"trace: http://127.0.0.1:16686/trace/{promoted.trace_id}" in printed
    assert f"/trace/{rolled_back.trace_id}" in printed


async def test_each_service_exports_its_metrics_to_prometheus(
    shop_namespace: str,
    releases: Releases,
    services: ServiceLauncher,
    prometheus: PrometheusQuery,
) -> None:
    release_id = await releases.request(shop_namespace, shop.image("v2-bad"))
    events = await releases.events(release_id)
    assert isinstance(events[-1].data, ReleaseRolledBack)
    scope = f'canaryflow_prefix="{services.prefix}"'

    def value(expr: str) -> float | None:
        samples = prometheus.query(expr)
        return max(s.value for s in samples) if samples else None

    def check(expr: str, *, positive: bool = True) -> float:
        """The query's value once it has one (above zero, when ``positive``)."""

        def ready() -> list[float] | None:
            found = value(expr)
            if found is None or (positive and found <= 0):
                return None
            return [found]

        return wait_until(ready, timeout=20, message=expr)[0]

    for service in ("planner", "executor", "metrics_watcher", "rollback"):
        where = f'{scope}, service="{service}"'
        check(f"sum(canaryflow_event_handling_seconds_count{{{where}}})")
        check(f"sum(canaryflow_redeliveries_total{{{where}}})", positive=False)
        check(f"sum(canaryflow_dead_letters_total{{{where}}})", positive=False)
    check(f'max(canaryflow_releases{{{scope}, service="planner", status="rolled_back"}})')
    weight = (
        f'max(max_over_time(canaryflow_canary_weight_percent{{{scope}, service="planner", '
        f'namespace="{shop_namespace}", target="web"}}[5m]))'
    )
    assert check(weight) == pytest.approx(10)
    check(f'sum(canaryflow_phase_seconds_count{{{scope}, service="executor"}})')
    check(f'sum(canaryflow_verdicts_total{{{scope}, service="metrics_watcher", result="fail"}})')
    check(f'sum(canaryflow_restore_seconds_count{{{scope}, service="rollback"}})')
    check(
        f"histogram_quantile(0.9, sum by (le) (canaryflow_restore_seconds_bucket{{{scope}, "
        f'service="rollback"}}))'
    )


def test_each_service_serves_its_asyncapi_document(services: ServiceLauncher) -> None:
    for running in services.running:
        response = httpx.get(
            f"http://127.0.0.1:{running.metrics_port}/asyncapi.json", timeout=5, trust_env=False
        )
        assert response.status_code == 200, running.name
        document = response.json()
        # Read by the official parser: a 3.0.0 document with no error (a 2.x one is refused).
        assert asyncapi_document_problems(document) == [], running.name
        channels = json.dumps(document.get("channels", {}))
        assert services.prefix in channels, (running.name, channels[:200])
