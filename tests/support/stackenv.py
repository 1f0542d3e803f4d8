"""The endpoints of the running stack, as ``canaryflow_stack up`` wrote them to env.json.

Why a typed view: tests and fixtures should name ``stack.prometheus_url`` rather than
string keys, and a missing key should fail loudly in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from canaryflow.demo.launcher import StackEndpoints
from canaryflow.runtime.nats_access import NatsAccess


@dataclass(frozen=True)
class StackEnv:
    nats_url: str
    kubeconfig: str
    prometheus_url: str
    prometheus_targets: Path
    jaeger_query_url: str
    otlp_http_endpoint: str
    gateway_url: str
    """Traefik's web entrypoint (inside the stack's namespace)."""
    users_url: str
    """The stack's users (``canaryflow.dataplane.load``): ``/tally`` per Service."""
    cluster: str
    """``local`` (the stack's own KWOK cluster) or ``external`` (the user's KUBECONFIG)."""
    state_dir: Path
    stream_replicas: int = 1
    """3 when the stack runs a JetStream cluster (``CANARYFLOW_NATS_NODES=3``)."""
    helm: str = ""
    """The stack's Helm 4 binary (empty when env.json predates it)."""
    audit_log: str = ""
    """The local API server's audit log of service accounts' requests (empty: none)."""
    endpoints: StackEndpoints = field(default=None, repr=False)  # type: ignore[assignment]
    """The same, as the demo's launcher takes them (with the NATS identities)."""

    @classmethod
    def from_env(cls, env: dict[str, str]) -> StackEnv:
        return cls(
            nats_url=env["NATS_URL"],
            kubeconfig=env["KUBECONFIG"],
            prometheus_url=env["PROMETHEUS_URL"],
            prometheus_targets=Path(env["PROMETHEUS_TARGETS_DIR"]),
            jaeger_query_url=env["JAEGER_QUERY_URL"],
            otlp_http_endpoint=env["OTEL_EXPORTER_OTLP_ENDPOINT"],
            gateway_url=env.get("GATEWAY_URL", ""),
            users_url=env.get("USERS_URL", ""),
            cluster=env["CANARYFLOW_CLUSTER"],
            state_dir=Path(env["CANARYFLOW_STACK_DIR"]),
            stream_replicas=int(env.get("CANARYFLOW_STREAM_REPLICAS", "1")),
            helm=env.get("HELM", ""),
            audit_log=env.get("CANARYFLOW_AUDIT_LOG", ""),
            endpoints=StackEndpoints.from_env(env),
        )

    def nats_access(self, identity: str = "admin") -> NatsAccess:
        """TLS and ``identity``'s NKey (``admin``: allowed everything, for setting up and
        observing); ``nats.connect(..., **stack.nats_access().client_options())``."""
        return self.endpoints.nats_access(identity)

    def nats_env(self, identity: str = "admin") -> dict[str, str]:
        """``NATS_TLS_CA`` and ``NATS_NKEY_SEED`` for a process connecting as ``identity``."""
        return self.endpoints.nats_env(identity)

    def nats_settings(self, identity: str = "admin") -> dict[str, Any]:
        """The same as ``Settings`` fields, for a service run inside the test process."""
        access = self.nats_access(identity)
        return {"nats_tls_ca": access.tls_ca, "nats_nkey_seed": access.nkey_seed}

    @property
    def is_local_cluster(self) -> bool:
        return self.cluster == "local"
