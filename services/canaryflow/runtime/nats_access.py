"""How a process proves who it is to NATS and keeps the connection private: TLS verified
against a CA, an NKey (the server holds only its public half and checks a signature of its
nonce), and an inbox only this identity may read.

One place builds the options, for FastStream's broker (the services) and for nats-py
(the CLI, the demo, the tests), so every client of the bus connects the same way. The
permissions each identity gets are in ``canaryflow_contracts.identities``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faststream.nats.security import NatsNKey, NatsSecurity

from canaryflow_contracts.identities import inbox_prefix


class NatsAccessError(ValueError):
    """A TLS or NKey file that is missing or unusable: said before connecting."""


@dataclass(frozen=True)
class NatsAccess:
    """``identity`` names the inbox (``_INBOX_<identity>``); ``None``: NATS's default inbox
    (a connection allowed everything, e.g. the local stack's admin)."""

    identity: str | None = None
    tls_ca: str | None = None  # the CA that signed the servers' certificates
    tls_cert: str | None = None  # a client certificate, for servers that require one
    tls_key: str | None = None
    nkey_seed: str | None = None  # a file holding the identity's NKey seed (``SU…``)

    def __post_init__(self) -> None:
        for what, path in (
            ("NATS_TLS_CA", self.tls_ca),
            ("NATS_TLS_CERT", self.tls_cert),
            ("NATS_TLS_KEY", self.tls_key),
            ("NATS_NKEY_SEED", self.nkey_seed),
        ):
            if path and not Path(path).is_file():
                raise NatsAccessError(f"{what}={path}: no such file")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise NatsAccessError("NATS_TLS_CERT and NATS_TLS_KEY go together: set both or none")

    @classmethod
    def from_env(cls, identity: str | None, environ: dict[str, str]) -> NatsAccess:
        return cls(
            identity=identity,
            tls_ca=environ.get("NATS_TLS_CA") or None,
            tls_cert=environ.get("NATS_TLS_CERT") or None,
            tls_key=environ.get("NATS_TLS_KEY") or None,
            nkey_seed=environ.get("NATS_NKEY_SEED") or None,
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        if not (self.tls_ca or self.tls_cert):
            return None
        context = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_cert and self.tls_key:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        return context

    @property
    def inbox(self) -> str:
        """Where replies to this connection come: NATS's default for an identity-less one."""
        return inbox_prefix(self.identity) if self.identity else "_INBOX"

    def _inbox(self) -> dict[str, str]:
        return {"inbox_prefix": self.inbox} if self.identity else {}

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``."""
        options: dict[str, Any] = self._inbox()
        context = self.ssl_context()
        if context is not None:
            options["tls"] = context
        if self.nkey_seed:
            options["nkeys_seed"] = self.nkey_seed
        return options

    def broker_options(self) -> dict[str, Any]:
        """Keyword arguments for FastStream's ``NatsBroker``."""
        options: dict[str, Any] = self._inbox()
        context = self.ssl_context()
        if self.nkey_seed:
            options["security"] = NatsNKey.from_file(self.nkey_seed, ssl_context=context)
        elif context is not None:
            options["security"] = NatsSecurity(ssl_context=context)
        return options
