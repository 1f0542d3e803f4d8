"""Health probes: one HTTP request per server, answering "healthy" or why not.

Why probes return a reason instead of a bool: when a server is not healthy within its timeout,
``up`` reports the last reason (connection refused, HTTP 500 with its body, JetStream not
enabled, 2 of 3 nodes Ready), which usually names the problem before anyone opens the log.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

import httpx

Probe = Callable[[], str | None]
"""Returns None when the server is healthy, else a short reason."""


def http_probe(
    url: str,
    *,
    verify: bool | str = True,
    token: str | None = None,
    check: Callable[[httpx.Response], str | None] | None = None,
    timeout: float = 2.0,
) -> Probe:
    """A probe that GETs ``url`` and wants a 2xx (and ``check`` to pass, if given).

    ``verify`` is True (system CAs), False (no check: self-signed serving certs of the
    controller manager and scheduler) or the path of a CA file.
    """

    def probe() -> str | None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        tls = ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
        try:
            with httpx.Client(verify=tls, timeout=timeout, trust_env=False) as client:
                response = client.get(url, headers=headers)
        except httpx.HTTPError as exc:
            return f"GET {url}: {type(exc).__name__}: {exc}"
        if not response.is_success:
            return f"GET {url}: HTTP {response.status_code}: {response.text.strip()[:300]}"
        return check(response) if check else None

    return probe


def all_of(*probes: Probe) -> Probe:
    """Healthy when every probe is, checked in order."""

    def probe() -> str | None:
        for p in probes:
            reason = p()
            if reason is not None:
                return reason
        return None

    return probe


def etcd_check(response: httpx.Response) -> str | None:
    try:
        healthy = response.json().get("health")
    except ValueError:
        return f"unexpected /health body: {response.text[:200]}"
    return None if healthy == "true" else f"etcd reports health={healthy!r}"
