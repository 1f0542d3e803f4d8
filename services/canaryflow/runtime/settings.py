"""Service settings from the environment, so one container image runs anywhere.

The local stack writes the same variables into ``.stack/env``; OTEL_* variables are read by
OpenTelemetry itself. Each variable is declared once, in ``ENVIRONMENT``, with what it means;
``from_env`` reads them and the docs' table of them (``docs/operations.md``, "Settings") is
generated from the same list and the dataclass defaults (``python -m canaryflow.runtime.settings
docs/operations.md``; a unit test fails when the page and the code disagree), so a changed
default is never documented wrong.

Read by hand rather than with pydantic-settings, on purpose (issue 18): ``from_env`` is one
loop over ``ENVIRONMENT`` that leans on no library's internals; a BaseSettings would read the
environment in every ``Settings(...)`` (the tests build them freely, beside a stack's
variables), and parse differently what it reads today (an empty variable is the default; an
integer is read as a number and cut, ``2.5`` as 2; an unreadable number names its variable).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from canaryflow.runtime.nats_access import NatsAccess
from canaryflow_contracts import DEFAULT_PREFIX, Subjects


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as error:
        raise ValueError(f"environment variable {name}={raw!r} is not a number") from error


def nats_servers(nats_url: str) -> list[str]:
    """``NATS_URL`` may list every node of a cluster, comma-separated (nats-py wants a list)."""
    return [url.strip() for url in nats_url.split(",") if url.strip()]


@dataclass(frozen=True)
class Settings:
    service: str
    nats_url: str = "nats://127.0.0.1:4222"
    # How this service proves its NATS identity and checks the server's (runtime/nats_access).
    nats_tls_ca: str | None = None
    nats_tls_cert: str | None = None
    nats_tls_key: str | None = field(default=None, repr=False)
    nats_nkey_seed: str | None = field(default=None, repr=False)
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
    # Analyses are waits (a hold, a query every interval), not work: a replica can carry
    # many at once, and a cap here is a cap on releases in flight (each held its message).
    analysis_workers: int = 1000
    # The same for the executor's steps and promotions and the rollback service's rollbacks:
    # each holds its message while the cluster gets there (pods Ready, stable whole). At 16,
    # 200 steps at once waited for each other's pods (bench/scale.py); Kubernetes calls stay
    # bounded by kube.CALLS_AT_ONCE.
    wait_workers: int = 1000
    # The bearer token the alert webhook requires ("": it refuses every call), and the key
    # outgoing hook calls and notifications are signed with ("": unsigned).
    alerts_token: str = field(default="", repr=False)
    signing_key: str = field(default="", repr=False)
    # Copies of each stream and KV bucket JetStream keeps: 3 on a cluster of three nodes
    # or more (a node can then be lost without losing a release), 1 on a single server.
    stream_replicas: int = 1
    # The traffic routers this installation may use, comma-separated: the chart grants each
    # the rights its objects need, so a policy naming another one is refused at admission.
    traffic_routers: str = "replica-ratio,traefik,gateway-api"
    # The namespaces an installation limited to some (Helm rbac.namespaces) follows the
    # Deployments of, comma-separated; empty: the whole cluster (deployment_watch).
    watch_namespaces: str = ""
    subjects: Subjects = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "subjects", Subjects(self.prefix))

    @property
    def nats_servers(self) -> list[str]:
        return nats_servers(self.nats_url)

    @property
    def nats_access(self) -> NatsAccess:
        """Checked when the service starts: a named file that is missing stops it there."""
        return NatsAccess(
            identity=self.service,
            tls_ca=self.nats_tls_ca,
            tls_cert=self.nats_tls_cert,
            tls_key=self.nats_tls_key,
            nkey_seed=self.nats_nkey_seed,
        )

    @property
    def enabled_routers(self) -> frozenset[str]:
        return frozenset(name.strip() for name in self.traffic_routers.split(",") if name.strip())

    @property
    def watched_namespaces(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.watch_namespaces.split(",") if name.strip())

    @classmethod
    def from_env(cls, service: str) -> Settings:
        values: dict[str, object] = {}
        for variable in ENVIRONMENT:
            if variable.field is None:
                continue
            default = _DEFAULTS[variable.field]
            raw = os.environ.get(variable.name)
            if isinstance(default, float):
                values[variable.field] = _float(variable.name, default)
            elif isinstance(default, int):
                values[variable.field] = int(_float(variable.name, default))
            else:  # text, or None for unset
                values[variable.field] = raw or default
        return cls(service=service, **values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Variable:
    """One environment variable a service reads."""

    name: str
    meaning: str
    field: str | None = None  # the Settings field it sets; None: read where ``where`` says
    default: str = ""  # only for variables outside Settings (the others' is the field's)
    services: str = "all"


# Every CANARYFLOW_* variable a service reads, and the few standard ones; in the docs' order.
ENVIRONMENT: tuple[Variable, ...] = (
    Variable(
        "NATS_URL",
        "NATS server with JetStream enabled (streams and the KV bucket are created at start); "
        "a cluster's nodes comma-separated.",
        "nats_url",
    ),
    Variable(
        "NATS_TLS_CA",
        "CA certificate that signed the NATS servers' certificates: the connection is TLS and "
        "the server is verified (use `tls://` URLs).",
        "nats_tls_ca",
    ),
    Variable(
        "NATS_TLS_CERT",
        "Client certificate for NATS servers that require mutual TLS (with `NATS_TLS_KEY`).",
        "nats_tls_cert",
    ),
    Variable("NATS_TLS_KEY", "Private key of `NATS_TLS_CERT`.", "nats_tls_key"),
    Variable(
        "NATS_NKEY_SEED",
        "File holding this service's NKey seed (`SU…`): its NATS identity, whose permissions "
        "allow exactly what it publishes and consumes (docs: Operations, NATS identities).",
        "nats_nkey_seed",
    ),
    Variable(
        "CANARYFLOW_STREAM_REPLICAS",
        "Replicas of the streams and KV buckets when the service creates them: 3 on a "
        "JetStream cluster (survives the loss of a node), 1 on a single server.",
        "stream_replicas",
    ),
    Variable(
        "CANARYFLOW_PREFIX",
        "Subject prefix: subjects `<prefix>.…`, streams `<PREFIX>_EVENTS` and "
        "`<PREFIX>_DEADLETTER`, KV bucket `<PREFIX>_RELEASES`; installations with different "
        "prefixes share one NATS without seeing each other.",
        "prefix",
    ),
    Variable(
        "KUBECONFIG",
        "kubeconfig file; unset: the in-cluster service account, then `~/.kube/config`.",
        "kubeconfig",
        services="planner, executor, metrics-watcher, rollback",
    ),
    Variable(
        "PROMETHEUS_URL",
        "Prometheus (or a compatible query API) the analysis queries.",
        "prometheus_url",
        services="metrics-watcher",
    ),
    Variable(
        "CANARYFLOW_METRICS_PORT",
        "Port of `/metrics` and `/asyncapi.json`; 0: no HTTP endpoint (and nothing to scrape).",
        "metrics_port",
    ),
    Variable(
        "CANARYFLOW_METRICS_ADDR",
        "Address the metrics port binds; `0.0.0.0` for a Prometheus on another host or pod.",
        default="127.0.0.1",
    ),
    Variable(
        "CANARYFLOW_HTTP_PORT",
        "Port of the Alertmanager webhook (`POST /alerts`); 0: none.",
        "http_port",
        services="metrics-watcher",
    ),
    Variable(
        "CANARYFLOW_RECONCILE_SECONDS",
        "Period of the planner's safety net, which re-issues what a lost event left undone "
        "and applies deadlines (the demo and end-to-end tests use 2).",
        "reconcile_seconds",
        services="planner",
    ),
    Variable(
        "CANARYFLOW_MAX_DELIVER",
        "Attempts at a message before it is dead-lettered with its error.",
        "max_deliver",
    ),
    Variable(
        "CANARYFLOW_ACK_WAIT_SECONDS",
        "How long JetStream waits for a replica's ack (or heartbeat) before it redelivers a "
        "message to another: the longest a crashed replica's work waits. Later redeliveries "
        "of a message no replica settled wait 2, 5, 10, 20 and 40 s (never less than this), "
        "so replicas killed one after another do not spend its deliveries in seconds.",
        "ack_wait_seconds",
    ),
    Variable(
        "CANARYFLOW_WORKERS",
        "Messages each consumer of a replica handles at once (and pulls per batch).",
        "workers",
    ),
    Variable(
        "CANARYFLOW_ANALYSIS_WORKERS",
        "Analyses one metrics-watcher replica judges at once (each holds its message for "
        "its step's hold): beyond it, releases wait for a free slot.",
        "analysis_workers",
        services="metrics-watcher",
    ),
    Variable(
        "CANARYFLOW_WAIT_WORKERS",
        "Steps and promotions one executor replica, and rollbacks one rollback replica, "
        "carry out at once (each holds its message until the cluster is there): beyond it, "
        "releases wait for a free slot.",
        "wait_workers",
        services="executor, rollback",
    ),
    Variable(
        "CANARYFLOW_TRAFFIC_ROUTERS",
        "Traffic routers a policy may name, comma-separated (the Helm chart grants exactly "
        "their rights); a policy naming another is refused with the reason.",
        "traffic_routers",
        services="planner, executor, rollback",
    ),
    Variable(
        "CANARYFLOW_WATCH_NAMESPACES",
        "Namespaces whose Deployments the executor and the rollback service follow with one "
        "watch each, comma-separated, for an installation limited to them (Helm "
        "`rbac.namespaces`); unset: one watch of the whole cluster. Steps and restores wait "
        "on that copy, not on reads.",
        "watch_namespaces",
        services="executor, rollback",
    ),
    Variable(
        "CANARYFLOW_ALERTS_TOKEN",
        "Bearer token the alert webhook requires (`Authorization: Bearer …`); unset: the "
        "webhook refuses every call.",
        "alerts_token",
        services="metrics-watcher",
    ),
    Variable(
        "CANARYFLOW_SIGNING_KEY",
        "Key of the HMAC-SHA256 signature on every hook call and notification "
        "(`X-Canaryflow-Signature`, `X-Canaryflow-Timestamp`); unset: calls are unsigned.",
        "signing_key",
        services="executor",
    ),
    Variable(
        "CANARYFLOW_NOTIFY_URLS",
        "Comma-separated webhook URLs (Slack-compatible) told of every release.",
        default="(none)",
        services="executor",
    ),
    Variable(
        "CANARYFLOW_LOG_LEVEL",
        "Level of the JSON log lines on stderr (`DEBUG` adds FastStream's per message lines).",
        default="INFO",
    ),
)

_DEFAULTS: dict[str, object] = {
    f.name: f.default for f in dataclasses.fields(Settings) if f.default is not dataclasses.MISSING
}
README_BEGIN = "<!-- settings table: generated by python -m canaryflow.runtime.settings -->"
README_END = "<!-- end of settings table -->"


def markdown_table() -> str:
    """The docs' table of variables, from ``ENVIRONMENT`` and the defaults in ``Settings``."""
    lines = ["| variable | default | read by | meaning |", "|---|---|---|---|"]
    for variable in ENVIRONMENT:
        if variable.field is None:
            default = variable.default
        else:
            value = _DEFAULTS[variable.field]
            default = (
                "(unset)"
                if value is None
                else f"{value:g}"
                if isinstance(value, float)
                else str(value)
            )
        lines.append(
            f"| `{variable.name}` | `{default}` | {variable.services} | {variable.meaning} |"
        )
    return "\n".join(lines)


def with_table(readme: str) -> str:
    """``readme`` (a page of the docs) with the table between its markers made current."""
    block = re.compile(re.escape(README_BEGIN) + ".*?" + re.escape(README_END), re.DOTALL)
    if not block.search(readme):
        raise ValueError(f"no settings table in the page (markers {README_BEGIN!r} ...)")
    return block.sub(lambda _: f"{README_BEGIN}\n{markdown_table()}\n{README_END}", readme)


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/operations.md")
    target.write_text(with_table(target.read_text()))
    print(f"wrote the settings table in {target}")
