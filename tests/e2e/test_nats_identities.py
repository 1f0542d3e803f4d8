"""The running services connect to NATS over TLS, each as its own NKey identity.

The permissions of each identity and the server's refusals are in
tests/integration/test_nats_identities.py; this checks, from the NATS server's monitoring,
that the fleet the end-to-end tests run is the one those permissions apply to (a launcher
that handed every service the stack's admin key would pass every other test).
"""

from __future__ import annotations

import json

import httpx
import nkeys
import pytest

from canaryflow.demo.launcher import ServiceLauncher
from canaryflow_contracts.identities import SERVICES
from tests.support import StackEnv

pytestmark = pytest.mark.stack


def _public_key(stack: StackEnv, identity: str) -> str:
    seed = stack.nats_access(identity).nkey_seed
    assert seed is not None
    with open(seed, "rb") as file:
        return str(nkeys.from_seed(file.read().strip()).public_key.decode())


def test_each_service_connects_over_tls_as_its_own_identity(
    services: ServiceLauncher, stack: StackEnv
) -> None:
    env = json.loads((stack.state_dir / "env.json").read_text())
    connz = httpx.get(
        f"{env['NATS_MONITOR_URL']}/connz", params={"auth": "true", "limit": 4096}, timeout=5
    ).json()
    seen: dict[str, set[str]] = {}
    for connection in connz["connections"]:
        name = connection.get("name", "")
        if name.startswith("canaryflow-"):
            seen.setdefault(name.removeprefix("canaryflow-"), set()).add(
                connection.get("authorized_user", "")
            )
            assert connection.get("tls_version"), f"{name} is not on TLS: {connection}"
    for identity in SERVICES:
        assert seen.get(identity) == {_public_key(stack, identity)}, (identity, seen)


def test_no_service_was_refused_anything_by_nats(
    services: ServiceLauncher, stack: StackEnv
) -> None:
    """A permission the code needs and the identity lacks shows only at runtime, as a
    violation in the server's log (and a request that times out): none so far this session,
    for any service's key (tests/integration/test_nats_identities.py provokes others')."""
    keys = {_public_key(stack, identity): identity for identity in SERVICES}
    logs = sorted((stack.state_dir / "logs").glob("nats*.log"))
    assert logs, "no NATS log in the stack's logs"
    refused = [
        line
        for log in logs
        for line in log.read_text(errors="replace").splitlines()
        if "violation" in line.lower() and any(key in line for key in keys)
    ]
    assert not refused, refused[:5]
