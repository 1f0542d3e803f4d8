"""Discovery against an in-memory API that returns the client's own model objects."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import pytest
from kubernetes.client import (
    ApiException,
    V1ConfigMap,
    V1Container,
    V1ObjectMeta,
    V1Pod,
    V1PodCondition,
    V1PodList,
    V1PodSpec,
    V1PodStatus,
    V1Service,
    V1ServiceList,
    V1ServiceSpec,
)
from prometheus_client import CollectorRegistry

from canaryflow.runtime.behaviour import DEFAULT_BEHAVIOUR
from canaryflow.simulator.app import discovery_loop
from canaryflow.simulator.discovery import CoreApi, Discoverer, is_ready, pod_info
from canaryflow.simulator.logs import Log
from canaryflow.simulator.metrics import PrometheusSink
from canaryflow.simulator.model import GroupKey, PodInfo, ServiceKey, Share
from canaryflow.simulator.server import State
from canaryflow.simulator.split import ReadyPodSplit, ServiceSnapshot, split_from_pods

SHOP = ServiceKey("demo", "shop")


def make_pod(
    name: str,
    image: str,
    *,
    labels: dict[str, str] | None = None,
    ready: bool = True,
    deleting: bool = False,
) -> V1Pod:
    return V1Pod(
        metadata=V1ObjectMeta(
            name=name,
            namespace="demo",
            labels={"app": "shop", **(labels or {})},
            deletion_timestamp=datetime(2025, 1, 1, tzinfo=UTC) if deleting else None,
        ),
        spec=V1PodSpec(
            containers=[V1Container(name="app", image=image), V1Container(name="side", image="x:9")]
        ),
        status=V1PodStatus(
            conditions=[
                V1PodCondition(type="PodScheduled", status="True"),
                V1PodCondition(type="Ready", status="True" if ready else "False"),
            ]
        ),
    )


def make_service(
    name: str = "shop", namespace: str = "demo", annotations: dict[str, str] | None = None
) -> V1Service:
    return V1Service(
        metadata=V1ObjectMeta(
            name=name,
            namespace=namespace,
            labels={"canaryflow.io/simulate": "true"},
            annotations=annotations,
        ),
        spec=V1ServiceSpec(selector={"app": name}),
    )


class FakeApi:
    def __init__(self) -> None:
        self.services: list[V1Service] = [make_service()]
        self.pods: dict[str, list[V1Pod]] = {}
        self.configmaps: dict[str, dict[str, str]] = {}
        self.fail_services = False
        self.service_failures = 0
        self.fail_pods = False
        self.fail_configmaps = False
        self.calls: list[str] = []

    def list_service_for_all_namespaces(
        self, *, label_selector: str | None = None, _request_timeout: float | None = None
    ) -> V1ServiceList:
        self.calls.append(f"services {label_selector}")
        if self.fail_services or self.service_failures > 0:
            self.service_failures -= 1
            raise ApiException(status=503, reason="unavailable")
        return V1ServiceList(items=self.services)

    def list_namespaced_pod(
        self,
        namespace: str,
        *,
        label_selector: str | None = None,
        _request_timeout: float | None = None,
    ) -> V1PodList:
        self.calls.append(f"pods {namespace} {label_selector}")
        if self.fail_pods:
            raise ConnectionError("connection refused")
        return V1PodList(items=self.pods.get(f"{namespace}/{label_selector}", []))

    def read_namespaced_config_map(
        self, name: str, namespace: str, *, _request_timeout: float | None = None
    ) -> V1ConfigMap:
        self.calls.append(f"configmap {namespace}/{name}")
        if self.fail_configmaps:
            raise ApiException(status=500, reason="boom")
        if namespace not in self.configmaps:
            raise ApiException(status=404, reason="Not Found")
        return V1ConfigMap(data=self.configmaps[namespace])


@pytest.fixture
def api() -> FakeApi:
    fake = FakeApi()
    fake.pods["demo/app=shop"] = [make_pod(f"shop-v1-{i}", "reg:5000/shop:v1") for i in range(9)]
    fake.pods["demo/app=shop"].append(
        make_pod("shop-v2-0", "reg:5000/shop:v2", labels={"canaryflow.io/track": "canary"})
    )
    return fake


def discoverer() -> Discoverer:
    return Discoverer(ReadyPodSplit(), default_rps=20.0, log=Log("test.simulator"))


def test_pod_info_reads_version_track_and_readiness() -> None:
    pod = make_pod(
        "p", "reg:5000/shop:v2@sha256:" + "a" * 64, labels={"canaryflow.io/track": "canary"}
    )
    assert pod_info(pod) == PodInfo("p", "v2", "canary", True)
    assert pod_info(make_pod("q", "shop")) == PodInfo("q", "latest", "stable", True)
    assert not is_ready(make_pod("r", "shop:v1", ready=False))
    assert not is_ready(make_pod("s", "shop:v1", deleting=True))
    assert not is_ready(V1Pod(metadata=V1ObjectMeta(name="t")))


def test_split_counts_only_ready_pods() -> None:
    shares = split_from_pods(
        [
            PodInfo("a", "v1", "stable", True),
            PodInfo("b", "v1", "stable", True),
            PodInfo("c", "v1", "stable", False),
            PodInfo("d", "v2", "canary", True),
            PodInfo("e", "v3", "canary", False),
        ]
    )
    assert shares == (
        Share(GroupKey("v1", "stable"), 2, 2 / 3),
        Share(GroupKey("v2", "canary"), 1, 1 / 3),
    )
    assert split_from_pods([PodInfo("x", "v1", "stable", False)]) == ()


def test_split_groups_by_version_and_track_stable_first() -> None:
    shares = split_from_pods(
        [
            PodInfo("a", "v2", "canary", True),
            PodInfo("b", "v1", "stable", True),
            PodInfo("c", "v2", "stable", True),
            PodInfo("d", "v1", "baseline", True),
        ]
    )
    assert [s.group for s in shares] == [
        GroupKey("v1", "stable"),
        GroupKey("v2", "stable"),
        GroupKey("v1", "baseline"),
        GroupKey("v2", "canary"),
    ]
    assert sum(s.weight for s in shares) == pytest.approx(1.0)


def test_the_split_source_is_pluggable() -> None:
    class EvenSplit:
        def split(self, snapshot: ServiceSnapshot) -> tuple[Share, ...]:
            groups = sorted({GroupKey(p.version, p.track) for p in snapshot.pods})
            return tuple(Share(g, 0, 1 / len(groups)) for g in groups)

    fake = FakeApi()
    fake.pods["demo/app=shop"] = [
        make_pod("a", "s:v1"),
        make_pod("b", "s:v1"),
        make_pod("c", "s:v2"),
    ]
    targets = Discoverer(EvenSplit(), 20.0, Log("test.simulator")).discover(fake)
    assert [r.share.weight for r in targets[SHOP].routes] == [0.5, 0.5]


def test_discovery_builds_targets_with_few_calls(api: FakeApi) -> None:
    api.configmaps["demo"] = {"v2": '{"error_rate": 0.3}'}
    targets = discoverer().discover(api)
    assert api.calls == [
        "services canaryflow.io/simulate=true",
        "configmap demo/canaryflow-simulator",
        "pods demo app=shop",
    ]
    shop = targets[SHOP]
    assert shop.rps == 20.0
    assert [(r.group, r.share.pods) for r in shop.routes] == [
        (GroupKey("v1", "stable"), 9),
        (GroupKey("v2", "canary"), 1),
    ]
    assert shop.routes[1].share.weight == pytest.approx(0.1)
    assert shop.routes[0].behaviour == DEFAULT_BEHAVIOUR
    assert shop.routes[1].behaviour.error_rate == 0.3


def test_rps_annotation_and_cap(api: FakeApi) -> None:
    api.services = [make_service(annotations={"canaryflow.io/simulate-rps": "7.5"})]
    assert discoverer().discover(api)[SHOP].rps == 7.5
    api.services = [make_service(annotations={"canaryflow.io/simulate-rps": "1e9"})]
    assert discoverer().discover(api)[SHOP].rps == 5000.0


def test_bad_behaviour_json_is_logged_once_with_namespace_and_key(
    api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    api.configmaps["demo"] = {"v2": "{broken"}
    found = discoverer()
    with caplog.at_level(logging.WARNING, logger="test.simulator"):
        for _ in range(3):
            targets = found.discover(api)
    warnings = [r for r in caplog.records if "bad behaviour" in r.getMessage()]
    assert len(warnings) == 1
    fields = warnings[0].fields  # type: ignore[attr-defined]
    assert fields["namespace"] == "demo"
    assert fields["data_key"] == "v2"
    assert targets[SHOP].routes[1].behaviour == DEFAULT_BEHAVIOUR


def test_service_without_selector_gets_no_routes(api: FakeApi) -> None:
    api.services = [make_service()]
    api.services[0].spec = V1ServiceSpec(selector=None)
    targets = discoverer().discover(api)
    assert targets[SHOP].routes == ()
    assert not any(call.startswith("pods") for call in api.calls)


def test_failures_keep_the_last_known_state(api: FakeApi) -> None:
    api.configmaps["demo"] = {"v2": '{"error_rate": 0.3}'}
    found = discoverer()
    first = found.discover(api)

    api.fail_pods = True
    api.fail_configmaps = True
    assert found.discover(api) == first

    api.fail_services = True
    with pytest.raises(ApiException):
        found.discover(api)

    api.fail_services = api.fail_pods = api.fail_configmaps = False
    api.services = []
    assert found.discover(api) == {}


def test_a_missing_configmap_means_defaults(api: FakeApi) -> None:
    targets = discoverer().discover(api)
    assert {r.behaviour for r in targets[SHOP].routes} == {DEFAULT_BEHAVIOUR}


def test_services_in_several_namespaces(api: FakeApi) -> None:
    api.services.append(make_service("cart", "other"))
    api.pods["other/app=cart"] = [make_pod("cart-0", "cart:v7")]
    targets = discoverer().discover(api)
    assert set(targets) == {SHOP, ServiceKey("other", "cart")}
    assert targets[ServiceKey("other", "cart")].routes[0].group == GroupKey("v7", "stable")


async def test_the_loop_survives_errors_and_becomes_healthy(api: FakeApi) -> None:
    builds = 0

    def make_api() -> CoreApi:
        nonlocal builds
        builds += 1
        if builds <= 2:
            raise FileNotFoundError("kubeconfig not written yet")
        return api

    api.service_failures = 1
    state = State()
    registry = CollectorRegistry()
    stop = asyncio.Event()
    loop = discovery_loop(
        make_api, discoverer(), state, PrometheusSink(registry), refresh_s=0.01, stop=stop
    )
    task = asyncio.create_task(loop)
    for _ in range(500):
        if state.discovered:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert state.discovered
    assert SHOP in state.targets
    # Two failed builds, one failed list; each failure rebuilds the client.
    assert builds == 4
    assert registry.get_sample_value("simulator_discovery_errors_total") == 3
