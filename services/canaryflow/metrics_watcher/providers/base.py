"""The interface every metrics backend implements, kept tiny on purpose.

The analysis only ever needs "evaluate this query to one number" and "can I reach you at
all"; anything richer (ranges, series, raw samples for statistics) is added as an optional
capability later rather than forced on every backend now.
"""

from __future__ import annotations

from typing import Protocol


class ProviderError(Exception):
    """The backend could not answer: unreachable, timed out, or it refused the query.

    Never mistaken for "no data": the judge turns it into insufficient data with this reason.
    """


class MetricProvider(Protocol):
    @property
    def name(self) -> str:
        """A short label for evidence and logs, e.g. ``prometheus``."""
        ...

    async def query(self, query: str) -> float | None:
        """The query's value now; None when it has no data (empty result or NaN).

        Raises ProviderError when the backend cannot answer.
        """
        ...

    async def is_online(self) -> bool:
        """Whether the backend answers a trivial query right now."""
        ...

    async def aclose(self) -> None: ...
