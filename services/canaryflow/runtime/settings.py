"""Service settings from the environment, so one container image runs anywhere.

The local stack writes the same variables into ``.stack/env``; OTEL_* variables are read by
OpenTelemetry itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from canaryflow_contracts import DEFAULT_PREFIX, Subjects


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as error:
        raise ValueError(f"environment variable {name}={raw!r} is not a number") from error


@dataclass(frozen=True)
class Settings:
    service: str
    nats_url: str = "nats://127.0.0.1:4222"
    prefix: str = DEFAULT_PREFIX
    kubeconfig: str | None = None
    prometheus_url: str = "http://127.0.0.1:9090"
    metrics_port: int = 0  # 0: no /metrics endpoint
    http_port: int = 0  # the service's own HTTP API (webhooks), where it has one
    reconcile_seconds: float = 5.0
    max_deliver: int = 5
    # How long a message a replica took stays its own without a sign of life. The consumer
    # says every third of it that the handler is still working (bus.Heartbeat), so this is
    # how soon a killed replica's work goes to another one (it was 30 s: a rollback waited
    # that long), not a limit on how long a handler may take.
    ack_wait_seconds: float = 1.0
    workers: int = 16
    subjects: Subjects = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "subjects", Subjects(self.prefix))

    @classmethod
    def from_env(cls, service: str) -> Settings:
        env = os.environ
        return cls(
            service=service,
            nats_url=env.get("NATS_URL", cls.nats_url),
            prefix=env.get("CANARYFLOW_PREFIX", DEFAULT_PREFIX),
            kubeconfig=env.get("KUBECONFIG") or None,
            prometheus_url=env.get("PROMETHEUS_URL", cls.prometheus_url),
            metrics_port=int(_float("CANARYFLOW_METRICS_PORT", 0)),
            http_port=int(_float("CANARYFLOW_HTTP_PORT", 0)),
            reconcile_seconds=_float("CANARYFLOW_RECONCILE_SECONDS", 5.0),
            max_deliver=int(_float("CANARYFLOW_MAX_DELIVER", 5)),
            ack_wait_seconds=_float("CANARYFLOW_ACK_WAIT_SECONDS", cls.ack_wait_seconds),
            workers=int(_float("CANARYFLOW_WORKERS", 16)),
        )
