"""The running services connect to NATS over TLS, each as its own NKey identity.

The permissions of each identity and the server's refusals are in
tests/integration/test_nats_identities.py; this checks, from the NATS server's monitoring,
that the fleet the end-to-end tests run is the one those permissions apply to (a launcher
that handed every service the stack's admin key would pass every other test).
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime

import httpx
import nats
import nkeys
import pytest

from canaryflow.demo.launcher import ServiceLauncher
from canaryflow.runtime.settings import nats_servers
from canaryflow_contracts.identities import SERVICES
from tests.support import StackEnv, wait_until

# Only this run's lines count: a stack that stays up keeps the log of earlier runs (and of
# earlier versions of the code). Taken at import, before any service of the run starts;
# the server logs local time to the second's microsecond.
RUN_STARTED = datetime.now()
LOGGED_AT = re.compile(r"^\[\d+\] (\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d+) ")


def logged_in_this_run(line: str) -> bool:
    stamp = LOGGED_AT.match(line)
    return stamp is not None and datetime.strptime(stamp[1], "%Y/%m/%d %H:%M:%S.%f") >= RUN_STARTED


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


async def test_no_service_was_refused_anything_by_nats(
    services: ServiceLauncher, stack: StackEnv
) -> None:
    """A permission the code needs and the identity lacks shows only at runtime, as a
    violation in the server's log (and a request that times out): none so far, from any
    service's connection. The server names a connection ``"<version>:<lang>:<name>"``; the
    services' are ``canaryflow-<service>`` (tests/integration/test_nats_identities.py
    provokes violations under the same keys on connections without those names)."""
    logs = sorted((stack.state_dir / "logs").glob("nats*.log"))
    assert logs, "no NATS log in the stack's logs"

    def violations() -> list[str]:
        return [
            line
            for log in logs
            for line in log.read_text(errors="replace").splitlines()
            if "violation" in line.lower() and logged_in_this_run(line)
        ]

    # A control: a refusal of a connection named like the services' is found by this scan.
    control = f"canaryflow-check-{uuid.uuid4().hex[:6]}"
    nc = await nats.connect(
        nats_servers(stack.nats_url),
        **stack.nats_access("requester").client_options(),
        name=control,
    )
    try:
        await nc.publish(f"{control}.not.allowed", b"")
        await nc.flush()
    finally:
        await nc.close()
    wait_until(
        lambda: any(f':{control}"' in line for line in violations()),
        timeout=10,
        message="the control's violation in the NATS log",
    )
    names = tuple(f':canaryflow-{identity}"' for identity in SERVICES)
    refused = [line for line in violations() if any(name in line for name in names)]
    assert not refused, refused[:5]
