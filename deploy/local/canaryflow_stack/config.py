"""Where the stack lives: pinned versions, loopback ports, and the folders it uses.

Why one module: every other part (builds, server command lines, health checks, status) must
agree on the same ports and paths, and a person overriding a port through the environment
must see the override everywhere. Everything is resolved once into a frozen ``Settings``.

Folders:
- the build cache is outside the clone (``~/.cache/canaryflow`` or ``$CANARYFLOW_CACHE``) and
  keyed by version, so only the first run on a machine pays for a build;
- the state folder is ``.stack/`` inside the clone (gitignored): logs (``.stack/logs``, the one
  log folder), data dirs, pid files, generated configs and ``env.json``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
"""The clone: this file is deploy/local/canaryflow_stack/config.py."""

DEPLOY_DIR = REPO_ROOT / "deploy"

# Pinned versions of everything built or downloaded. Changing one changes its cache key.
KUBERNETES_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.7.0"
JAEGER_VERSION = "v1.76.0"  # Go module github.com/jaegertracing/jaeger, i.e. Jaeger v2's cmd/jaeger
HELM_VERSION = (
    "v4.3.2"  # Go module helm.sh/helm/v4: the chart in deploy/helm is linted and installed with it
)
TRAEFIK_VERSION = "v3.6.12"  # Go module github.com/traefik/traefik/v3 (v3.7 needs refused modules)

# Default loopback ports. Each can be overridden by the environment variable named beside it.
DEFAULT_PORTS: dict[str, tuple[str, int]] = {
    "nats": ("CANARYFLOW_NATS_PORT", 14222),
    "nats_monitor": ("CANARYFLOW_NATS_MONITOR_PORT", 18222),
    "etcd": ("CANARYFLOW_ETCD_PORT", 12379),
    "etcd_peer": ("CANARYFLOW_ETCD_PEER_PORT", 12380),
    "apiserver": ("CANARYFLOW_APISERVER_PORT", 16443),
    "controller_manager": ("CANARYFLOW_CONTROLLER_MANAGER_PORT", 10257),
    "scheduler": ("CANARYFLOW_SCHEDULER_PORT", 10259),
    "kwok": ("CANARYFLOW_KWOK_PORT", 10247),
    "prometheus": ("CANARYFLOW_PROMETHEUS_PORT", 19090),
    "jaeger_otlp_grpc": ("CANARYFLOW_JAEGER_OTLP_GRPC_PORT", 14317),
    "jaeger_otlp_http": ("CANARYFLOW_JAEGER_OTLP_HTTP_PORT", 14318),
    "jaeger_query": ("CANARYFLOW_JAEGER_QUERY_PORT", 16686),
    "jaeger_query_grpc": ("CANARYFLOW_JAEGER_QUERY_GRPC_PORT", 16685),
    "pods": ("CANARYFLOW_PODS_PORT", 19465),
    "users": ("CANARYFLOW_USERS_PORT", 19467),
    "gateway": ("CANARYFLOW_GATEWAY_PORT", 18000),
    "gateway_metrics": ("CANARYFLOW_GATEWAY_METRICS_PORT", 18001),
}

# The ports reachable from the machine's own 127.0.0.1 (forwarded into the stack's network
# namespace, see netns.py); every other port exists only inside the namespace.
FORWARDED = (
    "nats",
    "nats_monitor",
    "apiserver",
    "prometheus",
    "jaeger_otlp_grpc",
    "jaeger_otlp_http",
    "jaeger_query",
    "gateway",
)

HOST = "127.0.0.1"
# JetStream nodes the stack runs: 1 (the default: quick, what most tests need) or 3 (a
# cluster with R3 streams, as production should run it); CANARYFLOW_NATS_NODES sets it.
NATS_NODES_VARIABLE = "CANARYFLOW_NATS_NODES"
# Inside the namespace only: node i (from 2) listens on client port + NODE_PORT_STEP*(i-1)
# and monitor port + the same; every node's cluster route on client port + ROUTE_OFFSET + i.
NODE_PORT_STEP = 10
ROUTE_OFFSET = 100


def nats_nodes() -> int:
    raw = os.environ.get(NATS_NODES_VARIABLE, "1").strip() or "1"
    if raw not in ("1", "3"):
        raise ValueError(f"{NATS_NODES_VARIABLE}={raw!r}: the stack runs 1 or 3 NATS nodes")
    return int(raw)


KWOK_NODE_COUNT = 3


def _port(name: str) -> int:
    env, default = DEFAULT_PORTS[name]
    raw = os.environ.get(env)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SystemExit(f"{env}={raw!r} is not a port number") from exc
    if not 0 < value < 65536:
        raise SystemExit(f"{env}={raw!r} is not a port number")
    return value


@dataclass(frozen=True)
class Ports:
    """The loopback ports of every server, after environment overrides."""

    nats: int
    nats_monitor: int
    etcd: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int
    prometheus: int
    jaeger_otlp_grpc: int
    jaeger_otlp_http: int
    jaeger_query: int
    jaeger_query_grpc: int
    users: int
    pods: int
    gateway: int
    gateway_metrics: int

    @classmethod
    def from_env(cls) -> Ports:
        return cls(**{name: _port(name) for name in DEFAULT_PORTS})


@dataclass(frozen=True)
class Settings:
    """Resolved folders, ports and tools for one invocation of the stack manager."""

    repo: Path
    state: Path
    cache: Path
    ports: Ports
    python: Path
    nats_nodes: int = 1

    @classmethod
    def from_env(cls) -> Settings:
        cache = Path(os.environ.get("CANARYFLOW_CACHE") or Path.home() / ".cache" / "canaryflow")
        state = Path(os.environ.get("CANARYFLOW_STACK_DIR") or REPO_ROOT / ".stack")
        venv_python = REPO_ROOT / ".venv" / "bin" / "python"
        python = venv_python if venv_python.exists() else Path(sys.executable)
        return cls(
            repo=REPO_ROOT,
            state=state.resolve(),
            cache=cache.expanduser().resolve(),
            ports=Ports.from_env(),
            python=python,
            nats_nodes=nats_nodes(),
        )

    def nats_node_ports(self, node: int) -> tuple[int, int, int]:
        """(client, monitor, route) ports of JetStream node ``node`` (1-based)."""
        shift = NODE_PORT_STEP * (node - 1)
        client = self.ports.nats + shift
        return client, self.ports.nats_monitor + shift, self.ports.nats + ROUTE_OFFSET + node

    def forwarded_ports(self) -> dict[str, int]:
        """Every port reachable from the machine's 127.0.0.1, by forwarder name: FORWARDED,
        and in a cluster the other nodes' client ports (a client must reach every node)."""
        ports = {name: getattr(self.ports, name) for name in FORWARDED}
        for node in range(2, self.nats_nodes + 1):
            ports[f"nats-{node}"] = self.nats_node_ports(node)[0]
        return ports

    def nats_urls(self) -> list[str]:
        """Every node's client URL: TLS, verified against the stack's NATS CA."""
        return [
            f"tls://{HOST}:{self.nats_node_ports(node)[0]}"
            for node in range(1, self.nats_nodes + 1)
        ]

    # Folders inside .stack/ -------------------------------------------------------------
    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def pids(self) -> Path:
        return self.state / "pids"

    @property
    def data(self) -> Path:
        return self.state / "data"

    @property
    def kube(self) -> Path:
        """Certificates, keys, the token file and per-component kubeconfigs."""
        return self.state / "kube"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig handed to clients (tests, services, the data plane)."""
        return self.state / "kubeconfig"

    @property
    def prometheus_dir(self) -> Path:
        return self.state / "prometheus"

    @property
    def prometheus_targets(self) -> Path:
        """Drop ``*.json`` file_sd files here to have Prometheus scrape a /metrics endpoint."""
        return self.prometheus_dir / "targets"

    @property
    def env_json(self) -> Path:
        return self.state / "env.json"

    @property
    def env_sh(self) -> Path:
        return self.state / "env"

    @property
    def sockets(self) -> Path:
        """The forwarders' Unix sockets (they cross from the machine into the namespace)."""
        return self.state / "sockets"

    def log(self, server: str) -> Path:
        return self.logs / f"{server}.log"

    @property
    def audit_log(self) -> Path:
        """The API server's audit log: requests made by workloads' service accounts."""
        return self.logs / "kube-apiserver-audit.log"

    # The version-keyed build cache ------------------------------------------------------
    @property
    def stack_cache(self) -> Path:
        return self.cache / "stack"

    def component_dir(self, component: str, version: str) -> Path:
        return self.stack_cache / f"{component}-{version}"
