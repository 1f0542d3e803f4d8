"""Each server of the local stack is real: these tests fail against anything less.

- Kubernetes + KWOK: a Deployment gets a ReplicaSet and Ready pods on the fake nodes; the
  KWOK stages make ``*-never-ready`` pods stay unready and ``*-crashloop`` pods crash-loop.
- the traffic simulator + Prometheus: per-version request rates follow the Ready pods, and
  a /metrics endpoint registered through the file_sd folder is scraped.
- Jaeger: a span sent over OTLP/HTTP is read back through the query API.
- NATS: a JetStream stream and its messages survive a restart of the server.
- the API server's RBAC: a narrow-role token is refused a write outside its role.
"""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import socket
import uuid
from typing import Any

import httpx
import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from nats.aio.client import Client as NatsClient
from nats.js.api import StorageType, StreamConfig
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from tests.support import (
    JaegerQuery,
    PrometheusQuery,
    StackEnv,
    async_wait_until,
    client_with_token,
    narrow_token,
    wait_until,
)
from tests.support.wait import WaitTimeout

from canaryflow_stack import netns
from canaryflow_stack import stack as stack_manager
from canaryflow_stack.config import Settings
from canaryflow_stack.procs import PidRecord

pytestmark = pytest.mark.stack


def _deployment(
    name: str, image: str, replicas: int, labels: dict[str, str]
) -> client.V1Deployment:
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="app", image=image)]),
            ),
        ),
    )


def _pod(name: str, image: str) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"app": name}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="app", image=image)]),
    )


def _is_ready(pod: Any) -> bool:
    conditions = pod.status.conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def _ready_replicas(apps: client.AppsV1Api, namespace: str, name: str) -> int:
    return int(apps.read_namespaced_deployment(name, namespace).status.ready_replicas or 0)


@pytest.mark.usefixtures("local_cluster")
def test_deployment_pods_become_ready(kube: client.ApiClient, namespace: str) -> None:
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    apps.create_namespaced_deployment(
        namespace, _deployment("web", "registry.example/web:v1", 3, {"app": "web"})
    )

    wait_until(
        lambda: _ready_replicas(apps, namespace, "web") == 3,
        timeout=60,
        message="deployment web to have 3 Ready replicas",
    )

    replica_sets = apps.list_namespaced_replica_set(namespace, label_selector="app=web").items
    assert len(replica_sets) == 1
    assert replica_sets[0].status.ready_replicas == 3
    fake_nodes = {
        n.metadata.name
        for n in core.list_node().items
        if (n.metadata.annotations or {}).get("kwok.x-k8s.io/node") == "fake"
    }
    pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
    assert len(pods) == 3
    for pod in pods:
        assert pod.status.phase == "Running"
        assert _is_ready(pod)
        assert pod.spec.node_name in fake_nodes, "scheduled by kube-scheduler onto a KWOK node"
        assert pod.status.pod_ip
        assert pod.metadata.owner_references[0].name == replica_sets[0].metadata.name


@pytest.mark.usefixtures("local_cluster")
def test_kwok_stages_make_chosen_images_misbehave(kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    for name, image in [
        ("healthy", "registry.example/shop:v1"),
        ("stuck", "registry.example/shop:v2-never-ready"),
        ("crashing", "registry.example/shop:v3-crashloop"),
    ]:
        core.create_namespaced_pod(namespace, _pod(name, image))

    def read(name: str) -> Any:
        return core.read_namespaced_pod(name, namespace)

    def faults_hold() -> None:
        assert not _is_ready(read("stuck")), "a -never-ready pod became Ready"
        assert not _is_ready(read("crashing")), "a -crashloop pod became Ready"

    wait_until(lambda: _is_ready(read("healthy")), timeout=30, message="pod healthy to be Ready")

    def stuck_running() -> bool:
        faults_hold()
        pod = read("stuck")
        statuses = pod.status.container_statuses or []
        return pod.status.phase == "Running" and bool(statuses) and statuses[0].state.running

    wait_until(stuck_running, timeout=30, message="pod stuck to be Running (but not Ready)")

    def crash_restarts() -> int:
        faults_hold()
        statuses = read("crashing").status.container_statuses or []
        if not statuses or statuses[0].state.waiting is None:
            return 0
        assert statuses[0].state.waiting.reason == "CrashLoopBackOff"
        assert statuses[0].ready is False
        return int(statuses[0].restart_count)

    first = wait_until(crash_restarts, timeout=30, message="pod crashing to be in CrashLoopBackOff")
    later = wait_until(
        lambda: (n := crash_restarts()) >= first + 2 and n,
        timeout=30,
        message=f"the restartCount of pod crashing to grow past {first + 1}",
    )
    assert later > first
    # Still the same verdicts after the crash loop has gone round a few times.
    faults_hold()
    assert read("stuck").status.phase == "Running"


@pytest.mark.usefixtures("local_cluster")
def test_simulator_rates_follow_ready_pods(
    kube: client.ApiClient, namespace: str, prometheus: PrometheusQuery
) -> None:
    if importlib.util.find_spec("canaryflow.simulator") is None:
        pytest.skip("the traffic simulator (canaryflow.simulator) does not exist yet")
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    for track, image, replicas in [("stable", "shop:v1", 9), ("canary", "shop:v2", 1)]:
        labels = {"app": "shop", "canaryflow.io/track": track}
        apps.create_namespaced_deployment(
            namespace, _deployment(f"shop-{track}", f"registry.example/{image}", replicas, labels)
        )
    core.create_namespaced_service(
        namespace,
        client.V1Service(
            metadata=client.V1ObjectMeta(
                name="shop",
                labels={"canaryflow.io/simulate": "true"},
                annotations={"canaryflow.io/simulate-rps": "200"},
            ),
            spec=client.V1ServiceSpec(
                selector={"app": "shop"}, ports=[client.V1ServicePort(port=80)]
            ),
        ),
    )
    wait_until(
        lambda: (
            _ready_replicas(apps, namespace, "shop-stable") == 9
            and _ready_replicas(apps, namespace, "shop-canary") == 1
        ),
        timeout=60,
        message="9 stable and 1 canary Ready pods",
    )

    selector = f'namespace="{namespace}",service="shop"'
    rate = f"sum by (version, track) (rate(http_requests_total{{{selector}}}[5s]))"
    seen: list[dict[str, float]] = []
    shares: list[float] = []

    def three_steady_readings() -> list[float] | None:
        """Each reading's canary share once both versions serve at the full rate; whatever
        the share is, it is kept (the assertion below judges it, not the wait)."""
        samples = prometheus.query(rate)
        by_version = {s.labels["version"]: s.value for s in samples}
        tracks = {s.labels["version"]: s.labels["track"] for s in samples}
        seen.append(by_version)
        total = sum(by_version.values())
        if set(by_version) != {"v1", "v2"} or total < 150:  # not at steady state yet
            return None
        assert tracks == {"v1": "stable", "v2": "canary"}
        shares.append(by_version["v2"] / total)
        return shares[-3:] if len(shares) >= 3 else None

    try:
        readings = wait_until(
            three_steady_readings,
            timeout=60,
            interval=2,
            message="three readings with both versions at the full rate",
        )
    except WaitTimeout as exc:
        pytest.fail(f"{exc}; last per-version rates: {seen[-5:]}")
    # 1 of 10 Ready pods: the canary's share is 10 %, within Poisson noise of a 5 s rate.
    assert sorted(readings)[1] == pytest.approx(0.10, abs=0.04), (readings, seen[-3:])


def test_prometheus_scrapes_a_registered_metrics_endpoint(prometheus: PrometheusQuery) -> None:
    registry = CollectorRegistry()
    marker = uuid.uuid4().hex[:8]
    Gauge("stack_test_marker", "Set by the stack test.", ["marker"], registry=registry).labels(
        marker
    ).set(42)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    address = f"127.0.0.1:{server.server_port}"
    job = f"stack-test-{marker}"
    target_file = prometheus.register_target(job, address, {"job": job})
    try:
        samples = wait_until(
            lambda: prometheus.query(f'stack_test_marker{{job="{job}"}}'),
            timeout=30,
            message=f"Prometheus to scrape {address} registered through {target_file.name}",
        )
        assert [(s.labels["marker"], s.labels["instance"], s.value) for s in samples] == [
            (marker, address, 42.0)
        ]
    finally:
        target_file.unlink()
        server.shutdown()
        thread.join(timeout=5)


def test_span_sent_over_otlp_is_found_in_jaeger(stack: StackEnv, jaeger: JaegerQuery) -> None:
    service = f"stack-test-{uuid.uuid4().hex[:8]}"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPSpanExporter(endpoint=f"{stack.otlp_http_endpoint}/v1/traces", timeout=5)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("canaryflow.tests")
    with (
        tracer.start_as_current_span("stack-probe", attributes={"canaryflow.probe": "jaeger"}),
        tracer.start_as_current_span("stack-probe-child") as child,
    ):
        trace_id = format(child.get_span_context().trace_id, "032x")
    assert provider.force_flush(5000)
    provider.shutdown()

    def both_spans() -> dict[str, Any] | None:
        # Each span is its own POST (the child's first): Jaeger may show the trace in between.
        found = jaeger.trace(trace_id)
        return found if found is not None and len(found["spans"]) >= 2 else None

    trace = wait_until(both_spans, timeout=30, message=f"both spans of trace {trace_id} in Jaeger")

    spans = {span["operationName"]: span for span in trace["spans"]}
    assert set(spans) == {"stack-probe", "stack-probe-child"}
    root = spans["stack-probe"]
    assert JaegerQuery.service_of(trace, root) == service
    assert {"key": "canaryflow.probe", "type": "string", "value": "jaeger"} in root["tags"]
    parent_refs = [r["spanID"] for r in spans["stack-probe-child"]["references"]]
    assert parent_refs == [root["spanID"]]
    assert service in jaeger.services()


async def test_jetstream_stream_survives_nats_restart(
    nats_client: NatsClient, stream_prefix: str, stack_settings: Settings
) -> None:
    js = nats_client.jetstream()
    stream = f"{stream_prefix}_events"
    await js.add_stream(
        StreamConfig(name=stream, subjects=[f"{stream_prefix}.>"], storage=StorageType.FILE)
    )
    sent = [(f"{stream_prefix}.release.{i}", f"event {i}".encode()) for i in range(5)]
    for i, (subject, payload) in enumerate(sent, start=1):
        ack = await js.publish(subject, payload)
        assert (ack.stream, ack.seq) == (stream, i)

    pidfile = stack_manager.pidfile(stack_settings, "nats")
    before = PidRecord.load(pidfile)
    await asyncio.to_thread(stack_manager.restart, stack_settings, "nats")
    after = PidRecord.load(pidfile)
    assert before is not None and after is not None
    assert after.pid != before.pid, "nats-server was really restarted"

    async def stream_back() -> int | None:
        if not nats_client.is_connected:
            return None
        info = await js.stream_info(stream)
        return info.state.messages or None

    count = await async_wait_until(
        stream_back, timeout=30, message=f"stream {stream} after the restart"
    )
    assert count == len(sent)
    for seq, (subject, payload) in enumerate(sent, start=1):
        msg = await js.get_msg(stream, seq)
        assert (msg.subject, msg.data) == (subject, payload)
    await js.delete_stream(stream)


def test_narrow_role_token_is_refused_out_of_scope_writes(
    kube: client.ApiClient, namespace: str
) -> None:
    rules = [
        client.V1PolicyRule(
            api_groups=[""], resources=["configmaps"], verbs=["get", "list", "create"]
        )
    ]
    token = narrow_token(kube, namespace, "configmap-writer", rules)
    narrow = client_with_token(kube, token)
    core = client.CoreV1Api(narrow)

    review = client.AuthenticationV1Api(narrow).create_self_subject_review(
        client.V1SelfSubjectReview()
    )
    expected_user = f"system:serviceaccount:{namespace}:configmap-writer"
    assert review.status.user_info.username == expected_user

    created = core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="allowed"), data={"k": "v"}),
    )
    assert created.metadata.name == "allowed"

    with pytest.raises(ApiException) as wrong_kind:
        core.create_namespaced_secret(
            namespace,
            client.V1Secret(metadata=client.V1ObjectMeta(name="denied"), string_data={"k": "v"}),
        )
    assert wrong_kind.value.status == 403
    with pytest.raises(ApiException) as wrong_namespace:
        core.create_namespaced_config_map(
            "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"denied-{namespace}"))
        )
    assert wrong_namespace.value.status == 403

    admin = client.CoreV1Api(kube)
    assert "denied" not in {s.metadata.name for s in admin.list_namespaced_secret(namespace).items}
    narrow.close()


@pytest.mark.usefixtures("local_cluster")
def test_the_release_policy_crd_is_installed_the_way_up_installs_it(
    stack_settings: Settings, kube: client.ApiClient
) -> None:
    # What `up` does after the servers are healthy; again on an installed CRD, it converges.
    done = stack_manager._install_crd(stack_settings)
    assert done in ("created", "updated")
    again = stack_manager._install_crd(stack_settings)
    assert again == "updated"
    crd = client.ApiextensionsV1Api(kube).read_custom_resource_definition(
        "releasepolicies.canaryflow.io"
    )
    established = {c.type: c.status for c in crd.status.conditions}
    assert established.get("Established") == "True"
    # The kind is served: a ReleasePolicy can be listed in any namespace.
    listed = client.CustomObjectsApi(kube).list_cluster_custom_object(
        "canaryflow.io", "v1alpha1", "releasepolicies"
    )
    assert listed["kind"] == "ReleasePolicyList"


def _bind_error(address: str) -> int | None:
    """errno of binding ``address`` in the calling thread's namespace (no packet is sent)."""
    with socket.socket() as sock:
        try:
            sock.bind((address, 0))
        except OSError as exc:
            return exc.errno
    return None


def test_pod_addresses_are_local_only_in_the_stack_namespace(
    stack: StackEnv, stack_settings: Settings
) -> None:
    """The rule: 10.244.x.y exists inside the stack's namespace and nowhere on the machine."""
    assert stack_manager.inside(stack_settings), "tests run inside the stack's namespace"
    assert _bind_error("10.244.200.7") is None
    assert netns.on_host(lambda: _bind_error("10.244.200.7")) == errno.EADDRNOTAVAIL


def test_forwarded_ports_reach_the_servers_from_the_machine(
    stack: StackEnv, stack_settings: Settings
) -> None:
    """NATS's monitoring, Prometheus and the API server answer on the machine's 127.0.0.1.

    Only a cluster the stack runs has its API server forwarded; the others always are.
    """
    if not stack.is_local_cluster:
        pytest.skip("the API server is the user's own")
    ports = stack_settings.ports

    def from_machine() -> list[int]:
        with httpx.Client(trust_env=False, timeout=5, verify=False) as http:
            return [
                http.get(f"http://127.0.0.1:{ports.nats_monitor}/healthz").status_code,
                http.get(f"http://127.0.0.1:{ports.prometheus}/-/ready").status_code,
                # /version is public: the API server itself answers through the forwarder.
                http.get(f"https://127.0.0.1:{ports.apiserver}/version").status_code,
            ]

    assert netns.on_host(from_machine) == [200, 200, 200]
