"""Every string in the contract is text that UTF-8 can carry.

Why: JSON may spell a lone UTF-16 surrogate (``"\\ud800"``), Python decodes it into a string,
and pydantic accepts it; but no such string can be written back as JSON, so a policy, a request
or an event holding one was accepted and then crashed whoever stored or published it (found by
the property tests: a policy's ``images.allowedPrefixes: ["\\ud800"]``). Refused at the door
instead, with the field's name.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, field_validator


def unicode_text(value: Any) -> Any:
    """``value`` unchanged when every string in it is encodable; ValueError otherwise."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"not Unicode text: a lone surrogate at position {error.start}"
            ) from None
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            unicode_text(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            unicode_text(key)
            unicode_text(item)
    return value


class TextModel(BaseModel):
    """The base of the contract's models: every field's strings are refused unless text."""

    @field_validator("*", mode="after")
    @classmethod
    def _unicode_text(cls, value: Any) -> Any:
        return unicode_text(value)
