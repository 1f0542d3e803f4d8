"""Runs the four canaryflow services as separate processes, the way they run in production.

Used by ``make demo`` and by the end-to-end tests: each service is its own Python process,
connected to the stack's NATS, Kubernetes API and Prometheus, exporting traces over OTLP and
metrics that Prometheus scrapes (a file_sd target file per launch).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client as NatsClient
from nats.js.errors import NotFoundError

from canaryflow.runtime.nats_access import NatsAccess
from canaryflow_contracts import Subjects

SERVICES = ("planner", "executor", "metrics_watcher", "rollback")
STARTED_MARK = '"msg": "service started"'
# Services with an HTTP API of their own: each replica gets a port (CANARYFLOW_HTTP_PORT).
HTTP_SERVICES = ("metrics_watcher",)
# What a process needs from its parent whatever its configuration (see ``exact_env``).
PROCESS_BASICS = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH", "TZ")


PORT_RETRIES = 3


class LaunchError(RuntimeError):
    """A service did not come up; the message names it and shows the end of its log."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class StackEndpoints:
    nats_url: str
    kubeconfig: str
    prometheus_url: str
    otlp_endpoint: str
    prometheus_targets: Path | None = None
    stream_replicas: int = 1
    nats_tls_ca: str = ""
    """The CA of the stack's NATS (its clients connect over TLS)."""
    nats_identities: Path | None = None
    """Seed files of the stack's NATS identities: ``<identity>.nk``, ``admin.nk`` for tools."""

    @classmethod
    def from_env_json(cls, path: Path) -> StackEndpoints:
        return cls.from_env(json.loads(path.read_text()))

    @classmethod
    def from_env(cls, env: dict[str, str]) -> StackEndpoints:
        """From the stack's ``env.json`` (``canaryflow_stack up`` writes it)."""
        identities = env.get("CANARYFLOW_NATS_IDENTITIES")
        return cls(
            nats_url=env["NATS_URL"],
            kubeconfig=env["KUBECONFIG"],
            prometheus_url=env["PROMETHEUS_URL"],
            otlp_endpoint=env["OTEL_EXPORTER_OTLP_ENDPOINT"],
            prometheus_targets=Path(env["PROMETHEUS_TARGETS_DIR"]),
            stream_replicas=int(env.get("CANARYFLOW_STREAM_REPLICAS", "1")),
            nats_tls_ca=env.get("NATS_TLS_CA", ""),
            nats_identities=Path(identities) if identities else None,
        )

    def nats_env(self, identity: str = "admin") -> dict[str, str]:
        """``NATS_TLS_CA`` and ``NATS_NKEY_SEED`` of one identity (``admin``: everything)."""
        env = {"NATS_TLS_CA": self.nats_tls_ca} if self.nats_tls_ca else {}
        if self.nats_identities is not None:
            env["NATS_NKEY_SEED"] = str(self.nats_identities / f"{identity}.nk")
        return env

    def nats_access(self, identity: str = "admin") -> NatsAccess:
        """How a tool connects as ``identity``: ``nats.connect(…, **access.client_options())``."""
        return NatsAccess.from_env(
            None if identity == "admin" else identity, self.nats_env(identity)
        )


@dataclass
class RunningService:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int
    http_port: int = 0  # the service's own HTTP API (the metrics-watcher's alert webhook)


# Eight processes starting at once import about 5 s of CPU each (FastStream, the kubernetes
# client, OpenTelemetry, SciPy): 60 s was not enough at a load average of 10 on 2 cores.
START_SECONDS = 150.0


@dataclass
class ServiceLauncher:
    stack: StackEndpoints
    prefix: str
    log_dir: Path
    replicas: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)
    exact_env: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per service (module name): the whole environment it gets, e.g. a Deployment's as a
    Helm chart rendered it. Only the process basics (PATH, HOME, …) are added, and the
    launcher's own free ports replace the metrics and HTTP ports: in a pod each replica has
    its network namespace to itself, here they share one."""
    alerts_token: str = field(default_factory=lambda: secrets.token_hex(16))
    """The metrics-watcher's webhook token (CANARYFLOW_ALERTS_TOKEN) for callers to send."""
    running: list[RunningService] = field(default_factory=list)
    _launched: int = 0

    def _env(self, service: str, metrics_port: int, http_port: int = 0) -> dict[str, str]:
        if service in self.exact_env:
            basics = {k: v for k, v in os.environ.items() if k in PROCESS_BASICS}
            env = {**basics, **self.exact_env[service], "PYTHONUNBUFFERED": "1"}
            env["CANARYFLOW_METRICS_PORT"] = str(metrics_port)
            if http_port:
                env["CANARYFLOW_HTTP_PORT"] = str(http_port)
            return env
        env = {
            **os.environ,
            "NATS_URL": self.stack.nats_url,
            # Each service as its own NATS identity, with that identity's permissions only.
            **self.stack.nats_env(service.replace("_", "-")),
            "KUBECONFIG": self.stack.kubeconfig,
            "PROMETHEUS_URL": self.stack.prometheus_url,
            "CANARYFLOW_PREFIX": self.prefix,
            "CANARYFLOW_STREAM_REPLICAS": str(self.stack.stream_replicas),
            "CANARYFLOW_METRICS_PORT": str(metrics_port),
            "CANARYFLOW_RECONCILE_SECONDS": "2",
            "CANARYFLOW_ALERTS_TOKEN": self.alerts_token,
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.stack.otlp_endpoint,
            "OTEL_SERVICE_NAME": f"canaryflow-{service.replace('_', '-')}",
            # Spans in Jaeger within a second of ending, for people and tests following live.
            "OTEL_BSP_SCHEDULE_DELAY": os.environ.get("OTEL_BSP_SCHEDULE_DELAY", "500"),
            "PYTHONUNBUFFERED": "1",
        }
        if http_port:
            env["CANARYFLOW_HTTP_PORT"] = str(http_port)
        env.update(self.extra_env)
        return env

    def start(
        self,
        services: tuple[str, ...] = SERVICES,
        timeout: float = START_SECONDS,
        replicas: int | None = None,
    ) -> list[RunningService]:
        """Start ``replicas`` (by default the launcher's number) of each service; returns them
        once each has said it started."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        started = [
            self._spawn(service)
            for service in services
            for _ in range(self.replicas if replicas is None else replicas)
        ]
        self.running.extend(started)
        self._write_targets()
        try:
            self._wait_started(started, timeout)
        except BaseException:
            # The caller gets none of these to stop: replicas left running here outlived the
            # test that failed to start them, and grew for hours on a bus that had gone away.
            # Only these: the replicas already running (a campaign restarting one) carry on.
            self._stop_replicas(started)
            raise
        return started

    def _spawn(self, service: str) -> RunningService:
        port = free_port()
        http_port = free_port() if service in HTTP_SERVICES else 0
        # A replica started again after a kill gets a log of its own.
        self._launched += 1
        log_path = self.log_dir / f"{service}-{self._launched}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", f"canaryflow.{service}"],
                env=self._env(service, port, http_port),
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        return RunningService(service, process, log_path, port, http_port)

    def replicas_of(self, name: str) -> list[RunningService]:
        return [service for service in self.running if service.name == name]

    def kill(self, service: RunningService) -> None:
        """SIGKILL one replica, as a crash or an eviction would end it: no cleanup at all."""
        service.process.kill()
        service.process.wait()
        if service in self.running:  # a failed start() in another thread may have removed it
            self.running.remove(service)
        self._write_targets()

    def _wait_started(self, services: list[RunningService], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(services)
        port_retries = PORT_RETRIES
        while waiting:
            for service in list(waiting):
                lost_port = service in self.running and _lost_its_port(service)
                if service.process.poll() is not None and port_retries and lost_port:
                    # free_port() only found a port free: another process may take it before
                    # the service binds it (seen with several stacks on one machine).
                    port_retries -= 1
                    again = self._spawn(service.name)
                    self.running[self.running.index(service)] = again
                    services[services.index(service)] = again
                    waiting[waiting.index(service)] = again
                    self._write_targets()
                    continue
                if service.process.poll() is not None:
                    raise LaunchError(
                        f"{service.name} exited with {service.process.returncode}; "
                        f"log {service.log_path}:\n{_tail(service.log_path)}"
                    )
                if STARTED_MARK in service.log_path.read_text(errors="replace"):
                    waiting.remove(service)
            if waiting and time.monotonic() > deadline:
                names = ", ".join(s.name for s in waiting)
                raise LaunchError(
                    f"{names} not started within {timeout:.0f}s; "
                    f"log {waiting[0].log_path}:\n{_tail(waiting[0].log_path)}"
                )
            time.sleep(0.2)

    def http_urls(self, service: str) -> list[str]:
        """Base URLs of the running replicas' HTTP APIs, e.g. the alert webhook's."""
        return [
            f"http://127.0.0.1:{running.http_port}"
            for running in self.running
            if running.name == service and running.http_port and running.process.poll() is None
        ]

    def _targets_file(self) -> Path | None:
        if self.stack.prometheus_targets is None:
            return None
        return self.stack.prometheus_targets / f"canaryflow-{self.prefix}.json"

    def _write_targets(self) -> None:
        path = self._targets_file()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        groups = [
            {
                "targets": [f"127.0.0.1:{service.metrics_port}"],
                "labels": {"service": service.name, "canaryflow_prefix": self.prefix},
            }
            for service in self.running
            if service.process.poll() is None
        ]
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(groups))
        temporary.replace(path)  # Prometheus must never read a half-written file

    def stop(self, name: str | None = None, timeout: float = 10) -> None:
        """Stop every service (or those called ``name``): SIGTERM, then SIGKILL."""
        self._stop_replicas([s for s in self.running if name is None or s.name == name], timeout)

    def _stop_replicas(self, chosen: list[RunningService], timeout: float = 10) -> None:
        for service in chosen:
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        for service in chosen:
            try:
                service.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()
            if service in self.running:  # a kill from another thread may have removed it
                self.running.remove(service)
        if self.running:
            self._write_targets()
        elif (path := self._targets_file()) is not None:
            path.unlink(missing_ok=True)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _lost_its_port(service: RunningService) -> bool:
    return "Address already in use" in service.log_path.read_text(errors="replace")


async def delete_jetstream_state(nc: NatsClient, prefix: str) -> None:
    """Delete the streams and the KV buckets of one canaryflow prefix, if they exist: what
    the services of a launcher on ``prefix`` created."""
    subjects = Subjects(prefix)
    js = nc.jetstream()
    for stream in (
        subjects.events_stream.name,
        subjects.deadletter_stream.name,
        f"KV_{subjects.releases_bucket}",
        f"KV_{subjects.analyses_bucket}",
    ):
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(stream)
