"""A Deployment's policies are read by their target field, not as the namespace's all.

With a thousand targets in one namespace, listing every policy for each request was a
thousand times a thousand objects; the CRD declares ``spec.targetRef`` selectable, and the
API server does the filtering (bench/scale.py measures the difference).
"""

from __future__ import annotations

from unittest import mock

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from canaryflow.demo import shop
from canaryflow.runtime import kube as kube_access
from canaryflow.runtime.policies import governing


async def test_the_api_server_returns_only_the_policies_of_the_target_asked_for(
    kube: client.ApiClient, namespace: str
) -> None:
    for name, target in (("web-a", "web"), ("web-b", "web"), ("cart", "cart")):
        shop.apply_policy(kube, namespace, shop.quick_policy(target), name=name)
    asked: list[dict[str, str]] = []
    real = client.CustomObjectsApi.list_namespaced_custom_object

    def spying(self: client.CustomObjectsApi, *args: str, **kwargs: str) -> object:
        asked.append(kwargs)
        return real(self, *args, **kwargs)

    with mock.patch.object(client.CustomObjectsApi, "list_namespaced_custom_object", spying):
        web = await kube_access.read_policies(kube, namespace, "web")
        cart = await kube_access.read_policies(kube, namespace, "cart")
        nothing = await kube_access.read_policies(kube, namespace, "checkout")
        every = await kube_access.read_policies(kube, namespace)

    assert sorted(p.name for p in web) == ["web-a", "web-b"]
    assert [p.name for p in cart] == ["cart"]
    assert nothing == []
    assert sorted(p.name for p in every) == ["cart", "web-a", "web-b"]
    # Filtered by the server, one request each: no fallback to the whole namespace.
    assert asked == [
        {"field_selector": "spec.targetRef=web"},
        {"field_selector": "spec.targetRef=cart"},
        {"field_selector": "spec.targetRef=checkout"},
        {},
    ]
    # Two policies for one Deployment are still found, and still refused.
    assert "several ReleasePolicies" in governing(namespace, "web", web).problems[0]


async def test_a_server_that_refuses_the_field_selector_gets_the_whole_namespace_listed(
    kube: client.ApiClient, namespace: str
) -> None:
    shop.apply_policy(kube, namespace, shop.quick_policy("web"), name="web")
    shop.apply_policy(kube, namespace, shop.quick_policy("cart"), name="cart")
    real = client.CustomObjectsApi.list_namespaced_custom_object

    def older_server(self: client.CustomObjectsApi, *args: str, **kwargs: str) -> object:
        if "field_selector" in kwargs:  # what a server without selectable fields answers
            raise ApiException(status=400, reason='field label not supported: "spec.targetRef"')
        return real(self, *args, **kwargs)

    with mock.patch.object(client.CustomObjectsApi, "list_namespaced_custom_object", older_server):
        found = await kube_access.read_policies(kube, namespace, "web")

    assert governing(namespace, "web", found).name == "web"
