"""Processes the stack starts: spawning, pid files, ownership checks, ports and memory.

Why this is careful: ``down`` must stop only what the stack started and ``up`` must never
mistake a foreign process for one of ours. A pid alone is not proof (pids are reused), so a
pid file records the pid, the kernel's start time of that process and its argv; a process
counts as ours only when all three still match. Ports are checked before a server starts, so
a port held by someone else is reported by name (owner pid and command) instead of showing up
later as a confusing health-check timeout.

Linux only: it reads /proc.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class PidRecord:
    """What a pid file says about a process the stack started."""

    name: str
    pid: int
    starttime: int
    argv: list[str]
    started_at: float

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> PidRecord | None:
        try:
            raw = json.loads(path.read_text())
            return cls(
                name=str(raw["name"]),
                pid=int(raw["pid"]),
                starttime=int(raw["starttime"]),
                argv=[str(a) for a in raw["argv"]],
                started_at=float(raw["started_at"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces.
    return raw[raw.rindex(")") + 2 :].split()


def proc_starttime(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


_exit_codes: dict[int, int] = {}


def exit_code(pid: int) -> int | None:
    """The exit code of a child this process started and reaped, if known."""
    return _exit_codes.get(pid)


def proc_running(pid: int) -> bool:
    """True if the pid exists and is not a zombie; reaps it if it is our own dead child."""
    with contextlib.suppress(ChildProcessError, OSError):
        reaped, status = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            _exit_codes[pid] = os.waitstatus_to_exitcode(status)
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def is_ours(record: PidRecord) -> bool:
    """The pid in the record is alive and is still the process the stack started."""
    if not proc_running(record.pid):
        return False
    if proc_starttime(record.pid) != record.starttime:
        return False
    cmdline = proc_cmdline(record.pid)
    return cmdline is not None and cmdline[:1] == record.argv[:1]


def _wait_for_exec(pid: int, timeout: float = 5.0) -> None:
    """Until the new program's command line shows (or the process is gone).

    Popen returns once the exec has passed the point of no return, but the kernel fills in
    the new command line a moment later, while it maps the program: a large binary read
    from a cold disk (kube-apiserver, after an idle spell) showed an empty
    ``/proc/PID/cmdline`` long enough for ``is_ours`` to take the starting server for a
    stranger and report that it had exited.
    """
    deadline = time.monotonic() + timeout
    while not proc_cmdline(pid) and proc_running(pid) and time.monotonic() < deadline:
        time.sleep(0.005)


def spawn(name: str, argv: list[str], log: Path, pidfile: Path, env: dict[str, str]) -> PidRecord:
    """Start a server detached from this process (own session), logging to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        out.write(f"\n=== {stamp} canaryflow_stack starts {name}: {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    _wait_for_exec(proc.pid)
    starttime = proc_starttime(proc.pid) or 0
    record = PidRecord(name, proc.pid, starttime, argv, time.time())
    record.save(pidfile)
    return record


def stop(record: PidRecord, timeout: float = 15.0) -> bool:
    """SIGTERM the server (and its process group), SIGKILL after ``timeout``. True if it exited.

    The caller has checked that the pid is the stack's. Servers are started as leaders of
    their own session, so signalling the group also reaches any children they made.
    """
    pid = record.pid
    try:
        leader = os.getpgid(pid) == pid
    except ProcessLookupError:
        return True

    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if leader:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    def gone() -> bool:
        return not proc_running(pid) and not (leader and _group_alive(pid))

    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        send(sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if gone():
                return True
            time.sleep(0.1)
    return gone()


def _group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            return True
    return False


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if a server could bind ``host:port`` now (SO_REUSEADDR, as servers do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_owner(port: int) -> str | None:
    """Best effort: 'pid N (command)' of the process listening on ``port``."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in targets:
                    cmd = " ".join(proc_cmdline(int(entry.name)) or ["?"])
                    return f"pid {entry.name} ({cmd[:120]})"
            except OSError:
                continue
    return "a process this user cannot inspect"


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file, for failure messages."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
