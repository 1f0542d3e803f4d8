"""The interface every metrics backend implements, kept tiny on purpose.

The analysis needs four things: "evaluate this query to one number", "evaluate it to one
number per value of a label" (histogram buckets by ``le``, for the latency comparison), "can
I reach you at all" and "did you collect all along the window". Nothing richer (ranges, raw
samples) is asked of a backend: the statistics are built on cumulative counts read at each
tick.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Protocol

# How long the backend took to answer each query of the current tick, appended by providers
# that measure it (the analysis sets a list here for each tick). The time a query waited for
# its turn in this replica is not in it: a tick slowed by this replica's own queue must not
# be read as a frozen backend (at 200 analyses at once, it paused every good release).
ANSWER_SECONDS: ContextVar[list[float] | None] = ContextVar("answer_seconds", default=None)


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

    async def query_vector(self, query: str, label: str) -> dict[str, float]:
        """One number per value of ``label`` (e.g. per ``le``); empty when there is no data.

        Raises ProviderError when the backend cannot answer.
        """
        ...

    async def is_online(self) -> bool:
        """Whether the backend answers a trivial query right now."""
        ...

    async def collection_gap(self, window_seconds: float) -> float | None:
        """The longest stretch within the last ``window_seconds`` in which the backend
        collected no sample at all (it was stopped or frozen); None when it cannot tell.

        Raises ProviderError when the backend cannot answer.
        """
        ...

    async def aclose(self) -> None: ...
