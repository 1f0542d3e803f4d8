"""Limits a message body must respect before any JSON parser sees it.

Anyone who can publish on a public subject can send any bytes. A JSON parser recurses once per
nesting level, so a body nested 10,000 levels deep made decoding raise ``RecursionError``
before any handler ran: no answer, and after the redeliveries no dead letter either. So size
and depth are measured here, on the raw bytes, without recursion and in linear passes of C
code (regular expressions), and a body over a limit is refused with the limit it broke.
"""

from __future__ import annotations

import re

# NATS's default max_payload: a body the default server accepts is never refused for its size.
MAX_BODY_BYTES = 1024 * 1024
# canaryflow's deepest event (an analysis request carrying its policy) nests about 8 levels.
MAX_NESTING_DEPTH = 32

_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# An innermost pair: removing every one of them peels exactly one level of nesting.
_INNERMOST = re.compile(rb"\{\}|\[\]")


class BodyOverLimit(ValueError):
    """The body breaks a decoding limit; it was not parsed."""


def _outside_strings(body: bytes) -> bytes:
    """``body`` without the contents of its JSON strings (escaped quotes and backslashes
    first, so that a quote inside a string cannot end it), in a few C-speed passes."""
    plain = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    return b"".join(plain.split(b'"')[::2])


def nesting_depth(body: bytes, stop_above: int = MAX_NESTING_DEPTH) -> int:
    """How deeply the JSON ``body`` nests arrays and objects, counted up to ``stop_above + 1``.

    Brackets inside strings do not count. In an unbalanced body every opening bracket that
    never closes counts as one more level: a recursive parser descends into each before it
    finds the body cut (``[`` 100,000 times, no ``]``, measured 0 and raised RecursionError
    in json.loads; found by tests/unit/test_input_properties.py).
    """
    brackets = _outside_strings(body).translate(None, _NOT_BRACKETS)
    depth = 0
    while brackets and depth <= stop_above:
        peeled = _INNERMOST.sub(b"", brackets)
        if len(peeled) == len(brackets):
            unclosed = brackets.count(b"[") + brackets.count(b"{")
            return min(depth + unclosed, stop_above + 1)
        brackets = peeled
        depth += 1
    return depth


def check_limits(
    body: bytes, max_bytes: int = MAX_BODY_BYTES, max_depth: int = MAX_NESTING_DEPTH
) -> None:
    """Raise ``BodyOverLimit`` if ``body`` is too large or nested too deeply to be parsed."""
    if len(body) > max_bytes:
        raise BodyOverLimit(f"body of {len(body)} bytes is over the limit of {max_bytes} bytes")
    # Each level opens a bracket: with no more of them than the limit, no need to measure.
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return
    if nesting_depth(body, max_depth) > max_depth:
        raise BodyOverLimit(f"body nests arrays/objects deeper than the limit of {max_depth}")
