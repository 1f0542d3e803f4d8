"""``up``, ``down``, ``status`` and ``restart``: the life cycle of the whole stack.

Why it works the way it does:
- ``up`` is idempotent. A server whose pid file names a live process that is still the one the
  stack started (same start time and executable) and that answers its health probe is left
  alone; a stale pid file is removed and reported; a port held by a foreign process is found
  before anything starts and reported with the owner.
- ``up`` either finishes with every server healthy or stops what it started in this run and
  says what is still running from before, so nothing runs that nobody knows about.
- ``down`` only stops processes recorded in pid files, after checking each is still ours.
- The result of ``up`` is ``.stack/env.json`` (and ``.stack/env`` for shells): the endpoints
  clients and tests read, and which cluster is in use.
- Every server runs in the stack's own network namespace (``netns.py``): ``up``, ``status``
  and ``restart`` start its holder if needed and enter it first, so their probes reach the
  servers on the namespace's 127.0.0.1; the forwarders' listening halves run on the
  machine's side (``Server.side``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

from . import build, cluster, natsauth, netns, pki, procs
from .cluster import ClusterChoice, choose_cluster
from .config import DEPLOY_DIR, HOST, NATS_NODES_VARIABLE, Settings
from .errors import StackError
from .procs import PidRecord
from .servers import KUBE_SERVERS, ORDER, Binaries, Server, locate_binaries, plan

T = TypeVar("T")


def say(message: str) -> None:
    # Progress is best effort: a closed stdout (`up | head`) must not abort a start or a stop.
    with contextlib.suppress(OSError):
        print(message, flush=True)


def pidfile(settings: Settings, name: str) -> Path:
    return settings.pids / f"{name}.json"


def _ours(settings: Settings, name: str) -> PidRecord | None:
    record = PidRecord.load(pidfile(settings, name))
    return record if record is not None and procs.is_ours(record) else None


def _clean_stale(settings: Settings, name: str) -> None:
    path = pidfile(settings, name)
    record = PidRecord.load(path)
    if path.exists() and (record is None or not procs.is_ours(record)):
        what = f"pid {record.pid}" if record else "unreadable"
        say(f"{name}: stale pid file ({what} is not running or is another program now); removed")
        path.unlink(missing_ok=True)


# Generated from the policy models by `python -m canaryflow_contracts.generate`.
CRD_FILE = DEPLOY_DIR / "helm" / "canaryflow" / "crds" / "releasepolicies.canaryflow.io.json"
# The subject prefix of the demo and of services started without CANARYFLOW_PREFIX (it is
# canaryflow_contracts.DEFAULT_PREFIX; the stack manager imports no canaryflow code).
DEFAULT_PREFIX = "canaryflow"


def _base_env(settings: Settings, choice: ClusterChoice) -> dict[str, str]:
    env = dict(os.environ)
    # Loopback traffic must never go through a proxy someone configured for the internet.
    no_proxy = ",".join(filter(None, [env.get("NO_PROXY", ""), HOST, "localhost"]))
    env["NO_PROXY"] = env["no_proxy"] = no_proxy
    env.update(endpoints(settings, choice))
    return env


def endpoints(settings: Settings, choice: ClusterChoice) -> dict[str, str]:
    """What clients need to reach the stack; written to .stack/env.json by ``up``."""
    p = settings.ports
    return {
        "NATS_URL": ",".join(settings.nats_urls()),
        # TLS and the admin identity (natsauth.py); every identity's seed is in the folder.
        **natsauth.client_env(settings),
        "CANARYFLOW_NATS_IDENTITIES": str(natsauth.files(settings).identities),
        # Streams and KV buckets replicated on every node of a cluster (R3), else R1.
        "CANARYFLOW_STREAM_REPLICAS": str(settings.nats_nodes),
        "NATS_MONITOR_URL": f"http://{HOST}:{p.nats_monitor}",
        "KUBECONFIG": choice.kubeconfig,
        "PROMETHEUS_URL": f"http://{HOST}:{p.prometheus}",
        "PROMETHEUS_TARGETS_DIR": str(settings.prometheus_targets),
        "JAEGER_QUERY_URL": f"http://{HOST}:{p.jaeger_query}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{p.jaeger_otlp_http}",
        "CANARYFLOW_OTLP_GRPC_ENDPOINT": f"http://{HOST}:{p.jaeger_otlp_grpc}",
        "CANARYFLOW_PREFIX": DEFAULT_PREFIX,
        "GATEWAY_URL": f"http://{HOST}:{p.gateway}",
        "GATEWAY_METRICS_URL": f"http://{HOST}:{p.gateway_metrics}",
        "PODS_URL": f"http://{HOST}:{p.pods}",
        "USERS_URL": f"http://{HOST}:{p.users}",
        "CANARYFLOW_CLUSTER": choice.kind,
        "CANARYFLOW_CLUSTER_DETAIL": choice.detail,
        "CANARYFLOW_STACK_DIR": str(settings.state),
        "CANARYFLOW_STACK_LOGS": str(settings.logs),
        # Helm 4, which installs deploy/helm/canaryflow (tests/integration/test_helm_chart.py).
        "HELM": str(build.go_bin_dir(settings, "helm") / "helm"),
        # The local API server's audit log of service accounts' requests ("" for yours).
        "CANARYFLOW_AUDIT_LOG": str(settings.audit_log) if choice.kind == "local" else "",
    }


def read_env(settings: Settings) -> dict[str, str] | None:
    try:
        raw = json.loads(settings.env_json.read_text())
    except (OSError, ValueError):
        return None
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else None


def current_choice(settings: Settings) -> ClusterChoice:
    """The cluster the last ``up`` chose (from env.json), or what it would choose now."""
    env = read_env(settings)
    if env and env.get("CANARYFLOW_CLUSTER") in ("local", "external") and env.get("KUBECONFIG"):
        return ClusterChoice(
            env["CANARYFLOW_CLUSTER"], env["KUBECONFIG"], env.get("CANARYFLOW_CLUSTER_DETAIL", "")
        )
    return choose_cluster(settings)


def _write_env(settings: Settings, env: dict[str, str]) -> None:
    settings.env_json.write_text(json.dumps(env, indent=2) + "\n")
    lines = ["# Written by canaryflow_stack up: `source .stack/env` to reach the local stack."]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    # The stack's kubectl (built with the control plane) first on PATH, the rest kept.
    kubectl_dir = build.go_bin_dir(settings, "kubernetes")
    if (kubectl_dir / "kubectl").exists():
        lines.append(f'export PATH={shlex.quote(str(kubectl_dir))}:"$PATH"')
    helm_dir = build.go_bin_dir(settings, "helm")
    if (helm_dir / "helm").exists():
        lines.append(f'export PATH={shlex.quote(str(helm_dir))}:"$PATH"')
    settings.env_sh.write_text("\n".join(lines) + "\n")


def _install_crd(settings: Settings) -> str:
    """The ReleasePolicy CRD in the local cluster, as generated from the policy models."""
    api = cluster.KubeApi(
        pki.server_url(settings), pki.admin_token(settings), pki.files(settings).ca_crt
    )
    try:
        return cluster.ensure_crd(api, json.loads(CRD_FILE.read_text()))
    except (RuntimeError, OSError, ValueError) as error:
        cause = f"the API server refused {CRD_FILE.name} (regenerate it, see its log)"
        raise StackError(
            "kube-apiserver", settings.log("kube-apiserver"), str(error), cause
        ) from error
    finally:
        api.close()


# up ----------------------------------------------------------------------------------------


@dataclass
class _Started:
    server: Server
    record: PidRecord


def _ensure_binaries(
    settings: Settings, choice: ClusterChoice
) -> tuple[Binaries, dict[str, float]]:
    timings: dict[str, float] = {}
    names = ["jaeger", "helm"] + (
        ["etcd", "kwok", "kubernetes", "traefik"] if choice.kind == "local" else []
    )
    for name in names:
        _, seconds = build.ensure_go_component(settings, name)
        if seconds is not None:
            timings[f"build {name}"] = seconds
    prometheus, seconds = build.ensure_prometheus(settings)
    if seconds is not None:
        timings["download prometheus"] = seconds
    nats = build.ensure_nats_server(settings)
    socat = build.ensure_socat(settings)
    located = locate_binaries(settings)
    bins = Binaries(
        nats=nats,
        etcd=located.etcd,
        kube_bin=located.kube_bin,
        kwok=located.kwok,
        prometheus=prometheus,
        jaeger=located.jaeger,
        traefik=located.traefik,
        socat=socat,
    )
    return bins, timings


def _check_ports(server: Server) -> None:
    for label, port in server.ports.items():
        if not _on_side(server, partial(procs.port_free, port)):
            owner = _on_side(server, partial(procs.port_owner, port))
            owner = owner or "an unknown process"
            env_name = _port_env_hint(port)
            raise StackError(
                server.name,
                None,
                f"port {HOST}:{port} ({label}) is already taken by {owner}",
                "another program, or a stack started from another clone, holds the port: "
                f"stop it, or choose another port with {env_name}",
            )


def _on_side(server: Server, fn: Callable[[], T]) -> T:
    """Run a port check in the namespace the server listens in."""
    return netns.on_host(fn) if server.side == "host" else fn()


def _port_env_hint(port: int) -> str:
    from .config import DEFAULT_PORTS, Ports

    ports = Ports.from_env()
    for name, (env_name, _) in DEFAULT_PORTS.items():
        if getattr(ports, name) == port:
            return env_name
    return "the CANARYFLOW_*_PORT variables"


def _start(settings: Settings, server: Server, choice: ClusterChoice) -> PidRecord:
    if server.binary is not None and not os.access(server.binary, os.X_OK):
        raise StackError(
            server.name, None, f"{server.binary} is missing", "the build cache was removed mid-run"
        )
    _check_ports(server)
    if server.prepare is not None:
        try:
            server.prepare()
        except StackError:
            raise
        except Exception as exc:
            raise StackError(
                server.name,
                settings.log(server.name),
                f"preparing to start failed: {type(exc).__name__}: {exc}",
                server.cause,
            ) from exc
    env = _base_env(settings, choice)
    env.update(server.env)
    # A child starts in its parent thread's namespace: host-side servers are spawned from a
    # thread moved back to the machine's namespace.
    return _on_side(
        server,
        lambda: procs.spawn(
            server.name, server.argv, settings.log(server.name), pidfile(settings, server.name), env
        ),
    )


def _wait_healthy(settings: Settings, server: Server, record: PidRecord) -> float:
    start = time.monotonic()
    deadline = start + server.timeout
    reason: str | None = "not probed yet"
    while True:
        if not procs.is_ours(record):
            pidfile(settings, server.name).unlink(missing_ok=True)
            raise _exited(settings, server, record, "while starting")
        reason = server.probe()
        if reason is None:
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            raise StackError(
                server.name,
                settings.log(server.name),
                f"not healthy within {server.timeout:.0f} s (last probe: {reason})",
                server.cause,
            )
        time.sleep(0.2)


def _dead_dependency(
    settings: Settings, healthy: list[tuple[Server, PidRecord]], failure: StackError
) -> StackError | None:
    """The failure of the first server that was healthy earlier in this run and is gone now."""
    for server, record in healthy:
        if procs.is_ours(record):
            continue
        return _exited(
            settings,
            server,
            record,
            f"after it was reported healthy, so {failure.server} could not start"
            f" ({failure.message})",
        )
    return None


def _exited(settings: Settings, server: Server, record: PidRecord, when: str) -> StackError:
    """The error for a server whose process has exited, with its exit code when known."""
    code = procs.exit_code(record.pid)
    how = f"exited with code {code}" if code is not None else "exited"
    return StackError(
        server.name,
        settings.log(server.name),
        f"the process (pid {record.pid}) {how} {when}",
        server.cause,
    )


@contextlib.contextmanager
def _exclusive(settings: Settings) -> Iterator[None]:
    """One up/down/restart at a time per state folder (test sessions may race to start it)."""
    settings.state.mkdir(parents=True, exist_ok=True)
    fd = os.open(settings.state / "lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("waiting for another canaryflow_stack command on this stack to finish…")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def up(settings: Settings) -> dict[str, str]:
    """Build what is missing, start what is not running, wait for health; return endpoints."""
    with _exclusive(settings):
        return _up(settings)


def _up(settings: Settings) -> dict[str, str]:
    t0 = time.monotonic()
    for d in (settings.state, settings.logs, settings.pids, settings.data):
        d.mkdir(parents=True, exist_ok=True)
    choice = choose_cluster(settings)
    say(f"cluster: {choice.kind} ({choice.detail})")
    reason = netns.require_root()
    if reason is not None:
        raise StackError("netns", None, "cannot make the stack's network namespace", reason)
    for name in _recorded_names(settings):
        _clean_stale(settings, name)
    _refuse_servers_outside_namespace(settings)
    _refuse_another_nats_shape(settings)
    # What runs now, from earlier runs: reported (never stopped) if this run fails.
    before = [name for name in _recorded_names(settings) if _ours(settings, name)]
    started: list[_Started] = []
    try:
        # Builds and installs need the registries: on the machine's side, never in the
        # namespace (it has no way out), even when this process has entered it already.
        bins, timings = netns.on_host(partial(_ensure_binaries, settings, choice))
        if choice.kind == "local":
            pki.ensure_credentials(settings)
        servers = plan(settings, choice, bins)
        pending = [s for s in servers if _ours(settings, s.name) is None]
        for server in pending:  # report every taken port before anything starts
            if server.side == "host" or inside(settings):
                _check_ports(server)

        healthy: list[tuple[Server, PidRecord]] = []
        for phase in sorted({s.phase for s in servers}):
            in_phase = [s for s in servers if s.phase == phase]
            waiting: list[tuple[Server, PidRecord, bool]] = []
            for server in in_phase:
                record = _ours(settings, server.name)
                if record is not None and (
                    record.argv != server.argv
                    or (server.outdated is not None and server.outdated())
                ):
                    # Another port, binary version, kubeconfig, cluster choice or config.
                    say(
                        f"{server.name}: running with other settings (pid {record.pid}), restarting"
                    )
                    procs.stop(record)
                    pidfile(settings, server.name).unlink(missing_ok=True)
                    before.remove(server.name)
                    record = None
                if record is not None:
                    waiting.append((server, record, False))
                    continue
                say(f"starting {server.name} (log: {settings.log(server.name)})")
                record = _start(settings, server, choice)
                started.append(_Started(server, record))
                waiting.append((server, record, True))
            for server, record, fresh in waiting:
                try:
                    seconds = _wait_healthy(settings, server, record)
                except StackError as failure:
                    # A server that depends on one that died says only that it cannot start.
                    dead = _dead_dependency(settings, healthy, failure)
                    if dead is None:
                        raise
                    raise dead from failure
                healthy.append((server, record))
                if fresh:
                    timings[f"start {server.name}"] = seconds
                    say(f"  {server.name} healthy in {seconds:.1f} s (pid {record.pid})")
                else:
                    say(f"{server.name}: already running and healthy (pid {record.pid})")
                if server.name == "netns" and not inside(settings):
                    enter(settings)
                    for other in pending:  # the namespace's own ports, now that we see them
                        if other.side == "stack":
                            _check_ports(other)
    except BaseException:
        # A failed server, Ctrl-C, SIGTERM, a broken pipe: never leave half a stack behind.
        _undo(settings, started, before)
        raise

    if choice.kind == "local":
        crd = _install_crd(settings)
        say(f"ReleasePolicy CRD {crd} ({CRD_FILE.relative_to(settings.repo)})")
    env = endpoints(settings, choice)
    _write_env(settings, env)
    total = time.monotonic() - t0
    timings["total"] = total
    _record_timings(settings, timings)
    say(
        f"stack is up in {total:.1f} s; endpoints in {settings.env_json} (shell: {settings.env_sh})"
    )
    return env


def inside(settings: Settings) -> bool:
    """Whether this process is in the stack's network namespace (its holder is running)."""
    record = _ours(settings, "netns")
    return record is not None and netns.inside(record.pid)


def enter(settings: Settings) -> bool:
    """Enter the stack's network namespace if its holder runs; False when it does not.

    Call it before any thread starts (setns moves only the calling thread).
    """
    record = _ours(settings, "netns")
    if record is None:
        return False
    try:
        netns.enter(record.pid)
    except netns.NetnsError as exc:
        raise StackError("netns", settings.log("netns"), str(exc), "see the message") from exc
    return True


def _refuse_another_nats_shape(settings: Settings) -> None:
    """A running NATS of one node cannot become a cluster node (nor the reverse) in place."""
    running = read_env(settings) or {}
    nodes = running.get("CANARYFLOW_STREAM_REPLICAS", "1")
    if _ours(settings, "nats") is not None and nodes != str(settings.nats_nodes):
        raise StackError(
            "nats",
            None,
            f"the stack runs {nodes} NATS node(s), {NATS_NODES_VARIABLE} asks for "
            f"{settings.nats_nodes}",
            "run `make stack-down` first, then `up` again with the setting you want",
        )


def _refuse_servers_outside_namespace(settings: Settings) -> None:
    """Servers recorded without a namespace holder were started outside it (an older stack)."""
    if _ours(settings, "netns") is not None:
        return
    running = [n for n in _recorded_names(settings) if n != "netns" and _ours(settings, n)]
    if running:
        raise StackError(
            "netns",
            None,
            f"servers of this stack run outside its network namespace: {', '.join(running)}",
            "they were started by a version of the stack from before the namespace: "
            "run `make stack-down`, then `make stack-up`",
        )


def _undo(settings: Settings, started: list[_Started], before: list[str]) -> None:
    for item in reversed(started):
        if procs.is_ours(item.record):
            say(f"stopping {item.server.name} (pid {item.record.pid}), started in this run")
            procs.stop(item.record)
        pidfile(settings, item.server.name).unlink(missing_ok=True)
    if before:
        say(
            "still running from before this run: "
            + ", ".join(before)
            + " (`make stack-down` stops them)"
        )
    else:
        say("nothing of the stack is left running")


def _record_timings(settings: Settings, timings: dict[str, float]) -> None:
    """Append this run's timings to .stack/timings.jsonl (used for the measurements)."""
    with (settings.state / "timings.jsonl").open("a") as f:
        entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        entry.update({k: f"{v:.2f}" for k, v in timings.items()})
        f.write(json.dumps(entry) + "\n")


# down ----------------------------------------------------------------------------------------


def _recorded_names(settings: Settings) -> list[str]:
    names = [p.stem for p in settings.pids.glob("*.json")] if settings.pids.exists() else []
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(names, key=lambda n: rank.get(n, -1), reverse=True)


def down(settings: Settings) -> bool:
    """Stop every process the stack started. True when none is left."""
    with _exclusive(settings):
        return _down(settings)


def _down(settings: Settings) -> bool:
    clean = True
    names = _recorded_names(settings)
    if not names:
        say("nothing to stop: no pid files in " + str(settings.pids))
    for name in names:
        path = pidfile(settings, name)
        record = PidRecord.load(path)
        if record is None or not procs.is_ours(record):
            what = f"pid {record.pid}" if record else "unreadable"
            say(f"{name}: stale pid file ({what} is not running or is another program); removed")
            path.unlink(missing_ok=True)
            continue
        if procs.stop(record):
            say(f"stopped {name} (pid {record.pid})")
            path.unlink(missing_ok=True)
        else:
            say(f"{name}: pid {record.pid} did not exit even after SIGKILL")
            clean = False
    for pid, cmd in leftovers(settings):
        # A server of this stack whose pid file was lost (deleted .stack/pids, a crash of `up`
        # between spawn and writing it): it is ours by executable and arguments, so stop it.
        record = PidRecord("leftover", pid, procs.proc_starttime(pid) or 0, [cmd], time.time())
        if procs.stop(record):
            say(f"stopped pid {pid}, a server of this stack without a pid file: {cmd}")
        else:
            say(f"warning: pid {pid}, a server of this stack without pid file, did not exit: {cmd}")
            clean = False
    return clean


def leftovers(settings: Settings) -> list[tuple[int, str]]:
    """Servers of this stack (by executable and arguments) that have no pid file.

    Only the stack's own server executables count (the cached Go servers and Prometheus, the
    venv's nats-server, the data plane's modules), and only when their arguments name this
    stack's folder: a kubectl or a service pointed at .stack/kubeconfig is not a leftover.
    """
    records = [PidRecord.load(pidfile(settings, n)) for n in _recorded_names(settings)]
    known = {r.pid for r in records if r is not None}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in known:
            continue
        cmd = procs.proc_cmdline(int(entry.name))
        if not cmd or str(settings.state) not in " ".join(cmd):
            continue
        exe = cmd[0]
        ours = (
            "canaryflow.dataplane.pods",
            "canaryflow.dataplane.load",
            "canaryflow_stack.netns",
        )
        server = (
            (exe.startswith(str(settings.stack_cache)) and not exe.endswith("/kubectl"))
            or exe == str(settings.python.parent / "nats-server")
            or (exe == str(settings.python) and any(module in cmd for module in ours))
            or (exe.endswith("/socat") and any(str(settings.sockets) in arg for arg in cmd))
        )
        if server:
            found.append((int(entry.name), " ".join(cmd)[:160]))
    return found


# status and restart --------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerStatus:
    name: str
    pid: int | None
    ports: str
    health: str
    rss: int


def check(settings: Settings) -> tuple[ClusterChoice, list[ServerStatus]]:
    """Probe every server of the current cluster choice once."""
    choice = current_choice(settings)
    rows = []
    entered = inside(settings) or enter(settings)
    for server in plan(settings, choice, locate_binaries(settings)):
        record = _ours(settings, server.name)
        if record is None:
            visible = entered or server.side == "host"
            ports = server.ports.values() if visible else []
            taken = [p for p in ports if not _on_side(server, partial(procs.port_free, p))]
            health = "stopped"
            if taken:
                port = taken[0]
                owner = _on_side(server, partial(procs.port_owner, port))
                health += f" (port {port} held by {owner})"
            rows.append(ServerStatus(server.name, None, server.endpoint_summary(), health, 0))
            continue
        reason = server.probe()
        health = "healthy" if reason is None else f"unhealthy: {reason[:80]}"
        rows.append(
            ServerStatus(
                server.name,
                record.pid,
                server.endpoint_summary(),
                health,
                procs.rss_bytes(record.pid),
            )
        )
    return choice, rows


def is_healthy(settings: Settings) -> bool:
    _, rows = check(settings)
    return bool(rows) and all(r.health == "healthy" for r in rows)


def status(settings: Settings) -> bool:
    choice, rows = check(settings)
    say(f"cluster in use: {choice.kind} ({choice.detail}); kubeconfig: {choice.kubeconfig}")
    if choice.kind == "external":
        say("  (local etcd/kube-apiserver/controller-manager/scheduler/kwok are not used)")
    say(f"{'SERVER':<28} {'PID':>8}  {'PORTS':<24} {'RSS':>9}  HEALTH")
    for r in rows:
        pid = str(r.pid) if r.pid else "-"
        rss = f"{r.rss / 2**20:.0f} MiB" if r.pid else "-"
        say(f"{r.name:<28} {pid:>8}  {r.ports:<24} {rss:>9}  {r.health}")
    total = sum(r.rss for r in rows)
    say(f"total RSS: {total / 2**20:.0f} MiB; logs: {settings.logs}/<server>.log")
    extra = [n for n in _recorded_names(settings) if n not in {r.name for r in rows}]
    if extra:
        say(f"also recorded (not part of the current plan): {', '.join(extra)}")
    return all(r.health == "healthy" for r in rows)


def restart(settings: Settings, name: str) -> None:
    """Stop one server (if it is ours) and start it again with the same settings."""
    with _exclusive(settings):
        _restart(settings, name)


def _restart(settings: Settings, name: str) -> None:
    choice = current_choice(settings)
    if not (inside(settings) or enter(settings)):
        raise StackError(name, None, "the stack is not up", "run `make stack-up` first")
    servers = {s.name: s for s in plan(settings, choice, locate_binaries(settings))}
    if name not in servers:
        raise StackError(
            name, None, f"unknown server {name!r}", f"known servers: {', '.join(servers)}"
        )
    if choice.kind == "external" and name in KUBE_SERVERS:
        raise StackError(name, None, "not run by the stack", "an external cluster is in use")
    server = servers[name]
    record = _ours(settings, name)
    if record is not None:
        say(f"stopping {name} (pid {record.pid})")
        if not procs.stop(record):
            raise StackError(name, settings.log(name), "did not stop", "it ignores SIGKILL?")
    pidfile(settings, name).unlink(missing_ok=True)
    say(f"starting {name}")
    record = _start(settings, server, choice)
    try:
        seconds = _wait_healthy(settings, server, record)
    except StackError:
        with contextlib.suppress(Exception):
            procs.stop(record)
        pidfile(settings, name).unlink(missing_ok=True)
        raise
    say(f"  {name} healthy in {seconds:.1f} s (pid {record.pid})")
