"""When a server cannot start because one it depends on has died, the error names the dead one.

Real processes stand in for the servers: one exits at once (as etcd once did, a second after
it was reported healthy), one keeps running.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from canaryflow_stack import natsauth, procs, servers
from canaryflow_stack import stack as stack_manager
from canaryflow_stack.config import Ports, Settings
from canaryflow_stack.errors import StackError
from canaryflow_stack.procs import PidRecord
from canaryflow_stack.servers import Binaries, Server
from tests.support import wait_until


def _server(name: str, phase: int, cause: str) -> Server:
    return Server(name, phase, [], {}, probe=lambda: None, timeout=1, cause=cause)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(tmp_path, tmp_path, tmp_path, Ports.from_env(), Path(sys.executable))


@pytest.fixture
def running(settings: Settings) -> Iterator[PidRecord]:
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    record = procs.spawn("nats", argv, settings.log("nats"), settings.pids / "nats", {**os.environ})
    yield record
    procs.stop(record, timeout=5)


def test_a_server_failing_after_its_dependency_died_blames_the_dependency(
    settings: Settings, running: PidRecord
) -> None:
    argv = [sys.executable, "-c", "print('etcd says goodbye'); raise SystemExit(3)"]
    died = procs.spawn("etcd", argv, settings.log("etcd"), settings.pids / "etcd", {**os.environ})
    wait_until(
        lambda: not procs.is_ours(died), timeout=10, message="the stand-in etcd did not exit"
    )
    healthy = [
        (_server("nats", 0, "nats cause"), running),
        (_server("etcd", 0, "etcd cause"), died),
    ]
    failure = StackError("kube-apiserver", None, "not healthy within 60 s", "apiserver cause")

    blamed = stack_manager._dead_dependency(settings, healthy, failure)

    assert blamed is not None
    assert blamed.server == "etcd"
    assert blamed.cause == "etcd cause"
    assert f"(pid {died.pid}) exited with code 3 after it was reported healthy" in blamed.message
    assert "so kube-apiserver could not start (not healthy within 60 s)" in blamed.message
    assert "etcd says goodbye" in blamed.report()


def test_a_failure_with_every_dependency_alive_is_the_server_s_own(
    settings: Settings, running: PidRecord
) -> None:
    failure = StackError("kube-apiserver", None, "not healthy within 60 s", "apiserver cause")
    healthy = [(_server("nats", 0, "nats cause"), running)]

    assert stack_manager._dead_dependency(settings, healthy, failure) is None


def test_a_server_is_its_own_from_the_moment_it_is_spawned(
    settings: Settings, running: PidRecord
) -> None:
    """spawn returns once the new program's command line shows, so the first check holds.

    (The kernel fills it in while it maps the program, after Popen has returned: read too
    early, it was empty and the starting kube-apiserver was reported as exited.)
    """
    assert procs.proc_cmdline(running.pid) == running.argv
    assert procs.is_ours(running)
    assert stack_manager._wait_healthy(settings, _server("nats", 0, "cause"), running) >= 0


def test_a_nats_started_from_a_config_this_code_would_write_differently_is_outdated(
    settings: Settings, tmp_path: Path
) -> None:
    """``up`` restarts such a NATS: after a pull that changed an identity's permissions, the
    running server would otherwise go on enforcing the old ones."""
    natsauth.ensure(settings)
    bins = Binaries(**{f.name: tmp_path / f.name for f in dataclasses.fields(Binaries)})
    server = servers._nats(settings, bins)
    assert server.outdated is not None and server.prepare is not None
    assert server.outdated(), "no config written yet"
    server.prepare()
    assert not server.outdated()
    conf = settings.state / "nats" / f"{server.name}.conf"
    conf.write_text(conf.read_text().replace("analysis.>", ">"))  # an older grant
    assert server.outdated()
