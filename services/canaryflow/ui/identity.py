"""Who is at the page: the name an authenticating proxy vouches for, and the key they sign with.

The web process does not log people in. It sits behind a proxy that does (oauth2-proxy, an
ingress with OIDC, a corporate SSO gateway) and passes the authenticated name in a header the
process is told to trust (``CANARYFLOW_UI_IDENTITY_HEADER``, e.g. ``X-Forwarded-User``). So that
a caller who reaches the port directly cannot simply write that header, the proxy also sends a
shared secret (``CANARYFLOW_UI_PROXY_SECRET`` in ``X-Canaryflow-Proxy-Secret``); without a
configured header nobody is anyone and the page is read-only.

A name is not yet a signature: policies that list operator keys obey only signed commands. The
process holds, per operator it may act for, their OpenSSH ed25519 key
(``CANARYFLOW_UI_OPERATOR_KEYS``: ``alice@shop=/keys/alice,bob@shop=/keys/bob``), and signs a
click of theirs with it, exactly as ``canaryflow --key`` would. A person vouched for by the
proxy but with no key configured acts unsigned: grants without keys obey them, grants with keys
refuse them with the reason (and the page shows that refusal). Those are the CLI's rules; the
planner and the rollback service judge a click as they judge a command line.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

PROXY_SECRET_HEADER = "X-Canaryflow-Proxy-Secret"


class IdentityConfigError(ValueError):
    """A setting of the identity configuration that cannot be read."""


@dataclass(frozen=True)
class IdentityPolicy:
    """How the process tells who is at the page."""

    header: str = ""  # the proxy's header with the authenticated name; "": read-only
    proxy_secret: str = field(default="", repr=False)  # "": the header is trusted as it comes
    keys: Mapping[str, str] = field(default_factory=dict)  # operator name -> private key file

    @property
    def enabled(self) -> bool:
        return bool(self.header)

    def who(self, headers: Mapping[str, str]) -> str | None:
        """The proven name behind a request's headers, or None (then: no buttons, no actions).

        ``headers`` must look names up case-insensitively (aiohttp's do)."""
        if not self.header:
            return None
        if self.proxy_secret:
            given = headers.get(PROXY_SECRET_HEADER, "")
            if not hmac.compare_digest(given.encode(), self.proxy_secret.encode()):
                return None
        name = headers.get(self.header, "").strip()
        if not name or len(name) > 256 or any(ord(c) < 32 for c in name):
            return None
        return name

    def key_of(self, name: str) -> str | None:
        return self.keys.get(name)


def parse_keys(raw: str) -> dict[str, str]:
    """``alice@shop=/keys/alice,bob@shop=/keys/bob`` as a mapping; empty for ``""``."""
    keys: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        name, equals, path = item.strip().partition("=")
        if not equals or not name or not path:
            raise IdentityConfigError(
                f"CANARYFLOW_UI_OPERATOR_KEYS item {item!r} must look like NAME=KEY_FILE"
            )
        keys[name] = path
    return keys
