"""The Helm chart installs on the real API server, and canaryflow works with what it gives.

Given the chart (deploy/helm/canaryflow) installed with the stack's Helm 4 into the stack's
cluster, when the four services run as processes with exactly the environment of their
rendered Deployments and a token of their own ServiceAccount (TokenRequest API), then a
release is promoted and another is rolled back, the API server's audit log shows every rule
of the chart in use, and each service is refused what it must not do. Pods of the chart's
Deployments exist too (KWOK runs them without a container), so the Deployments, PDBs and the
alert Service are real objects the API server accepted; the work is done by the processes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from nats.aio.client import Client as NatsClient

from canaryflow.demo import shop
from canaryflow.demo.launcher import ServiceLauncher, delete_jetstream_state
from canaryflow.runtime import bundle as bundles
from canaryflow.runtime.settings import nats_servers
from canaryflow_contracts import Subjects
from canaryflow_contracts.events import (
    AbortRelease,
    ConfigMapChange,
    PhaseReached,
    ReleaseRequested,
    ReleaseRolledBack,
    ReleaseSucceeded,
    RollbackCompleted,
    TargetRef,
    VersionSpec,
)
from tests.e2e.conftest import Releases, launcher_for
from tests.e2e.test_operations import (
    canaryflow_leftovers,
    live_pods,
    wait_rolled_out,
)
from tests.support import StackEnv, chart, client_with_token, kubeconfig_with_token, wait_until

pytestmark = pytest.mark.stack

NAMESPACE_PREFIX = "canaryflow-helm"
NATS_CA_SECRET = "nats-ca"
NKEYS_SECRET = "canaryflow-nats-nkeys"


@dataclass
class Installed:
    release: str
    namespace: str
    output: str
    deployments: dict[str, dict[str, Any]]  # component -> the Deployment as the API serves it
    tokens: dict[str, str]  # component -> a token of its ServiceAccount
    launcher: ServiceLauncher

    def username(self, component: str) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.release}-{component}"


def chart_values(stack: StackEnv, prefix: str) -> dict[str, Any]:
    """The values an operator of this stack would give: where NATS, Prometheus and the OTLP
    collector are, this run's subject prefix, and one replica each (two cores here)."""
    return {
        "prefix": prefix,
        "nats": {
            "urls": stack.nats_url.split(","),
            "streamReplicas": stack.stream_replicas,
            # The defaults: TLS verified with the CA in NATS_CA_SECRET, each service's own NKey
            # from NKEYS_SECRET (nats_secrets makes both from the stack's).
            "tls": {"enabled": True, "caSecretName": NATS_CA_SECRET},
            "auth": "nkey",
            "nkeys": {"secretName": NKEYS_SECRET},
        },
        "prometheus": {"url": stack.prometheus_url},
        "otel": {"endpoint": stack.otlp_http_endpoint},
        "planner": {"replicas": 1, "reconcileSeconds": 2},
        "executor": {"replicas": 1},
        "metricsWatcher": {"replicas": 1},
        "rollback": {"replicas": 1},
    }


def service_account_token(kube: client.ApiClient, namespace: str, name: str) -> str:
    """A token of the ServiceAccount from the TokenRequest API, as the kubelet would mount."""
    request_body = {"spec": {"expirationSeconds": 3600}}
    answer = client.CoreV1Api(kube).create_namespaced_service_account_token(
        name, namespace, request_body
    )
    token: str = answer.status.token
    return token


def nats_secrets(kube: client.ApiClient, namespace: str, stack: StackEnv) -> None:
    """What a platform team creates before installing: the NATS CA and one NKey seed per
    service (here the stack's; its NATS server lists their public keys)."""
    core = client.CoreV1Api(kube)
    core.create_namespace({"metadata": {"name": namespace}})
    identities = stack.endpoints.nats_identities
    assert identities is not None, "the stack's env.json names no NATS identities"
    seeds = {
        f"{component}.nk": (identities / f"{component}.nk").read_bytes()
        for component, _ in chart.SERVICES.values()
    }
    ca = Path(stack.nats_access().tls_ca or "").read_bytes()
    for name, data in ((NATS_CA_SECRET, {"ca.crt": ca}), (NKEYS_SECRET, seeds)):
        encoded = {key: base64.b64encode(value).decode() for key, value in data.items()}
        core.create_namespaced_secret(namespace, {"metadata": {"name": name}, "data": encoded})


async def _delete_streams(stack: StackEnv, prefix: str) -> None:
    nc = await nats.connect(nats_servers(stack.nats_url), **stack.nats_access().client_options())
    try:
        await delete_jetstream_state(nc, prefix)
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def installed(
    stack: StackEnv,
    kube: client.ApiClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Installed]:
    if not stack.is_local_cluster:
        pytest.skip("reads the local API server's audit log")
    suffix = uuid.uuid4().hex[:6]
    release, namespace = f"canaryflow-{suffix}", f"{NAMESPACE_PREFIX}-{suffix}"
    # Streams of its own: on the session's prefix, the session fleet (admin credentials) took
    # half the work off the chart's identities, and both fleets wrote the same log files.
    prefix = f"e2e_{uuid.uuid4().hex[:8]}"
    values = chart_values(stack, prefix)
    nats_secrets(kube, namespace, stack)
    result = chart.install(stack.helm, stack.kubeconfig, release, namespace, values)
    assert result.code == 0, result.stderr
    logs = stack.state_dir / "logs" / f"helm-{release}"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "helm-install.txt").write_text(result.stdout)
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    deployments, tokens, exact_env = {}, {}, {}
    workdir = tmp_path_factory.mktemp("helm")
    for component, module in chart.SERVICES.values():
        name = f"{release}-{component}"
        raw = apps.read_namespaced_deployment(name, namespace, _preload_content=False)
        deployment = json.loads(raw.data)
        deployments[component] = deployment
        account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        tokens[component] = service_account_token(kube, namespace, account)
        # The Secrets it mounts (its NATS identity, the CA), where its environment names them.
        mounted = chart.mount_secrets(
            deployment,
            lambda secret: dict(core.read_namespaced_secret(secret, namespace).data),
            workdir / component,
        )
        exact_env[module] = {
            **chart.localized(chart.container_env(deployment), mounted),
            # In a pod: the mounted token and the in-cluster address; here, the same token.
            "KUBECONFIG": kubeconfig_with_token(
                stack.kubeconfig, tokens[component], workdir / f"{component}.kubeconfig"
            ),
        }
    launcher = launcher_for(stack, prefix, replicas=1)
    launcher.exact_env = exact_env
    installation = Installed(release, namespace, result.stdout, deployments, tokens, launcher)
    try:
        for component, module in chart.SERVICES.values():
            launcher.start((module,), replicas=deployments[component]["spec"]["replicas"])
        yield installation
    finally:
        launcher.stop()
        asyncio.run(_delete_streams(stack, prefix))
        chart.helm(
            stack.helm, "uninstall", release, "--namespace", namespace, kubeconfig=stack.kubeconfig
        )
        client.CoreV1Api(kube).delete_namespace(namespace)


def test_the_chart_passes_helm_lint(stack: StackEnv) -> None:
    result = chart.helm(stack.helm, "lint", "--strict", str(chart.CHART))

    assert result.code == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_the_service_monitor_is_rendered_only_when_asked_for(stack: StackEnv) -> None:
    """Optional: it needs the Prometheus Operator's CRD, which the stack does not serve."""
    plain = {d["kind"] for d in chart.render(stack.helm)}
    monitor = {"metrics": {"port": 9100, "serviceMonitor": {"enabled": True}}}
    documents = chart.render(stack.helm, monitor)

    assert "ServiceMonitor" not in plain
    watched = chart.named(documents, "ServiceMonitor", "canaryflow")
    service = chart.named(documents, "Service", "canaryflow-metrics")
    labels = service["metadata"]["labels"]
    assert watched["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert watched["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


def test_each_router_listed_adds_its_rules_and_only_those(stack: StackEnv) -> None:
    """replica-ratio (the default) needs no rights beyond Deployments; each weighted router
    adds its objects' rules to the executor's and the rollback's roles, and the services are
    told which routers they may use (a policy naming another is refused at admission)."""

    def routing_rules(routers: list[str]) -> dict[str, set[tuple[str, str, str]]]:
        documents = chart.render(stack.helm, {"traffic": {"routers": routers}})
        plain = chart.render(stack.helm)
        extra = {}
        for component, _ in chart.SERVICES.values():
            rules = chart.granted(chart.rules_of(documents, component, "canaryflow"))
            extra[component] = rules - chart.granted(chart.rules_of(plain, component, "canaryflow"))
        env = {
            component: chart.container_env(
                chart.named(documents, "Deployment", f"canaryflow-{component}")
            )
            for component, _ in chart.SERVICES.values()
        }
        assert env["planner"]["CANARYFLOW_TRAFFIC_ROUTERS"] == ",".join(routers)
        assert env["executor"]["CANARYFLOW_TRAFFIC_ROUTERS"] == ",".join(routers)
        assert env["rollback"]["CANARYFLOW_TRAFFIC_ROUTERS"] == ",".join(routers)
        assert "CANARYFLOW_TRAFFIC_ROUTERS" not in env["metrics-watcher"]
        return extra

    traefik = routing_rules(["replica-ratio", "traefik"])
    gateway = routing_rules(["gateway-api"])

    assert routing_rules(["replica-ratio"]) == {c: set() for c, _ in chart.SERVICES.values()}
    assert traefik["planner"] == traefik["metrics-watcher"] == set()
    assert ("traefik.io", "traefikservices", "patch") in traefik["executor"]
    assert ("traefik.io", "ingressroutes", "create") in traefik["executor"]
    assert ("discovery.k8s.io", "endpointslices", "list") in traefik["executor"]
    assert ("traefik.io", "ingressroutes", "delete") in traefik["rollback"]
    assert ("", "services", "create") not in traefik["rollback"]  # it only removes them
    assert {group for group, _, _ in gateway["executor"]} == {
        "",
        "discovery.k8s.io",
        "gateway.networking.k8s.io",
    }
    assert not any(group == "traefik.io" for group, _, _ in gateway["rollback"])


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ({"planner": {"replicas": -1}}, "at '/planner/replicas': minimum: got -1, want 0"),
        ({"nats": {"urls": ["http://nats:4222"]}}, "at '/nats/urls/0': 'http://nats:4222'"),
        ({"metricsWatcher": {"alerts": {"port": 70000}}}, "at '/metricsWatcher/alerts/port'"),
        (
            {"nats": {"tls": {"enabled": True, "caSecretName": ""}}},
            "at '/nats/tls/caSecretName': minLength",
        ),
        ({"nats": {"nkeys": {"secretName": ""}}}, "at '/nats/nkeys/secretName': minLength"),
        ({"nats": {"auth": "password"}}, "at '/nats/auth': value must be one of"),
        ({"rbac": {"namespaces": ["Not_A_Namespace"]}}, "at '/rbac/namespaces/0'"),
        ({"planner": {"replica": 2}}, "additional properties 'replica' not allowed"),
        ({"traffic": {"routers": ["istio"]}}, "at '/traffic/routers/0': value must be one of"),
    ],
)
def test_a_wrong_value_is_refused_at_install_and_nothing_is_created(
    stack: StackEnv, kube: client.ApiClient, value: dict[str, Any], why: str
) -> None:
    release = f"wrong{uuid.uuid4().hex[:6]}"

    result = chart.install(stack.helm, stack.kubeconfig, release, "default", value)

    assert result.code != 0
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert why in result.stderr, result.stderr
    accounts = client.CoreV1Api(kube).list_namespaced_service_account("default").items
    assert not [a for a in accounts if a.metadata.name.startswith(release)]
    assert (
        chart.helm(stack.helm, "status", release, "-n", "default", kubeconfig=stack.kubeconfig).code
        != 0
    )


def test_helm_install_creates_every_object_of_the_chart(
    installed: Installed, kube: client.ApiClient
) -> None:
    assert "STATUS: deployed" in installed.output, installed.output
    ns, release = installed.namespace, installed.release
    components = [component for component, _ in chart.SERVICES.values()]
    core, policy = client.CoreV1Api(kube), client.PolicyV1Api(kube)
    rbac = client.RbacAuthorizationV1Api(kube)
    for component in components:
        name = f"{release}-{component}"
        deployment = installed.deployments[component]
        assert deployment["spec"]["replicas"] == 1
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert core.read_namespaced_service_account(name, ns)
        assert policy.read_namespaced_pod_disruption_budget(name, ns).spec.min_available == 1
        assert rbac.read_cluster_role_binding(name).subjects[0].name == name
    alerts = core.read_namespaced_service(f"{release}-alerts", ns)
    assert alerts.spec.ports[0].target_port == "alerts"
    crds = client.ApiextensionsV1Api(kube)
    assert crds.read_custom_resource_definition("releasepolicies.canaryflow.io")


def test_every_service_started_from_the_chart_says_it_is_ready(installed: Installed) -> None:
    """/readyz answers 200 only once connected to NATS, with its consumers bound and the API
    server answering its token; /livez while the event loop runs the checks."""
    for running in installed.launcher.running:
        base = f"http://127.0.0.1:{running.metrics_port}"

        def ready(url: str = f"{base}/readyz") -> httpx.Response | None:
            answer = httpx.get(url, timeout=2)
            return answer if answer.status_code == 200 else None

        answer = wait_until(ready, timeout=30, message=f"{running.name} ready")
        assert answer.json() == {"status": "ready"}
        assert httpx.get(f"{base}/livez", timeout=2).status_code == 200


def test_a_service_whose_token_the_api_server_refuses_is_not_ready_but_alive(
    installed: Installed, stack: StackEnv, stream_prefix: str, tmp_path: Path
) -> None:
    """Readiness means something: the chart's planner with a token the API server does not
    accept (on streams of its own) starts and consumes, yet says it is not ready, and why."""
    # The chart's environment, its mounted Secrets (NATS identity, CA) made local files.
    env = dict(installed.launcher.exact_env["planner"])
    env["CANARYFLOW_PREFIX"] = stream_prefix
    env["KUBECONFIG"] = kubeconfig_with_token(stack.kubeconfig, "not-a-token", tmp_path / "kc")
    launcher = launcher_for(stack, stream_prefix, replicas=1)
    launcher.exact_env = {"planner": env}
    (planner,) = launcher.start(("planner",))
    base = f"http://127.0.0.1:{planner.metrics_port}"
    try:

        def checked() -> dict[str, Any] | None:
            answer = httpx.get(f"{base}/readyz", timeout=2)
            body: dict[str, Any] = answer.json()
            done = answer.status_code == 503 and "consumers" not in body["failures"]
            return body if done and "service" not in body["failures"] else None

        body = wait_until(checked, timeout=30, message="the planner's checks ran")
        assert list(body["failures"]) == ["kubernetes"], body
        assert "401" in body["failures"]["kubernetes"], body
        assert httpx.get(f"{base}/livez", timeout=2).status_code == 200
    finally:
        launcher.stop()


def _target_with_everything(kube: client.ApiClient, namespace: str) -> None:
    """The shop's web reading two ConfigMaps and two Secrets, with an autoscaler and a
    budget: every kind of object a release records and restores (each a rule of the chart)."""
    core = client.CoreV1Api(kube)
    for name, data in (("web-config", {"LAYOUT": "classic"}), ("web-flags", {"NEW_CART": "off"})):
        core.create_namespaced_config_map(namespace, {"metadata": {"name": name}, "data": data})
    for name, data in (("web-secret", {"TOKEN": "s3cret"}), ("web-keys", {"KEY": "k1"})):
        core.create_namespaced_secret(namespace, {"metadata": {"name": name}, "stringData": data})
    sources = [{"configMapRef": {"name": "web-config"}}, {"configMapRef": {"name": "web-flags"}}]
    sources += [{"secretRef": {"name": "web-secret"}}, {"secretRef": {"name": "web-keys"}}]
    template = {"spec": {"containers": [{"name": "web", "envFrom": sources}]}}
    apps = client.AppsV1Api(kube)
    apps.patch_namespaced_deployment("web", namespace, {"spec": {"template": template}})
    wait_rolled_out(kube, namespace)
    client.AutoscalingV2Api(kube).create_namespaced_horizontal_pod_autoscaler(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 10,
                "maxReplicas": 20,
            },
        },
    )
    client.PolicyV1Api(kube).create_namespaced_pod_disruption_budget(
        namespace, {"metadata": {"name": "web"}, "spec": BUDGET}
    )


BUDGET = {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}}


def _budget(kube: client.ApiClient, namespace: str) -> Any:
    return client.PolicyV1Api(kube).read_namespaced_pod_disruption_budget("web", namespace)


def _change_budget(kube: client.ApiClient, namespace: str) -> None:
    """Someone changes the PDB while a release runs: its end puts the recorded one back."""
    change = {"spec": {"maxUnavailable": 3}}
    client.PolicyV1Api(kube).patch_namespaced_pod_disruption_budget("web", namespace, change)


async def _release(
    releases: Releases, namespace: str, layout: str, release_id: str | None = None
) -> str:
    """A configuration-only release (stable's image, a new LAYOUT); returns its id."""
    release_id = release_id or f"web-{uuid.uuid4().hex[:8]}"
    version = VersionSpec(
        image=shop.image("v1"),
        config_maps=[ConfigMapChange(name="web-config", data={"LAYOUT": layout})],
    )
    data = ReleaseRequested(
        target=TargetRef(namespace=namespace, name="web"), version=version, requested_by="e2e"
    )
    await releases.publish(data, release_id)
    return release_id


async def test_releases_are_promoted_and_rolled_back_under_the_charts_identities(
    installed: Installed,
    kube: client.ApiClient,
    shop_namespace: str,
    nats_client: NatsClient,
    stack: StackEnv,
) -> None:
    """Three releases of one target, each through paths that need a rule of the chart:

    A, promoted: finds a leftover bundle of a release that never started (replaced) and a
    stale copy of its own configuration (rewritten); someone changes the PDB meanwhile (the
    promotion puts it back). B, promoted: its promotion deletes A's copy, now superseded.
    C, aborted: meanwhile someone deletes the live ConfigMap and a Secret and changes the
    others and the PDB; the rollback puts each back as recorded and deletes C's copy.
    """
    ns = shop_namespace
    _target_with_everything(kube, ns)
    core = client.CoreV1Api(kube)
    releases = Releases(nats_client, Subjects(installed.launcher.prefix))
    leftover = {"releaseId": "web-gone"}
    core.create_namespaced_secret(
        ns,
        {
            "metadata": {"name": bundles.bundle_name("web")},
            "stringData": {bundles.BUNDLE_KEY: json.dumps(leftover)},
        },
    )
    first = f"web-{uuid.uuid4().hex[:8]}"
    stale = {"metadata": {"name": bundles.copy_name("web-config", first)}, "data": {"X": "y"}}
    core.create_namespaced_config_map(ns, stale)

    await _release(releases, ns, "compact", first)
    await releases.events(first, until=(PhaseReached,), timeout=60)
    _change_budget(kube, ns)
    promoted = await releases.events(first)
    assert isinstance(promoted[-1].data, ReleaseSucceeded), [e.type for e in promoted]
    assert _budget(kube, ns).spec.max_unavailable == 1
    second = await _release(releases, ns, "wide")
    promoted = await releases.events(second)
    assert isinstance(promoted[-1].data, ReleaseSucceeded), [e.type for e in promoted]
    assert _layouts_seen(kube, ns) == {"wide"}
    live_config = bundles.copy_name("web-config", second)
    assert canaryflow_leftovers(kube, ns) == [f"ConfigMap {live_config}"]  # A's copy went

    third = await _release(releases, ns, "tall")
    await releases.events(third, until=(PhaseReached,), timeout=60)
    core.delete_namespaced_config_map(live_config, ns)
    core.patch_namespaced_config_map("web-flags", ns, {"data": {"NEW_CART": "on"}})
    core.delete_namespaced_secret("web-keys", ns)
    core.patch_namespaced_secret("web-secret", ns, {"stringData": {"TOKEN": "changed"}})
    _change_budget(kube, ns)
    await releases.publish(AbortRelease(actor="e2e-test", reason="chart"), third)
    rolled_back = await releases.events(third, timeout=90)

    assert isinstance(rolled_back[-1].data, ReleaseRolledBack), [e.type for e in rolled_back]
    assert RollbackCompleted in [type(e.data) for e in rolled_back]
    assert core.read_namespaced_config_map(live_config, ns).data == {"LAYOUT": "wide"}
    assert core.read_namespaced_config_map("web-flags", ns).data == {"NEW_CART": "off"}
    assert core.read_namespaced_secret("web-keys", ns).data == {"KEY": _b64("k1")}
    assert core.read_namespaced_secret("web-secret", ns).data == {"TOKEN": _b64("s3cret")}
    assert _budget(kube, ns).spec.max_unavailable == 1
    # C's copy and bundle are gone. (The live copy came back with its data but without its
    # canaryflow labels, so it no longer counts as a copy: a later promotion will not
    # delete it when superseded. Reported; not this test's subject.)
    assert canaryflow_leftovers(kube, ns) == []

    # Every rule the chart grants was used by its service (the API server's audit log).
    documents = chart.render(
        stack.helm, chart_values(stack, installed.launcher.prefix), installed.release
    )
    unused = {}
    for component, _ in chart.SERVICES.values():
        asked = chart.audited_requests(Path(stack.audit_log), installed.username(component))
        used = {key for key, codes in asked.items() if codes - {403}}
        refused = {key for key, codes in asked.items() if codes == {403}}
        assert not refused, f"{component} was refused {sorted(refused)}"
        rules = chart.rules_of(documents, component, installed.release)
        if missing := chart.granted(rules) - used:
            unused[component] = sorted(missing)
    assert unused == {}, f"rules of the chart no release used: {unused}"


def _layouts_seen(kube: client.ApiClient, namespace: str) -> set[str]:
    """LAYOUT as each live pod of web gets it from the ConfigMaps it names."""
    core, seen = client.CoreV1Api(kube), set()
    for pod in live_pods(kube, namespace):
        for source in pod.spec.containers[0].env_from or []:
            if source.config_map_ref is not None:
                data = core.read_namespaced_config_map(source.config_map_ref.name, namespace).data
                if "LAYOUT" in (data or {}):
                    seen.add(data["LAYOUT"])
    return seen


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


Call = Callable[[], Any]


def _status(call: Call) -> int:
    try:
        call()
    except ApiException as error:
        return int(error.status)
    return 200


def test_each_service_is_refused_what_it_must_not_do(
    installed: Installed, kube: client.ApiClient, shop_namespace: str
) -> None:
    ns = shop_namespace
    as_ = {c: client_with_token(kube, t) for c, t in installed.tokens.items()}
    deployment = {
        "metadata": {"name": "intruder"},
        "spec": {
            "selector": {"matchLabels": {"app": "intruder"}},
            "template": {
                "metadata": {"labels": {"app": "intruder"}},
                "spec": {"containers": [{"name": "c", "image": shop.image("v2")}]},
            },
        },
    }
    config_map = {"metadata": {"name": "intruder"}}
    role = {"metadata": {"name": "escalate"}, "rules": []}
    scale = {"spec": {"replicas": 3}}

    def refusals(component: str) -> dict[str, int]:
        apps, core = client.AppsV1Api(as_[component]), client.CoreV1Api(as_[component])
        rbac = client.RbacAuthorizationV1Api(as_[component])
        custom = client.CustomObjectsApi(as_[component])
        policy = {"apiVersion": "canaryflow.io/v1alpha1", "kind": "ReleasePolicy"}
        return {
            "patch deployment": _status(lambda: apps.patch_namespaced_deployment("web", ns, scale)),
            "create configmap": _status(lambda: core.create_namespaced_config_map(ns, config_map)),
            "list secrets": _status(lambda: core.list_namespaced_secret(ns)),
            "read secret": _status(lambda: core.read_namespaced_secret("any", ns)),
            "list pods": _status(lambda: core.list_namespaced_pod(ns)),
            "create role": _status(lambda: rbac.create_namespaced_role(ns, role)),
            "write policy": _status(
                lambda: custom.create_namespaced_custom_object(
                    "canaryflow.io",
                    "v1alpha1",
                    ns,
                    "releasepolicies",
                    {**policy, "metadata": {"name": "x"}, "spec": {}},
                )
            ),
            "create deployment": _status(
                lambda: apps.create_namespaced_deployment(ns, deployment, dry_run="All")
            ),
            "read deployment": _status(lambda: apps.read_namespaced_deployment("web", ns)),
            "list namespaces": _status(core.list_namespace),
        }

    seen = {component: refusals(component) for component in installed.tokens}

    forbidden = 403
    for component in ("planner", "metrics-watcher"):  # they only read
        for action in ("patch deployment", "create configmap", "create deployment", "write policy"):
            assert seen[component][action] == forbidden, (component, action, seen[component])
        assert seen[component]["list secrets"] == forbidden
        assert seen[component]["read secret"] == forbidden
    assert seen["metrics-watcher"]["read deployment"] == forbidden  # it judges metrics only
    assert seen["rollback"]["create deployment"] == forbidden  # it restores, never makes
    for component, answers in seen.items():  # nobody escalates, reads pods, lists namespaces
        for action in ("create role", "list pods", "list namespaces", "write policy"):
            assert answers[action] == forbidden, (component, action, answers)
    # The executor and the rollback service do read Secrets (those the target references,
    # to restore them): RBAC cannot name them in advance, see the README's limits.
    assert seen["executor"]["read secret"] == 404


def test_namespaced_mode_grants_roles_in_the_listed_namespaces_only(
    stack: StackEnv, kube: client.ApiClient, shop_namespace: str
) -> None:
    """For teams without cluster-wide rights: Roles in the listed namespaces, no ClusterRole;
    a target elsewhere is out of reach of every service."""
    suffix = uuid.uuid4().hex[:6]
    release, namespace = f"canaryflow-{suffix}", f"{NAMESPACE_PREFIX}-{suffix}"
    values = {"rbac": {"namespaces": [shop_namespace]}}
    install = chart.install(stack.helm, stack.kubeconfig, release, namespace, values)
    try:
        assert install.code == 0, install.stderr
        assert f"acting in the namespaces {shop_namespace} only" in install.stdout
        rbac = client.RbacAuthorizationV1Api(kube)
        mine = f"app.kubernetes.io/instance={release}"
        assert rbac.list_cluster_role(label_selector=mine).items == []
        roles = rbac.list_namespaced_role(shop_namespace, label_selector=mine).items
        assert len(roles) == 4
        token = service_account_token(kube, namespace, f"{release}-executor")
        apps = client.AppsV1Api(client_with_token(kube, token))

        assert apps.read_namespaced_deployment("web", shop_namespace).metadata.name == "web"
        elsewhere = _status(lambda: apps.read_namespaced_deployment("web", "default"))
        assert elsewhere == 403
        core = client.CoreV1Api(client_with_token(kube, token))
        assert _status(lambda: core.read_namespaced_secret("any", "kube-system")) == 403
    finally:
        chart.helm(
            stack.helm, "uninstall", release, "--namespace", namespace, kubeconfig=stack.kubeconfig
        )
        client.CoreV1Api(kube).delete_namespace(namespace)
