"""Least-privilege Kubernetes credentials for tests.

Why: canaryflow's services must run with narrow roles, and tests need to prove what such a
role can and cannot do. Static tokens are fixed at API-server start, so tests get their
tokens the way workloads do: a ServiceAccount bound to a Role, and a short-lived token from
the TokenRequest API. The returned client talks to the same server with only that token.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client


def narrow_token(
    api: client.ApiClient,
    namespace: str,
    name: str,
    rules: list[client.V1PolicyRule],
    expiration_seconds: int = 600,
) -> str:
    """Create ServiceAccount + Role(rules) + RoleBinding ``name`` in ``namespace``; a token."""
    core = client.CoreV1Api(api)
    rbac = client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
    )
    rbac.create_namespaced_role(
        namespace, client.V1Role(metadata=client.V1ObjectMeta(name=name), rules=rules)
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name=name),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name=name
            ),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name=name, namespace=namespace)],
        ),
    )
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=expiration_seconds)
    )
    response: Any = core.create_namespaced_service_account_token(name, namespace, request)
    return str(response.status.token)


def client_with_token(api: client.ApiClient, token: str) -> client.ApiClient:
    """A client for the same API server (and CA) as ``api`` that authenticates with ``token``."""
    configuration = copy.copy(api.configuration)
    configuration.api_key = {"authorization": f"Bearer {token}"}
    configuration.api_key_prefix = {}
    # Drop whatever else ``api`` authenticated with (client certificates, exec plugins).
    configuration.cert_file = None
    configuration.key_file = None
    configuration.refresh_api_key_hook = None
    return client.ApiClient(configuration)


def kubeconfig_with_token(admin_kubeconfig: str, token: str, path: Path) -> str:
    """A kubeconfig file for the same cluster (address, CA) with ``token`` as its only
    credential, for code that takes a kubeconfig path (the services)."""
    admin: dict[str, Any] = yaml.safe_load(Path(admin_kubeconfig).read_text())
    cluster = admin["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "narrow", "user": {"token": token}}],
        "contexts": [{"name": "narrow", "context": {"cluster": cluster["name"], "user": "narrow"}}],
        "current-context": "narrow",
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)
