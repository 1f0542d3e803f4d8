"""docker-compose.yml is valid Compose, checked by compose-go (the specification's loader).

No Docker engine runs here, so this is the check that the file would load: schema,
interpolation and references between services, volumes and networks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from canaryflow_stack import netns

REPO = Path(__file__).resolve().parents[2]
CHECKER = REPO / "deploy" / "compose-check"


def _compose_check(path: Path) -> subprocess.CompletedProcess[str]:
    cache = Path(os.environ.get("CANARYFLOW_CACHE", Path.home() / ".cache" / "canaryflow"))
    env = {
        **os.environ,
        "GOMODCACHE": str(cache / "go" / "mod"),
        "GOCACHE": str(cache / "go" / "build"),
        "GOFLAGS": "-mod=mod",
        "GOTOOLCHAIN": "local",
    }
    # On the machine's side: the test session lives in the stack's network namespace, which
    # has no way out, and `go run` may need the Go module proxy.
    return netns.on_host(
        lambda: subprocess.run(
            ["go", "run", ".", str(path)],
            cwd=CHECKER,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    )


@pytest.fixture(scope="module")
def go() -> None:
    if shutil.which("go") is None:
        pytest.fail("the Go toolchain is needed to validate docker-compose.yml")


def test_the_compose_file_is_valid_and_runs_every_part(go: None) -> None:
    result = _compose_check(REPO / "docker-compose.yml")
    assert result.returncode == 0, result.stderr
    for service in (
        "nats",
        "prometheus",
        "jaeger",
        "k3s",
        "planner",
        "executor",
        "metrics-watcher",
        "rollback",
    ):
        assert f" {service}" in result.stdout, (service, result.stdout)


def test_the_checker_refuses_a_broken_file(go: None, tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        "services:\n  planner:\n    image: canaryflow:dev\n    depends_on: [nowhere]\n"
    )
    result = _compose_check(broken)
    assert result.returncode == 1
    assert "nowhere" in result.stderr
