"""What the planner's gauges say, computed from the release states alone.

The planner owns the release state, so it is the one service that can say how many releases
are in each status and how much traffic each target's canary has now, without asking the
cluster. Every planner replica computes the same numbers from the same bucket; dashboards
take the ``max`` over replicas.
"""

from __future__ import annotations

from collections import Counter

from canaryflow_contracts.state import ReleaseState, ReleaseStatus

IN_FLIGHT = (ReleaseStatus.APPLYING, ReleaseStatus.ANALYSING, ReleaseStatus.PROMOTING)


def release_counts(states: list[ReleaseState]) -> Counter[ReleaseStatus]:
    return Counter(state.status for state in states)


def canary_weights(states: list[ReleaseState]) -> dict[tuple[str, str], float]:
    """Each target's canary share of traffic: the in-flight release's, else 0.

    A target whose last release ended (promoted, rolled back, rejected) has no canary any
    more, so it reads 0 rather than the last step's weight. Rolling back also counts as 0:
    the rollback service restores stable first, and the share it left is not the planner's
    to know.
    """
    weights: dict[tuple[str, str], float] = {}
    for state in states:
        key = (state.target.namespace, state.target.name)
        weight = state.canary_weight if state.status in IN_FLIGHT else 0.0
        weights[key] = max(weights.get(key, 0.0), weight)
    return weights
