"""The signature on outgoing calls, as a receiver verifies it, and the webhook's bearer check."""

from __future__ import annotations

import hashlib
import hmac

from canaryflow.runtime.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    bearer_refusal,
    signed_headers,
    verify,
)

KEY = "k3y"
BODY = b'{"releaseId":"web-1"}'
NOW = 1_800_000_000.0


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body_as_documented() -> None:
    headers = signed_headers(KEY, BODY, now=NOW)

    expected = hmac.new(b"k3y", b"1800000000." + BODY, hashlib.sha256).hexdigest()
    assert headers == {TIMESTAMP_HEADER: "1800000000", SIGNATURE_HEADER: f"v1={expected}"}
    assert verify(KEY, BODY, headers, now=NOW + 10) is None
    assert signed_headers("", BODY, now=NOW) == {}  # no key: unsigned


def test_a_receiver_refuses_a_changed_body_another_key_a_replay_and_an_unsigned_call() -> None:
    headers = signed_headers(KEY, BODY, now=NOW)

    assert "does not match" in str(verify(KEY, BODY + b" ", headers, now=NOW))
    assert "does not match" in str(verify("other", BODY, headers, now=NOW))
    assert "a replay or a wrong clock" in str(verify(KEY, BODY, headers, now=NOW + 301))
    assert "unsigned" in str(verify(KEY, BODY, {}, now=NOW))
    forged = {**headers, TIMESTAMP_HEADER: "soon"}
    assert "not a Unix time" in str(verify(KEY, BODY, forged, now=NOW))


def test_the_bearer_token_must_be_the_receivers_own() -> None:
    assert bearer_refusal("Bearer t0ken", "t0ken") is None
    assert bearer_refusal("bearer t0ken", "t0ken") is None  # the scheme is case-insensitive
    assert "not this receiver's" in str(bearer_refusal("Bearer t0ke", "t0ken"))
    assert "no Authorization header" in str(bearer_refusal(None, "t0ken"))
    assert "accepts no call" in str(bearer_refusal("Bearer ", ""))
