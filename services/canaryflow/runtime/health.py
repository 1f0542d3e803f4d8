"""Liveness and readiness, served next to ``/metrics`` for Kubernetes' probes.

Why two answers: a replica that cannot reach NATS, whose durable consumers are gone, or that
cannot reach the API server takes no useful work, so it should leave the Service's endpoints
and hold back a rolling update (``/readyz``), but it is not broken: NATS reconnects by itself,
and restarting it would only add a cold start to the outage. Only a stuck event loop is fixed
by a restart (``/livez``): every check runs on the loop, so a loop that stopped turning stops
refreshing them.

The checks run in a background loop of the service and leave their result here; the probes
only read it (served on the same loop, they wait for no check), so a slow API server never
makes a probe time out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Between two rounds of checks; a probe sees a result at most this old (plus one round).
CHECK_SECONDS = 5.0
# The loop is declared stuck when no round finished for this long (a round waits at most
# CHECK_TIMEOUT_SECONDS on each of its three checks).
CHECK_TIMEOUT_SECONDS = 3.0
STUCK_SECONDS = CHECK_SECONDS + 3 * CHECK_TIMEOUT_SECONDS + 5.0

CHECKS = ("nats", "consumers", "kubernetes")


@dataclass
class Health:
    """The last result of each readiness check, and when the event loop last turned."""

    clock: Callable[[], float] = time.monotonic
    started: bool = False
    failures: dict[str, str] = field(default_factory=lambda: {c: "not checked yet" for c in CHECKS})
    last_round: float | None = None

    def record(self, check: str, failure: str | None) -> None:
        """The outcome of one check: ``None`` when it passed, else why it failed."""
        if failure is None:
            self.failures.pop(check, None)
        else:
            self.failures[check] = failure

    def round_done(self) -> None:
        self.last_round = self.clock()

    def live(self) -> tuple[bool, bytes]:
        """Alive unless rounds of checks stopped finishing (the event loop is stuck)."""
        if self.last_round is None:
            return True, _body({"status": "starting"})  # a slow start is readiness' business
        age = self.clock() - self.last_round
        if age > STUCK_SECONDS:
            return False, _body({"status": "stuck", "seconds_since_last_check": round(age, 1)})
        return True, _body({"status": "ok"})

    def ready(self) -> tuple[bool, bytes]:
        """Ready once started, with NATS connected, consumers bound and the API server reached."""
        failures = dict(self.failures)
        if not self.started:
            failures["service"] = "still starting (streams, consumers)"
        alive, _ = self.live()
        if not alive:
            failures["loop"] = "the event loop stopped running the checks"
        if failures:
            return False, _body({"status": "not ready", "failures": failures})
        return True, _body({"status": "ready"})


def _body(document: dict[str, object]) -> bytes:
    return json.dumps(document, sort_keys=True).encode()
