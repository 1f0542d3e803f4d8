"""The one error the stack manager reports: which server, its log, what happened, and why.

Why a dedicated type: every failure of ``up`` (a taken port, a failed build, a server not
healthy in time) must end in the same shape of message, naming the server, its log file with
its last lines, and the likely cause, so a person can act on it without digging.
"""

from __future__ import annotations

from pathlib import Path

from .procs import tail


class StackError(Exception):
    """A server could not be built, started or made healthy."""

    def __init__(self, server: str, log: Path | None, message: str, cause: str) -> None:
        super().__init__(f"{server}: {message}")
        self.server = server
        self.log = log
        self.message = message
        self.cause = cause

    def report(self, lines: int = 25) -> str:
        parts = [f"stack: {self.server} failed: {self.message}", f"  likely cause: {self.cause}"]
        if self.log is not None:
            parts.append(f"  log: {self.log} (last lines below)")
            parts.extend(f"    | {line}" for line in tail(self.log, lines).splitlines())
        return "\n".join(parts)
