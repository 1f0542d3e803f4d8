"""Who may call us, and proof of who called them: the alert webhook's bearer token, and the
HMAC signature on every hook call and notification canaryflow sends.

Why a token on the webhook: a firing alert rolls a release back, so whoever can reach the
receiver could stop any release; Alertmanager sends a bearer token with
``http_config.authorization`` (no other change on its side). Why a signature on outgoing
calls: a hook endpoint decides whether a release goes on, and a notification is read by
people, so a receiver must be able to tell canaryflow's calls from anyone else's. The scheme
is the one Slack and Stripe use: ``HMAC-SHA256(key, "<timestamp>.<body>")`` in hex, with the
Unix timestamp in its own header, so a receiver can refuse a replayed old call
(``verify``; docs/operating.md shows it in a few lines). Both secrets are compared in
constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

import httpx

SIGNATURE_HEADER = "X-Canaryflow-Signature"
TIMESTAMP_HEADER = "X-Canaryflow-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SCHEME = "v1"
TOLERANCE_SECONDS = 300
"""How old a signed call a receiver should still accept (clock skew and retries)."""


def signature(key: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(key.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"{SCHEME}={digest.hexdigest()}"


def signed_headers(key: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The headers of a call whose body is ``body``; none without a key."""
    if not key:
        return {}
    timestamp = int(time.time() if now is None else now)
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: signature(key, timestamp, body)}


def verify(
    key: str,
    body: bytes,
    headers: Mapping[str, str],
    now: float | None = None,
    tolerance: float = TOLERANCE_SECONDS,
) -> str | None:
    """Why a received call is not canaryflow's (None: it is): what a receiver runs."""
    raw_timestamp, given = headers.get(TIMESTAMP_HEADER), headers.get(SIGNATURE_HEADER)
    if raw_timestamp is None or given is None:
        return f"unsigned: {TIMESTAMP_HEADER} and {SIGNATURE_HEADER} are required"
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        return f"{TIMESTAMP_HEADER} is not a Unix time: {raw_timestamp[:40]!r}"
    age = (time.time() if now is None else now) - timestamp
    if abs(age) > tolerance:
        return f"signed {age:.0f} s ago, outside {tolerance:g} s: a replay or a wrong clock"
    if not hmac.compare_digest(given, signature(key, timestamp, body)):
        return "the signature does not match the body and the key"
    return None


def bearer_refusal(authorization: str | None, token: str) -> str | None:
    """Why a call's ``Authorization`` header is refused (None: it carries ``token``)."""
    if not token:
        return (
            "this receiver has no token (CANARYFLOW_ALERTS_TOKEN) and accepts no call: set "
            "one, and the same in Alertmanager's http_config.authorization"
        )
    if authorization is None:
        return "no Authorization header: send 'Bearer <token>'"
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip(), token):
        return "the bearer token is not this receiver's"
    return None


async def post_json(
    client: httpx.AsyncClient,
    url: str,
    payload: Any,
    key: str,
    timeout: float,
    *,
    idempotency_key: str | None = None,
) -> httpx.Response:
    """POST ``payload`` as JSON, signed with ``key`` (the signature covers these exact bytes).

    ``idempotency_key``: sent as ``Idempotency-Key`` (the IETF httpapi draft's header), the
    same on every repeat of one call, so that a receiver can drop a repeat it has seen.
    """
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", **signed_headers(key, body)}
    if idempotency_key is not None:
        headers[IDEMPOTENCY_HEADER] = idempotency_key
    return await client.post(url, content=body, headers=headers, timeout=timeout)
