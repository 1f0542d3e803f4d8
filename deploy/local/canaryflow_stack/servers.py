"""The servers of the stack: command line, ports, health probe, timeout and likely failure cause.

Why declarative: ``up``, ``down``, ``status`` and ``restart`` all walk the same list, so a
server's ports, log file and probe are defined once. Servers are grouped in phases: everything
in a phase starts together and is waited for together, and a phase only starts when the one
before it is healthy (the API server needs etcd; the controllers, scheduler and kwok need the
API server; the pods' server and the users need the cluster).

Every server runs in the stack's network namespace (``netns.py``) except the host halves of
the forwarders, which listen on the machine's 127.0.0.1 (``side="host"``).
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from string import Template

from . import build, cluster, config, natsauth, netns, pki
from .cluster import ClusterChoice
from .config import HOST, Settings
from .health import Probe, all_of, etcd_check, http_probe
from .procs import PidRecord


@dataclass
class Server:
    name: str
    phase: int
    argv: list[str]
    ports: dict[str, int]
    probe: Probe
    timeout: float
    cause: str
    """What usually makes this server fail to become healthy."""
    env: dict[str, str] = field(default_factory=dict)
    prepare: Callable[[], None] | None = None
    """Runs before the process starts (configs, data dirs, objects it needs)."""
    binary: Path | None = None
    """The executable that must exist; None when it is a module run by the venv's python."""
    side: str = "stack"
    """``stack`` (in the stack's network namespace) or ``host`` (the machine's own)."""
    outdated: Callable[[], bool] | None = None
    """True when the running process was started from a config this code would write
    differently (e.g. NATS permissions changed by a pull): ``up`` restarts it then."""

    def endpoint_summary(self) -> str:
        return ",".join(str(p) for p in self.ports.values())


ORDER = [
    "netns",
    "nats",
    "nats-2",
    "nats-3",
    "etcd",
    "prometheus",
    "jaeger",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "pods",
    "users",
    "traefik",
    *(f"forward-{name}-in" for name in config.FORWARDED),
    *(f"forward-{name}" for name in config.FORWARDED),
    *(f"forward-{name}{side}" for name in ("nats-2", "nats-3") for side in ("-in", "")),
]
KUBE_SERVERS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


@dataclass(frozen=True)
class Binaries:
    nats: Path
    etcd: Path
    kube_bin: Path
    kwok: Path
    prometheus: Path
    jaeger: Path
    traefik: Path
    socat: Path


def locate_binaries(settings: Settings) -> Binaries:
    """Where each binary is (or will be) in the cache, without building anything."""
    proms = sorted(settings.stack_cache.glob("prometheus-*/bin/prometheus"))
    return Binaries(
        nats=settings.python.parent / "nats-server",
        etcd=build.go_bin_dir(settings, "etcd") / "etcd",
        kube_bin=build.go_bin_dir(settings, "kubernetes"),
        kwok=build.go_bin_dir(settings, "kwok") / "kwok",
        prometheus=proms[-1] if proms else settings.stack_cache / "prometheus-?/bin/prometheus",
        jaeger=build.go_bin_dir(settings, "jaeger") / "jaeger",
        traefik=build.go_bin_dir(settings, "traefik") / "traefik",
        socat=Path(shutil.which("socat") or "/usr/bin/socat"),
    )


def plan(settings: Settings, choice: ClusterChoice, bins: Binaries) -> list[Server]:
    """Every server the stack runs for this cluster choice, in start order."""
    servers = [
        netns_holder(settings),
        *(_nats(settings, bins, node) for node in range(1, settings.nats_nodes + 1)),
        _prometheus(settings, bins, choice.kind == "local"),
        _jaeger(settings, bins),
    ]
    if choice.kind == "local":
        servers += _kubernetes(settings, bins)
        servers.append(_traefik(settings, bins, choice))
        if build.python_has_module(settings, "canaryflow.dataplane"):
            servers.append(_pods(settings, choice))
            servers.append(_users(settings, choice))
    servers += _forwarders(settings, bins)
    return sorted(servers, key=lambda s: (s.phase, ORDER.index(s.name)))


def netns_holder(settings: Settings) -> Server:
    """The process that holds the stack's network namespace (first up, last down)."""
    pidfile = settings.pids / "netns.json"

    def probe() -> str | None:
        record = PidRecord.load(pidfile)
        if record is None:
            return "no pid file yet"
        return netns.holder_ready(settings.state, record.pid)

    return Server(
        name="netns",
        phase=-1,
        argv=[str(settings.python), "-m", "canaryflow_stack.netns", str(settings.state)],
        ports={},
        probe=probe,
        timeout=15,
        cause="creating a network namespace needs root (CAP_SYS_ADMIN) and the `ip` command "
        "(Debian's iproute2)",
        side="host",
    )


def _forwarders(settings: Settings, bins: Binaries) -> list[Server]:
    """socat pairs: the machine's 127.0.0.1:PORT -> a Unix socket -> the namespace's PORT."""
    servers = []
    for name, port in settings.forwarded_ports().items():
        sock = settings.sockets / f"{name}.sock"
        servers.append(
            Server(
                name=f"forward-{name}-in",
                phase=4,
                argv=[
                    str(bins.socat),
                    f"UNIX-LISTEN:{sock},fork,unlink-early,mode=600",
                    f"TCP:{HOST}:{port}",
                ],
                ports={},
                probe=_socket_probe(sock),
                timeout=10,
                cause="socat could not create its socket in " + str(settings.sockets),
                prepare=lambda: settings.sockets.mkdir(parents=True, exist_ok=True),
                binary=bins.socat,
            )
        )
        servers.append(
            Server(
                name=f"forward-{name}",
                phase=4,
                argv=[
                    str(bins.socat),
                    f"TCP-LISTEN:{port},bind={HOST},reuseaddr,fork",
                    f"UNIX-CONNECT:{sock}",
                ],
                ports={name: port},
                probe=partial(netns.on_host, partial(_tcp_probe, port)),
                timeout=10,
                cause=f"socat could not listen on the machine's {HOST}:{port}",
                binary=bins.socat,
                side="host",
            )
        )
    return servers


def _socket_probe(path: Path) -> Probe:
    def probe() -> str | None:
        return None if path.is_socket() else f"{path} does not exist yet"

    return probe


def _tcp_probe(port: int) -> str | None:
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            return None
    except OSError as exc:
        return f"connect {HOST}:{port}: {exc}"


def _url(port: int, path: str = "", scheme: str = "http") -> str:
    return f"{scheme}://{HOST}:{port}{path}"


def nats_node_name(node: int) -> str:
    """Node 1 is ``nats`` (its client port is the one forwarded), the others ``nats-<n>``."""
    return "nats" if node == 1 else f"nats-{node}"


def _nats(settings: Settings, bins: Binaries, node: int = 1) -> Server:
    name = nats_node_name(node)
    client, monitor, _ = settings.nats_node_ports(node)
    conf = settings.state / "nats" / f"{name}.conf"
    # A cluster's stores are its own: a single node's data is not a cluster member's.
    store = settings.data / (name if settings.nats_nodes == 1 else f"cluster-{name}")

    def prepare() -> None:
        store.mkdir(parents=True, exist_ok=True)
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(nats_config(settings, node, store))

    def outdated() -> bool:
        return not conf.exists() or conf.read_text() != nats_config(settings, node, store)

    return Server(
        name=name,
        phase=0,
        argv=[str(bins.nats), "-c", str(conf)],
        ports={"client": client, "monitor": monitor},
        # A cluster node is healthy once JetStream has a meta leader and is current (the full
        # /healthz), which needs a quorum: the nodes start in one phase, each waits for the
        # others. A single node needs only JetStream enabled.
        probe=http_probe(
            _url(
                monitor, "/healthz" if settings.nats_nodes > 1 else "/healthz?js-enabled-only=true"
            )
        ),
        timeout=30 if settings.nats_nodes == 1 else 60,
        cause="the JetStream store dir is unusable (disk full, permissions) or the config is bad",
        prepare=prepare,
        binary=bins.nats,
        outdated=outdated,
    )


def nats_config(settings: Settings, node: int, store: Path) -> str:
    """One node's configuration; with several nodes, a cluster whose streams can be R3.

    In a cluster every write is fsynced before it is acknowledged (``sync_interval: always``):
    Jepsen's 2025 analysis of NATS 2.12 lost acknowledged writes when nodes crashed together
    under the default (an fsync every 2 minutes). A single node keeps the default: it is the
    quick developer stack, and a lone node cannot keep a write through a disk loss anyway.
    """
    client, monitor, route = settings.nats_node_ports(node)
    lines = [
        "# Written by canaryflow_stack: NATS with JetStream on file storage, loopback only;",
        "# clients over TLS, each an NKey identity with its permissions (natsauth.py).",
        f'server_name: "canaryflow-{node}"',
        f'listen: "{HOST}:{client}"',
        f'http: "{HOST}:{monitor}"',
        natsauth.server_block(settings),
    ]
    if settings.nats_nodes == 1:
        lines.append(f'jetstream {{\n  store_dir: "{store}"\n}}')
        return "\n".join(lines) + "\n"
    routes = ", ".join(
        f'"nats-route://{HOST}:{settings.nats_node_ports(other)[2]}"'
        for other in range(1, settings.nats_nodes + 1)
        if other != node
    )
    lines += [
        f'jetstream {{\n  store_dir: "{store}"\n  sync_interval: always\n}}',
        f'cluster {{\n  name: "canaryflow"\n  listen: "{HOST}:{route}"\n  routes: [{routes}]\n'
        f"{natsauth.route_tls(settings)}}}",
    ]
    return "\n".join(lines) + "\n"


def _prometheus(settings: Settings, bins: Binaries, local: bool) -> Server:
    p = settings.ports
    conf = settings.prometheus_dir / "prometheus.yml"
    data = settings.data / "prometheus"

    def prepare() -> None:
        settings.prometheus_targets.mkdir(parents=True, exist_ok=True)
        data.mkdir(parents=True, exist_ok=True)
        folder = config.DEPLOY_DIR / "prometheus"
        jobs = ""
        if local:
            jobs = Template((folder / "kubernetes-jobs.yml.in").read_text()).substitute(
                pods_sd=_url(p.pods, "/sd"),
                gateway_metrics=f"{HOST}:{p.gateway_metrics}",
                users=f"{HOST}:{p.users}",
            )
        template = Template((folder / "prometheus.yml.in").read_text())
        conf.write_text(
            template.substitute(
                targets_dir=str(settings.prometheus_targets),
                prometheus=f"{HOST}:{p.prometheus}",
                kubernetes_jobs=jobs,
            )
        )

    return Server(
        name="prometheus",
        phase=0,
        argv=[
            str(bins.prometheus),
            f"--config.file={conf}",
            f"--storage.tsdb.path={data}",
            "--storage.tsdb.retention.time=6h",
            f"--web.listen-address={HOST}:{p.prometheus}",
            "--web.enable-lifecycle",
        ],
        ports={"http": p.prometheus},
        probe=http_probe(_url(p.prometheus, "/-/ready")),
        timeout=60,
        cause="a bad generated config (.stack/prometheus/prometheus.yml) or a locked/corrupt "
        "TSDB in .stack/data/prometheus",
        prepare=prepare,
        binary=bins.prometheus,
    )


def _jaeger(settings: Settings, bins: Binaries) -> Server:
    p = settings.ports
    conf = settings.state / "jaeger" / "jaeger.yaml"

    def prepare() -> None:
        # A copy in .stack/, so every process of the stack names the stack's folder.
        conf.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(config.DEPLOY_DIR / "local" / "jaeger.yaml", conf)

    return Server(
        name="jaeger",
        phase=0,
        argv=[str(bins.jaeger), "--config", str(conf)],
        ports={
            "otlp-grpc": p.jaeger_otlp_grpc,
            "otlp-http": p.jaeger_otlp_http,
            "query": p.jaeger_query,
            "query-grpc": p.jaeger_query_grpc,
        },
        probe=http_probe(_url(p.jaeger_query, "/api/services")),
        timeout=60,
        cause="an invalid deploy/local/jaeger.yaml for this Jaeger version",
        prepare=prepare,
        env={
            "CANARYFLOW_JAEGER_OTLP_GRPC": f"{HOST}:{p.jaeger_otlp_grpc}",
            "CANARYFLOW_JAEGER_OTLP_HTTP": f"{HOST}:{p.jaeger_otlp_http}",
            "CANARYFLOW_JAEGER_QUERY": f"{HOST}:{p.jaeger_query}",
            "CANARYFLOW_JAEGER_QUERY_GRPC": f"{HOST}:{p.jaeger_query_grpc}",
        },
        binary=bins.jaeger,
    )


# Metadata (who, verb, resource, namespace, code) of every request by a workload's service
# account; nothing for people, the control plane's own controllers or KWOK.
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    userGroups: ["system:serviceaccounts:kube-system"]
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
"""


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _kubernetes(settings: Settings, bins: Binaries) -> list[Server]:
    p = settings.ports
    audit_policy = settings.state / "audit-policy.yaml"
    f = pki.files(settings)
    token = pki.admin_token(settings) if f.tokens_csv.exists() else ""
    etcd_url = _url(p.etcd)
    kube = bins.kube_bin
    etcd_data = settings.data / "etcd"

    etcd = Server(
        name="etcd",
        phase=0,
        argv=[
            str(bins.etcd),
            "--name=canaryflow",
            f"--data-dir={etcd_data}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={_url(p.etcd_peer)}",
            f"--initial-advertise-peer-urls={_url(p.etcd_peer)}",
            f"--initial-cluster=canaryflow={_url(p.etcd_peer)}",
            "--unsafe-no-fsync",
            "--quota-backend-bytes=2147483648",
            "--auto-compaction-retention=5m",
            "--log-level=warn",
        ],
        ports={"client": p.etcd, "peer": p.etcd_peer},
        probe=http_probe(_url(p.etcd, "/health"), check=etcd_check),
        timeout=30,
        cause="a data dir written by another etcd version or another member name "
        f"(remove {etcd_data} to start afresh)",
        prepare=lambda: etcd_data.parent.mkdir(parents=True, exist_ok=True),
        binary=bins.etcd,
    )
    apiserver = Server(
        name="kube-apiserver",
        phase=1,
        argv=[
            str(kube / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            f"--bind-address={HOST}",
            f"--advertise-address={HOST}",
            f"--secure-port={p.apiserver}",
            f"--tls-cert-file={f.server_crt}",
            f"--tls-private-key-file={f.server_key}",
            f"--client-ca-file={f.ca_crt}",
            f"--service-cluster-ip-range={pki.SERVICE_CIDR}",
            f"--service-account-issuer={pki.ISSUER}",
            f"--service-account-key-file={f.sa_pub}",
            f"--service-account-signing-key-file={f.sa_key}",
            f"--token-auth-file={f.tokens_csv}",
            "--authorization-mode=RBAC",
            "--allow-privileged=true",
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            "--event-ttl=30m",
            # What each workload's ServiceAccount asked for (tests/integration/test_helm_chart.py
            # shows every rule of the chart is used): service accounts outside kube-system only.
            f"--audit-policy-file={audit_policy}",
            f"--audit-log-path={settings.audit_log}",
            "--audit-log-format=json",
            "--audit-log-maxsize=50",
            "--audit-log-maxbackup=1",
        ],
        ports={"https": p.apiserver},
        prepare=lambda: _write(audit_policy, AUDIT_POLICY),
        probe=http_probe(_url(p.apiserver, "/readyz", "https"), verify=str(f.ca_crt), token=token),
        timeout=120,
        cause="etcd unreachable or flags/certificates this Kubernetes version rejects",
        binary=kube / "kube-apiserver",
    )

    def component(name: str, identity: str, port: int, extra: list[str]) -> Server:
        kc = f.kubeconfig(identity)
        return Server(
            name=name,
            phase=2,
            argv=[
                str(kube / name),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                f"--bind-address={HOST}",
                f"--secure-port={port}",
                "--leader-elect=false",
                *extra,
            ],
            ports={"https": port},
            probe=http_probe(_url(port, "/healthz", "https"), verify=False),
            timeout=60,
            cause="it cannot reach or authenticate to the API server (see its log)",
            binary=kube / name,
        )

    controller_manager = component(
        "kube-controller-manager",
        "controller-manager",
        p.controller_manager,
        [
            f"--service-account-private-key-file={f.sa_key}",
            f"--root-ca-file={f.ca_crt}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={f.ca_crt}",
            f"--cluster-signing-key-file={f.ca_key}",
            # Its client's default is 20 requests/s (burst 30): a thousand targets' pods then
            # queue in the controller manager for minutes (bench/scale.py's "step in place").
            "--kube-api-qps=300",
            "--kube-api-burst=600",
            "--concurrent-deployment-syncs=20",
            "--concurrent-replicaset-syncs=20",
        ],
    )
    scheduler = component("kube-scheduler", "scheduler", p.scheduler, [])

    def kube_api() -> cluster.KubeApi:
        return cluster.KubeApi(pki.server_url(settings), pki.admin_token(settings), f.ca_crt)

    def prepare_nodes() -> None:
        api = kube_api()
        try:
            cluster.ensure_nodes(api)
            cluster.release_node_leases(api)
        finally:
            api.close()

    def nodes_ready() -> str | None:
        api = kube_api()
        try:
            return cluster.nodes_ready(api) or cluster.leases_fresh(api)
        finally:
            api.close()

    kwok = Server(
        name="kwok",
        phase=2,
        argv=[
            str(bins.kwok),
            f"--kubeconfig={f.kubeconfig('kwok')}",
            f"--config={config.DEPLOY_DIR / 'kwok' / 'stages.yaml'}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={cluster.KWOK_ANNOTATION}=fake",
            "--cidr=10.244.0.1/16",
            "--node-ip=10.240.0.1",
            f"--node-lease-duration-seconds={cluster.LEASE_SECONDS}",
            f"--server-address={HOST}:{p.kwok}",
        ],
        ports={"http": p.kwok},
        probe=all_of(http_probe(_url(p.kwok, "/healthz")), nodes_ready),
        timeout=90,
        cause="an invalid stage in deploy/kwok/stages.yaml, or the API server refused kwok",
        prepare=prepare_nodes,
        binary=bins.kwok,
    )
    return [etcd, apiserver, controller_manager, scheduler, kwok]


GATEWAY_BUCKETS = "0.005,0.01,0.025,0.05,0.075,0.1,0.15,0.2,0.3,0.4,0.5,0.75,1,1.5,2,3,5,10"
"""Finer than Traefik's default 0.1/0.3/1.2/5 s, and the same as the pods' own histogram."""


def _traefik(settings: Settings, bins: Binaries, choice: ClusterChoice) -> Server:
    """Traefik as the cluster's gateway: the CRD provider, watching the stack's API server."""
    p = settings.ports
    f = pki.files(settings)
    crds = bins.traefik.parent / "traefik-crds.yml"

    def prepare() -> None:
        api = cluster.KubeApi(pki.server_url(settings), pki.admin_token(settings), f.ca_crt)
        try:
            cluster.apply_crds(api, crds, field_manager="canaryflow-stack")
        finally:
            api.close()

    return Server(
        name="traefik",
        phase=3,
        argv=[
            str(bins.traefik),
            f"--entrypoints.web.address={HOST}:{p.gateway}",
            f"--entrypoints.metrics.address={HOST}:{p.gateway_metrics}",
            "--ping=true",
            "--ping.entrypoint=metrics",
            "--metrics.prometheus=true",
            "--metrics.prometheus.entrypoint=metrics",
            f"--metrics.prometheus.buckets={GATEWAY_BUCKETS}",
            "--providers.kubernetescrd=true",
            # With no endpoints left, answer 503 for that service alone, never drop (and 404)
            # the whole weighted service its siblings are in.
            "--providers.kubernetescrd.allowEmptyServices=true",
            # A rollback is a second configuration change within seconds of the first: by
            # default Traefik holds it back for 2 s.
            "--providers.providersThrottleDuration=100ms",
            "--log.level=INFO",
            "--log.nocolor=true",
        ],
        ports={"web": p.gateway, "metrics": p.gateway_metrics},
        probe=http_probe(_url(p.gateway_metrics, "/ping")),
        timeout=60,
        cause="its CRDs were not applied, or it cannot reach the API server (see its log)",
        env={"KUBECONFIG": choice.kubeconfig.split(os.pathsep)[0]},
        prepare=prepare,
        binary=bins.traefik,
    )


def _pods(settings: Settings, choice: ClusterChoice) -> Server:
    """The process that makes every Ready pod answer HTTP on its own address."""
    return _dataplane(settings, choice, "pods", "canaryflow.dataplane.pods", settings.ports.pods)


def _dataplane(
    settings: Settings, choice: ClusterChoice, name: str, module: str, port: int
) -> Server:
    """A data plane process of the stack (``canaryflow.dataplane.process``), in the namespace."""
    return Server(
        name=name,
        phase=3,
        argv=[
            str(settings.python),
            "-m",
            module,
            "--kubeconfig",
            choice.kubeconfig.split(os.pathsep)[0],
            "--listen",
            f"{HOST}:{port}",
        ],
        ports={"http": port},
        probe=http_probe(_url(port, "/healthz")),
        timeout=60,
        cause=f"a bug in {module}, or it cannot reach the cluster",
    )


def _users(settings: Settings, choice: ClusterChoice) -> Server:
    """Users for every Service labelled canaryflow.io/users=true, straight to its Ready pods."""
    return _dataplane(settings, choice, "users", "canaryflow.dataplane.load", settings.ports.users)
