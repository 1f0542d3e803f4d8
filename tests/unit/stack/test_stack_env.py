"""What ``source .stack/env`` gives a shell: the endpoints, the prefix and the stack's kubectl."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from canaryflow_contracts import DEFAULT_PREFIX
from canaryflow_stack import build
from canaryflow_stack import stack as stack_manager
from canaryflow_stack.cluster import ClusterChoice
from canaryflow_stack.config import Ports, Settings


def _settings(tmp_path: Path) -> Settings:
    return Settings(tmp_path, tmp_path, tmp_path, Ports.from_env(), Path(sys.executable))


def test_sourcing_the_env_sets_the_prefix_the_endpoints_and_puts_kubectl_first(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    kubectl_dir = build.go_bin_dir(settings, "kubernetes")
    kubectl_dir.mkdir(parents=True)
    (kubectl_dir / "kubectl").touch()  # as the local cluster's build leaves it
    choice = ClusterChoice("local", str(settings.kubeconfig), "test")
    stack_manager._write_env(settings, stack_manager.endpoints(settings, choice))
    script = f'. {settings.env_sh} && echo "$CANARYFLOW_PREFIX|$KUBECONFIG|$PATH"'
    shown = subprocess.run(
        ["sh", "-c", script],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    prefix, kubeconfig, path = shown.split("|")
    assert prefix == DEFAULT_PREFIX == stack_manager.DEFAULT_PREFIX
    assert kubeconfig == str(settings.kubeconfig)
    assert path.split(os.pathsep) == [str(kubectl_dir), "/usr/bin", "/bin"], "the rest kept"


def test_without_a_built_kubectl_the_path_is_left_alone(tmp_path: Path) -> None:
    settings = _settings(tmp_path)  # an external cluster: no control plane, no kubectl built
    choice = ClusterChoice("external", "/home/me/.kube/config", "test")
    stack_manager._write_env(settings, stack_manager.endpoints(settings, choice))
    assert "PATH=" not in settings.env_sh.read_text()


def test_a_three_node_stack_forwards_every_node_and_names_them_all_in_nats_url(
    tmp_path: Path,
) -> None:
    single = _settings(tmp_path)
    cluster = Settings(
        tmp_path, tmp_path, tmp_path, Ports.from_env(), Path(sys.executable), nats_nodes=3
    )
    client = cluster.ports.nats
    shifted = {cluster.nats_node_ports(node)[0] for node in (2, 3)}
    assert shifted == {client + 10, client + 20}
    assert "nats-2" not in single.forwarded_ports()
    forwarded = cluster.forwarded_ports()
    assert {forwarded["nats-2"], forwarded["nats-3"]} == shifted
    assert forwarded["nats"] == client
    urls = cluster.nats_urls()
    assert [int(url.rsplit(":", 1)[1]) for url in urls] == [client, client + 10, client + 20]
