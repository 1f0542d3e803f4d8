"""Who is at the page (ui/identity.py): the proxy's header, only with the proxy's secret."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from canaryflow.ui.identity import (
    PROXY_SECRET_HEADER,
    IdentityConfigError,
    IdentityPolicy,
    parse_keys,
)


def headers(**given: str) -> CIMultiDict[str]:
    return CIMultiDict({name.replace("_", "-"): value for name, value in given.items()})


def test_without_a_trusted_header_nobody_is_anyone() -> None:
    policy = IdentityPolicy()
    assert not policy.enabled
    assert policy.who(headers(X_Forwarded_User="alice@shop")) is None


def test_the_header_names_the_person_only_with_the_proxys_secret() -> None:
    policy = IdentityPolicy(header="X-Forwarded-User", proxy_secret="s3cret")
    assert policy.who(
        headers(x_forwarded_user="alice@shop", **{PROXY_SECRET_HEADER: "s3cret"})
    ) == ("alice@shop")
    assert policy.who(headers(X_Forwarded_User="alice@shop")) is None
    assert (
        policy.who(headers(X_Forwarded_User="alice@shop", **{PROXY_SECRET_HEADER: "guess"})) is None
    )
    assert policy.who(headers(**{PROXY_SECRET_HEADER: "s3cret"})) is None  # no name
    assert policy.who(headers(X_Forwarded_User=" ", **{PROXY_SECRET_HEADER: "s3cret"})) is None
    # Without a configured secret the header is trusted as it comes (a proxy-only network)
    assert IdentityPolicy(header="X-Forwarded-User").who(headers(X_Forwarded_User="bob")) == "bob"


def test_operator_keys_are_read_as_name_equals_file() -> None:
    assert parse_keys("") == {}
    assert parse_keys("alice@shop=/k/alice, bob@shop=/k/bob") == {
        "alice@shop": "/k/alice",
        "bob@shop": "/k/bob",
    }
    with pytest.raises(IdentityConfigError, match="NAME=KEY_FILE"):
        parse_keys("alice@shop")
