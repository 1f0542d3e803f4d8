"""HTTP endpoints: the scrape target, a health probe, and a view of what the simulator believes.

The standard library server in a thread is enough for one scraper and the odd curl, and it
keeps serving /metrics even while the event loop is busy generating a burst of requests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from canaryflow.simulator.model import ServiceKey, Target


@dataclass
class State:
    """Shared between the event loop (writer) and HTTP threads (readers).

    Fields are only ever replaced whole, never mutated, so readers need no lock.
    """

    targets: Mapping[ServiceKey, Target] = field(default_factory=dict)
    discovered: bool = False
    last_discovery: float | None = None

    def publish(self, targets: Mapping[ServiceKey, Target]) -> None:
        self.targets = targets
        self.last_discovery = time.time()
        self.discovered = True

    def split_json(self) -> dict[str, Any]:
        targets = self.targets
        services = []
        for key in sorted(targets):
            target = targets[key]
            services.append(
                {
                    "namespace": key.namespace,
                    "service": key.name,
                    "rps": target.rps,
                    "ready_pods": sum(route.share.pods for route in target.routes),
                    "groups": [
                        {
                            "version": route.group.version,
                            "track": route.group.track,
                            "pods": route.share.pods,
                            "share": route.share.weight,
                            "behaviour": route.behaviour.as_json(),
                        }
                        for route in target.routes
                    ],
                }
            )
        return {
            "discovered": self.discovered,
            "last_discovery": self.last_discovery,
            "services": services,
        }


class SimulatorServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry, state: State) -> None:
        self.registry = registry
        self.state = state
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: SimulatorServer

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, generate_latest(self.server.registry))
        elif path == "/healthz":
            if self.server.state.discovered:
                self._send(200, "text/plain; charset=utf-8", b"ok\n")
            else:
                self._send(503, "text/plain; charset=utf-8", b"waiting for the first discovery\n")
        elif path == "/split":
            body = json.dumps(self.server.state.split_json(), indent=2).encode()
            self._send(200, "application/json", body + b"\n")
        else:
            self._send(
                404, "text/plain; charset=utf-8", b"not found: try /metrics /healthz /split\n"
            )

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Access logs would be one line per scrape a second; they say nothing useful."""


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) into a bind address."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)
