"""The RBAC rules of the Helm chart (deploy/helm/canaryflow) are enough for each service, and
no more.

Given a ServiceAccount bound (in a test namespace) to exactly the rules the chart renders for
one service's ClusterRole, the API server lets that service do its job and refuses what it
must not do, for each of the four services: the planner reads Deployments and
ReleasePolicies and cannot write anything; the metrics-watcher reads ReleasePolicies and no
workload; the executor makes and removes Deployments but cannot touch RBAC; the rollback
service changes and removes Deployments but cannot make one, nor touch RBAC.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tests.support import (
    StackEnv,
    async_wait_until,
    chart,
    client_with_token,
    kubeconfig_with_token,
    narrow_token,
)

from canaryflow.demo import shop
from canaryflow.metrics_watcher.policies import KubePolicySource
from canaryflow.planner.validation import KubeClusterReader
from canaryflow.runtime.deployment_watch import DeploymentWatch
from canaryflow.runtime.service import stop_task

pytestmark = pytest.mark.stack

CONFIG_VOLUME = {"name": "conf", "configMap": {"name": "web-config"}}
Rules = dict[str, list[client.V1PolicyRule]]


@pytest.fixture(scope="module")
def chart_rules(stack: StackEnv) -> Rules:
    """Each service's rules as the chart renders its ClusterRole, by component name."""
    documents = chart.render(stack.helm)
    return {
        component: [
            client.V1PolicyRule(
                api_groups=rule["apiGroups"], resources=rule["resources"], verbs=rule["verbs"]
            )
            for rule in chart.rules_of(documents, component)
        ]
        for component, _ in chart.SERVICES.values()
    }


@pytest.fixture
def shop_with_policy(kube: client.ApiClient, namespace: str) -> str:
    shop.install_crd(kube)
    shop.deploy(kube, namespace, replicas=2)
    shop.apply_policy(kube, namespace, shop.quick_policy())
    return namespace


async def test_the_planner_can_read_what_it_validates_and_write_nothing(
    stack: StackEnv,
    kube: client.ApiClient,
    shop_with_policy: str,
    tmp_path: Path,
    chart_rules: Rules,
) -> None:
    namespace = shop_with_policy
    token = narrow_token(kube, namespace, "planner", chart_rules["planner"])
    reader = KubeClusterReader(
        kubeconfig_with_token(stack.kubeconfig, token, tmp_path / "kubeconfig")
    )

    core = client.CoreV1Api(kube)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "web-config"}})
    client.AppsV1Api(kube).patch_namespaced_deployment(
        "web", namespace, {"spec": {"template": {"spec": {"volumes": [CONFIG_VOLUME]}}}}
    )

    facts = await reader.deployment(namespace, "web")
    policies = await reader.release_policies(namespace)

    assert facts is not None and facts.replicas == 2
    assert facts.config_maps == ("web-config",)  # read, to check a release's configuration
    assert [p.name for p in policies] == ["web"]
    narrow = client_with_token(kube, token)
    with pytest.raises(ApiException) as refused:
        client.AppsV1Api(narrow).patch_namespaced_deployment(
            "web", namespace, {"spec": {"replicas": 3}}
        )
    assert refused.value.status == 403


def test_the_executor_may_create_and_delete_deployments_but_not_touch_rbac(
    kube: client.ApiClient, namespace: str, chart_rules: Rules
) -> None:
    token = narrow_token(kube, namespace, "executor", chart_rules["executor"])
    narrow = client_with_token(kube, token)
    apps = client.AppsV1Api(narrow)
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web-canary"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": shop.image("v2")}]},
            },
        },
    }
    apps.create_namespaced_deployment(namespace, body)
    apps.delete_namespaced_deployment("web-canary", namespace)
    with pytest.raises(ApiException) as refused:
        client.RbacAuthorizationV1Api(narrow).create_namespaced_role(
            namespace, {"metadata": {"name": "escalate"}, "rules": []}
        )
    assert refused.value.status == 403


def _deployment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "web", "image": shop.image("v2")}]},
            },
        },
    }


def _refused(call: Any) -> int:
    with pytest.raises(ApiException) as refused:
        call()
    return int(refused.value.status)


async def test_the_metrics_watcher_reads_policies_and_no_workload(
    stack: StackEnv,
    kube: client.ApiClient,
    shop_with_policy: str,
    chart_rules: Rules,
    tmp_path: Path,
) -> None:
    namespace = shop_with_policy
    token = narrow_token(kube, namespace, "metrics-watcher", chart_rules["metrics-watcher"])
    narrow = client_with_token(kube, token)
    source = KubePolicySource(
        kubeconfig_with_token(stack.kubeconfig, token, tmp_path / "kubeconfig")
    )

    policy = await source.get(namespace, "web")  # the release's policy, by name

    assert policy.analysis is not None
    assert (
        _refused(
            lambda: client.CustomObjectsApi(narrow).list_namespaced_custom_object(
                "canaryflow.io", "v1alpha1", namespace, "releasepolicies"
            )
        )
        == 403
    )
    apps, core = client.AppsV1Api(narrow), client.CoreV1Api(narrow)
    assert _refused(lambda: apps.read_namespaced_deployment("web", namespace)) == 403
    assert _refused(lambda: core.list_namespaced_secret(namespace)) == 403
    patch = {"spec": {"replicas": 3}}
    assert _refused(lambda: apps.patch_namespaced_deployment("web", namespace, patch)) == 403


def test_the_rollback_service_restores_deployments_but_cannot_make_one_or_touch_rbac(
    kube: client.ApiClient, shop_with_policy: str, chart_rules: Rules
) -> None:
    namespace = shop_with_policy
    token = narrow_token(kube, namespace, "rollback", chart_rules["rollback"])
    narrow = client_with_token(kube, token)
    admin_apps, apps = client.AppsV1Api(kube), client.AppsV1Api(narrow)
    admin_apps.create_namespaced_deployment(namespace, _deployment("web-canary"))

    # What a rollback does: stable back to full size (a replace), the canary removed.
    stable = apps.read_namespaced_deployment("web", namespace)
    stable.spec.replicas = 3
    stable.metadata.resource_version = None  # unconditional: KWOK writes its status meanwhile
    apps.replace_namespaced_deployment("web", namespace, stable)
    apps.delete_namespaced_deployment("web-canary", namespace)

    assert admin_apps.read_namespaced_deployment("web", namespace).spec.replicas == 3
    names = [d.metadata.name for d in admin_apps.list_namespaced_deployment(namespace).items]
    assert names == ["web"]
    body = _deployment("intruder")
    assert _refused(lambda: apps.create_namespaced_deployment(namespace, body)) == 403
    rbac = client.RbacAuthorizationV1Api(narrow)
    role = {"metadata": {"name": "escalate"}, "rules": []}
    assert _refused(lambda: rbac.create_namespaced_role(namespace, role)) == 403


@pytest.mark.parametrize("component", ["executor", "rollback"])
async def test_the_services_that_wait_on_deployments_may_watch_them(
    kube: client.ApiClient, namespace: str, chart_rules: Rules, component: str
) -> None:
    """The executor's and the rollback service's waits follow one watch (deployment_watch):
    their rules let it list and follow the namespace's Deployments."""
    client.AppsV1Api(kube).create_namespaced_deployment(namespace, _deployment("web"))
    narrow = client_with_token(
        kube, narrow_token(kube, namespace, component, chart_rules[component])
    )
    watch = DeploymentWatch(narrow, (namespace,))
    following = asyncio.create_task(watch.run())
    try:

        async def following_it() -> bool | None:
            return watch.watching(namespace) or None

        await async_wait_until(following_it, timeout=20, message=f"{component}'s watch")
        found = watch.get(namespace, "web")
        assert found is not None and found["metadata"]["name"] == "web"
    finally:
        await stop_task(following)
