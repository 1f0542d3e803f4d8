"""Decoding limits measured on raw bytes, before any parser (and its recursion) sees a body."""

from __future__ import annotations

import hashlib
import json

import pytest

from canaryflow.runtime.decoding import BodyOverLimit, check_limits, nesting_depth
from canaryflow_contracts.identifiers import request_token


@pytest.mark.parametrize(
    ("body", "depth"),
    [
        (b"", 0),
        (b'"plain"', 0),
        (b"{}", 1),
        (b'{"a": [1, {"b": []}]}', 4),
        (b'[{"x": "[[[[{{{{"}]', 2),  # brackets inside a string do not count
        (b'["\\"[[["]', 1),  # nor after an escaped quote
        (b'["\\\\", [[]]]', 3),  # an escaped backslash does not escape the closing quote
        (b"[" * 40 + b"]" * 40, 33),  # counted only up to the limit and one more
    ],
)
def test_nesting_depth_counts_levels_outside_strings(body: bytes, depth: int) -> None:
    assert nesting_depth(body, stop_above=32) == depth


def test_a_body_nested_ten_thousand_levels_is_refused_without_recursion() -> None:
    deep = b'{"data": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    with pytest.raises(BodyOverLimit, match="deeper than the limit of 32"):
        check_limits(deep)
    with pytest.raises(RecursionError):  # what a parser does with it
        json.loads(deep)


def test_closing_brackets_hidden_in_strings_do_not_hide_the_depth() -> None:
    sneaky = b'["]", ' * 40 + b"1" + b"]" * 40
    assert nesting_depth(sneaky, stop_above=32) == 33
    with pytest.raises(BodyOverLimit):
        check_limits(sneaky)


def test_a_body_over_the_size_limit_is_refused_with_its_size() -> None:
    with pytest.raises(BodyOverLimit, match="body of 11 bytes is over the limit of 10 bytes"):
        check_limits(b'"123456789"', max_bytes=10)
    check_limits(b'"12345678"', max_bytes=10)


@pytest.mark.parametrize(
    ("request_id", "token"),
    [("4f1c2a9e-ci-8812", "4f1c2a9e-ci-8812"), ("0" * 63, "0" * 63)],
)
def test_a_request_id_that_is_a_valid_token_is_its_own_token(request_id: str, token: str) -> None:
    assert request_token(request_id) == token


@pytest.mark.parametrize("request_id", ["Req-1", "a.b", "shop-w\u0435b", "x" * 64, "-a", "a b"])
def test_any_other_request_id_is_keyed_by_its_hash(request_id: str) -> None:
    token = request_token(request_id)
    assert token == "r-" + hashlib.sha256(request_id.encode()).hexdigest()[:40]
