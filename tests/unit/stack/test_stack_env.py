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
    kubectl_dir = str(build.go_bin_dir(settings, "kubernetes"))
    assert path.split(os.pathsep) == [kubectl_dir, "/usr/bin", "/bin"], "the rest of PATH kept"
