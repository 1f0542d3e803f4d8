"""The stack's own network namespace: where every server, pod address and test lives.

Why: simulated pods keep KWOK's 10.244.x.y addresses (Kubernetes refuses loopback addresses
in EndpointSlices), and for pods to answer HTTP those addresses must be local somewhere. The
rule on every machine we use is that traffic to a private-range address is only ever sent
inside a network namespace the stack itself created; the machine's own namespace never gets
the route and never sends a packet to 10.244.x.y. So the stack makes one namespace, with its
loopback up and ``local 10.244.0.0/16 dev lo`` (every pod address is then bindable and
reachable in it), and runs every server there: NATS, etcd and the control plane, KWOK,
Prometheus, Jaeger, the pods' server and the gateway all talk over the namespace's own
127.0.0.1. Tests and the demo enter it too (``enter``), so they reach pods at their real
addresses. Ports people use from the machine (NATS, the API server, Prometheus, Jaeger, the
gateway) are forwarded from the machine's 127.0.0.1 by socat over a Unix socket
(``servers._forwarders``).

How it is held: a small process (``python -m canaryflow_stack.netns STATE``) unshares its
network namespace, sets it up, writes ``STATE/netns/ready`` and sleeps; the namespace lives as
long as it does (and as long as any server in it), and ``down`` stops it last. Everyone else
joins it with setns(2) on ``/proc/<holder>/ns/net``. That needs root (CAP_SYS_ADMIN); as a
plain user the stack says so instead of touching the machine's own namespace.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

CLONE_NEWNET = 0x40000000
POD_CIDR = "10.244.0.0/16"
"""Made local in the stack's namespace: KWOK's --cidr gives pods their addresses from it."""

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)
_host_fd: int | None = None
"""The namespace this process started in, kept open once it has entered the stack's."""


class NetnsError(RuntimeError):
    """The namespace could not be created, found or entered; the message says why."""


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        hint = " (needs root: CAP_SYS_ADMIN)" if errno == 1 else ""
        raise NetnsError(f"{what} failed: {os.strerror(errno)}{hint}")


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace open on ``fd``."""
    _check(_libc.setns(fd, CLONE_NEWNET), "setns(CLONE_NEWNET)")


def ns_id(pid: int | str = "self") -> str | None:
    """The kernel's name of a process's network namespace (``net:[4026...]``)."""
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def ready_file(state: Path) -> Path:
    return state / "netns" / "ready"


def require_root() -> str | None:
    """None when this user can create and enter namespaces, else why not."""
    if os.geteuid() != 0:
        return (
            "the stack runs in its own network namespace, which needs root (CAP_SYS_ADMIN); "
            "run the make targets as root (CI and our machines are)"
        )
    return None


def holder_ready(state: Path, pid: int) -> str | None:
    """Probe of the holder: None once its namespace is set up and is not ours."""
    try:
        written = ready_file(state).read_text().strip()
    except OSError:
        return "the namespace is not set up yet"
    if written != str(pid):
        return f"ready file names pid {written}, not {pid}"
    machine = _host_ns() if _host_fd is not None else ns_id()
    if ns_id(pid) in (None, machine):
        return "the holder is still in the machine's namespace"
    return None


def _host_ns() -> str | None:
    return None if _host_fd is None else os.readlink(f"/proc/self/fd/{_host_fd}")


def inside(holder_pid: int) -> bool:
    """Whether this thread is already in the holder's namespace."""
    mine, theirs = ns_id(), ns_id(holder_pid)
    return theirs is not None and mine == theirs


def enter(holder_pid: int) -> None:
    """Move this process (call it before any thread starts) into the holder's namespace.

    The namespace it came from stays open (``host_fd``), so forwarders can still be started
    and probed on the machine's side.
    """
    global _host_fd  # noqa: PLW0603 - one process-wide handle, set once
    if inside(holder_pid):
        return
    if threading.active_count() > 1:
        raise NetnsError(
            "cannot enter the stack's namespace: threads are running (setns moves only the "
            "calling thread); enter before starting any"
        )
    try:
        fd = os.open(f"/proc/{holder_pid}/ns/net", os.O_RDONLY)
    except OSError as exc:
        raise NetnsError(f"the namespace holder (pid {holder_pid}) is gone: {exc}") from exc
    host = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        setns(fd)
    except NetnsError:
        os.close(host)
        raise
    finally:
        os.close(fd)
    os.set_inheritable(host, False)
    _host_fd = host


def on_host(fn: Callable[[], T]) -> T:
    """Run ``fn`` in the machine's namespace (in a thread of its own, which setns moves).

    Used to check and probe the forwarders' listening side; before ``enter`` it just calls.
    """
    fd = _host_fd
    if fd is None:
        return fn()
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            setns(fd)
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run, name="on-host")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


# The holder ---------------------------------------------------------------------------------


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")


def hold(state: Path) -> int:
    """Create the namespace, set it up, say so, and keep it until SIGTERM."""
    ready = ready_file(state)
    ready.unlink(missing_ok=True)
    _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
    _run(["ip", "link", "set", "lo", "up"])
    _run(["ip", "route", "add", "local", POD_CIDR, "dev", "lo"])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ready.parent.mkdir(parents=True, exist_ok=True)
    ready.write_text(f"{os.getpid()}\n")
    print(f"network namespace {ns_id()} ready: lo up, {POD_CIDR} local", flush=True)
    while not stop.wait(3600):
        pass
    ready.unlink(missing_ok=True)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m canaryflow_stack.netns STATE_DIR", file=sys.stderr)
        return 2
    try:
        return hold(Path(argv[0]))
    except NetnsError as exc:
        print(f"cannot make the stack's network namespace: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
