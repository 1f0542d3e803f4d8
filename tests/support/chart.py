"""The Helm chart (deploy/helm/canaryflow) as the tests use it: render, install, read back.

Why here: the chart is the one description of how canaryflow runs in a cluster (its RBAC
rules included), so the RBAC tests and the chart's own tests take everything from what Helm
renders or installs, never from a copy of the rules.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "canaryflow"
# values key -> (component in names and labels, Python module run by the launcher)
SERVICES = {
    "planner": ("planner", "planner"),
    "executor": ("executor", "executor"),
    "metricsWatcher": ("metrics-watcher", "metrics_watcher"),
    "rollback": ("rollback", "rollback"),
}


@dataclass(frozen=True)
class HelmResult:
    code: int
    stdout: str
    stderr: str


def helm(
    binary: str, *args: str, kubeconfig: str | None = None, timeout: float = 120
) -> HelmResult:
    if not binary:
        raise AssertionError("the stack has no helm (run `make stack-up` again to build it)")
    argv = [binary, *args] + ([f"--kubeconfig={kubeconfig}"] if kubeconfig else [])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    return HelmResult(done.returncode, done.stdout, done.stderr)


def set_json(values: dict[str, Any]) -> list[str]:
    """``--set-json key=value`` for each top-level value (Helm merges them into values.yaml)."""
    return [
        arg for key, value in values.items() for arg in ("--set-json", f"{key}={json.dumps(value)}")
    ]


def install(
    binary: str, kubeconfig: str, release: str, namespace: str, values: dict[str, Any]
) -> HelmResult:
    """``helm install`` of the chart into ``namespace`` (made if missing)."""
    return helm(
        binary,
        "install",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--create-namespace",
        *set_json(values),
        kubeconfig=kubeconfig,
    )


def render(
    binary: str,
    values: dict[str, Any] | None = None,
    release: str = "canaryflow",
    namespace: str = "canaryflow-system",
) -> list[dict[str, Any]]:
    """The chart's templates as ``helm template`` renders them (CRDs left out)."""
    result = helm(
        binary, "template", release, str(CHART), "--namespace", namespace, *set_json(values or {})
    )
    if result.code != 0:
        raise AssertionError(f"helm template failed: {result.stderr}")
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def named(documents: Iterable[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for document in documents:
        if document["kind"] == kind and document["metadata"]["name"] == name:
            return document
    raise AssertionError(f"no {kind} {name} rendered")


def rules_of(
    documents: Iterable[dict[str, Any]], component: str, release: str = "canaryflow"
) -> list[dict[str, Any]]:
    """The rules the chart gives ``component``'s ServiceAccount (its ClusterRole)."""
    role = named(documents, "ClusterRole", f"{release}-{component}")
    rules: list[dict[str, Any]] = role["rules"]
    return rules


def container_env(deployment: dict[str, Any]) -> dict[str, str]:
    """The environment of the Deployment's container, as plain values.

    A ``valueFrom`` (a Secret key) has no plain value to give a local process: refused here
    rather than silently dropped.
    """
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for variable in container.get("env") or []:
        if "value" not in variable:
            raise AssertionError(f"{variable['name']} comes from {variable.get('valueFrom')}")
        env[variable["name"]] = str(variable["value"])
    return env


def granted(rules: Iterable[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """Every (API group, resource, verb) the rules allow."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def audited_requests(audit_log: Path, username: str) -> dict[tuple[str, str, str], set[int]]:
    """What ``username`` asked the API server, from its audit log: (group, resource, verb) ->
    the response codes it got (a 403 is a refusal; anything else, a use of a rule)."""
    seen: dict[tuple[str, str, str], set[int]] = {}
    for line in audit_log.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("user", {}).get("username") != username:
            continue
        ref = event.get("objectRef") or {}
        if not ref.get("resource"):
            continue  # /version and other non-resource URLs: no rule involved
        key = (ref.get("apiGroup", ""), ref["resource"], event["verb"])
        seen.setdefault(key, set()).add(int(event.get("responseStatus", {}).get("code", 0)))
    return seen


def mount_secrets(
    deployment: dict[str, Any], secret_data: Callable[[str], dict[str, str]], root: Path
) -> dict[str, Path]:
    """Write each Secret volume the container mounts into a folder under ``root``, with the
    items (key -> path) the volume names, as the kubelet would; ``secret_data`` reads a
    Secret's ``data`` (base64 values). Returns each mount path's local folder."""
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    volumes = {volume["name"]: volume for volume in spec.get("volumes") or []}
    folders: dict[str, Path] = {}
    for mount in container.get("volumeMounts") or []:
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        data = secret_data(secret["secretName"])
        folder = root / mount["name"]
        folder.mkdir(parents=True, exist_ok=True)
        items = secret.get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            target = folder / item["path"]
            target.write_bytes(base64.b64decode(data[item["key"]]))
            target.chmod(0o600)
        folders[mount["mountPath"]] = folder
    return folders


def localized(env: dict[str, str], folders: dict[str, Path]) -> dict[str, str]:
    """``env`` with every path under a mounted folder pointing at its local copy."""
    local = dict(env)
    for name, value in env.items():
        for mount_path, folder in folders.items():
            if value.startswith(mount_path + "/"):
                local[name] = str(folder / value[len(mount_path) + 1 :])
    return local
