"""A start that fails stops what it started, and only that (real processes, no stack)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from canaryflow.demo.launcher import LaunchError, RunningService, ServiceLauncher, StackEndpoints


def test_a_failed_start_stops_its_own_replicas_and_leaves_the_running_ones(tmp_path: Path) -> None:
    stack = StackEndpoints("nats://127.0.0.1:1", str(tmp_path / "kubeconfig"), "", "")
    launcher = ServiceLauncher(stack, prefix="t", log_dir=tmp_path)
    # A replica started earlier (a campaign restarts one while the others serve).
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    running = RunningService("planner", sleeper, tmp_path / "planner-0.log", 0)
    launcher.running.append(running)
    try:
        with pytest.raises(LaunchError, match="no_such_service exited"):
            launcher.start(("no_such_service",), timeout=30)

        assert launcher.running == [running]
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
