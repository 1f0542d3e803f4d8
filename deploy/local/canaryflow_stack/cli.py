"""Command line of the stack manager: ``python -m canaryflow_stack up|down|status|restart NAME``.

Why a thin layer: the Makefile targets, CI and the pytest fixtures all go through the same
functions in :mod:`canaryflow_stack.stack`; this module only parses arguments, prints a
failure as one readable report (server, log, last log lines, likely cause) and sets the exit
code.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from . import build, stack
from .config import Settings
from .errors import StackError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m canaryflow_stack",
        description="Build, start, stop and inspect canaryflow's local stack.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="build what is missing, start every server, wait for health")
    sub.add_parser("down", help="stop every process the stack started")
    sub.add_parser("status", help="each server's pid, ports, health and memory")
    restart = sub.add_parser("restart", help="stop and start one server (e.g. nats)")
    restart.add_argument("server")
    sub.add_parser("env", help="print the endpoints of the running stack as shell exports")
    run = sub.add_parser(
        "exec", help="run a command inside the stack's network namespace (pods, 10.244.x.y)"
    )
    run.add_argument("argv", nargs=argparse.REMAINDER, help="the command and its arguments")
    sub.add_parser("prune", help="delete Go's module/build caches (GBs); built binaries stay")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so `up` stops what it started.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        if args.command == "up":
            stack.up(settings)
            return 0
        if args.command == "down":
            return 0 if stack.down(settings) else 1
        if args.command == "status":
            return 0 if stack.status(settings) else 1
        if args.command == "restart":
            stack.restart(settings, args.server)
            return 0
        if args.command == "prune":
            build.prune_go_caches(settings)
            return 0
        if args.command == "exec":
            return _exec(settings, list(args.argv))
        if args.command == "env":
            print(settings.env_sh.read_text() if settings.env_sh.exists() else "", end="")
            return 0 if settings.env_sh.exists() else 1
    except StackError as exc:
        print(exc.report(), file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 2


def _exec(settings: Settings, argv: list[str]) -> int:
    """Enter the stack's namespace and become ``argv`` (the demo, a shell, a curl)."""
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("usage: python -m canaryflow_stack exec -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    if not stack.enter(settings):
        print("the stack is not up: run `make stack-up` first", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"cannot run {argv[0]}: {exc}", file=sys.stderr)
        return 127
    return 0  # not reached: execvp replaced this process


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
