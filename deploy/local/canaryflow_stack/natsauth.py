"""TLS and identities of the stack's NATS, all under ``.stack/nats/auth/``.

The stack runs NATS as production should: clients connect over TLS (a CA of the stack's
own, so clients verify the server), every client proves an NKey identity, and each identity
may publish and subscribe to exactly what ``canaryflow_contracts.identities`` allows. The
four services, a requester and an operator each have a seed file
(``identities/<name>.nk``); ``admin`` is allowed everything and is what the tests, the demo
and the benches use to set up and to observe (``NATS_NKEY_SEED`` in ``.stack/env.json``).

The permissions are written for any subject prefix (each test has its own); an installation
writes them for its own prefix (``canaryflow nats-authorization``).

Created once and reused, like the cluster's credentials: a warm ``up`` keeps the seeds, so
processes started earlier still connect.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import nkeys

from .config import HOST, Settings
from .pki import openssl

ADMIN = "admin"


@dataclass(frozen=True)
class NatsFiles:
    ca_crt: Path
    ca_key: Path
    server_crt: Path
    server_key: Path
    identities: Path

    def seed(self, identity: str) -> Path:
        return self.identities / f"{identity}.nk"


def files(settings: Settings) -> NatsFiles:
    d = settings.state / "nats" / "auth"
    return NatsFiles(
        ca_crt=d / "ca.crt",
        ca_key=d / "ca.key",
        server_crt=d / "server.crt",
        server_key=d / "server.key",
        identities=d / "identities",
    )


def _identities() -> tuple[str, ...]:
    # Imported here: the rest of the stack manager runs without the project installed.
    from canaryflow_contracts.identities import IDENTITIES

    return (*IDENTITIES, ADMIN)


def ensure(settings: Settings) -> NatsFiles:
    """Create whatever is missing of the CA, the servers' certificate and the seeds."""
    f = files(settings)
    d = f.ca_crt.parent
    f.identities.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    if not (f.ca_crt.exists() and f.ca_key.exists()):
        openssl(
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f.ca_key.name,
             "-out", f.ca_crt.name, "-days", "3650", "-subj", "/CN=canaryflow-local-nats-ca"],
            d, "nats",
        )  # fmt: skip
        f.server_crt.unlink(missing_ok=True)
    if not (f.server_crt.exists() and f.server_key.exists()):
        # Server and client use: the cluster's nodes present it to each other on the routes.
        (d / "server.ext").write_text(
            f"subjectAltName=IP:{HOST},DNS:localhost\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
        )
        openssl(
            ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", f.server_key.name,
             "-out", "server.csr", "-subj", "/CN=canaryflow-local-nats"],
            d, "nats",
        )  # fmt: skip
        openssl(
            ["x509", "-req", "-in", "server.csr", "-CA", f.ca_crt.name, "-CAkey", f.ca_key.name,
             "-CAcreateserial", "-out", f.server_crt.name, "-days", "3650",
             "-extfile", "server.ext"],
            d, "nats",
        )  # fmt: skip
    for identity in _identities():
        seed = f.seed(identity)
        if not seed.exists():
            seed.write_bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
            seed.chmod(0o600)
    return f


def public_key(seed_file: Path) -> str:
    return str(nkeys.from_seed(seed_file.read_bytes().strip()).public_key.decode())


def server_block(settings: Settings) -> str:
    """The ``tls`` and ``authorization`` blocks of every node's configuration."""
    from canaryflow_contracts.identities import authorization

    f = ensure(settings)
    users = {
        identity: public_key(f.seed(identity)) for identity in _identities() if identity != ADMIN
    }
    block = authorization(users, subjects=None, admin=public_key(f.seed(ADMIN)))
    tls = {"cert_file": str(f.server_crt), "key_file": str(f.server_key), "timeout": 5}
    # NATS reads JSON as configuration; quoted strings keep the `$` of `$JS.…` literal.
    return f"tls: {json.dumps(tls)}\nauthorization: {json.dumps(block, indent=1)}\n"


def route_tls(settings: Settings) -> str:
    """TLS between a cluster's nodes, each verifying the other's certificate."""
    f = files(settings)
    tls = {
        "cert_file": str(f.server_crt),
        "key_file": str(f.server_key),
        "ca_file": str(f.ca_crt),
        "verify": True,
        "timeout": 5,
    }
    return f"  tls: {json.dumps(tls)}\n"


def client_env(settings: Settings, identity: str = ADMIN) -> dict[str, str]:
    """What a client of the stack's NATS needs besides ``NATS_URL``."""
    f = files(settings)
    return {"NATS_TLS_CA": str(f.ca_crt), "NATS_NKEY_SEED": str(f.seed(identity))}
