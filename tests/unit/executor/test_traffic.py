"""Replica decisions and the weight the canary really gets under the replica-ratio strategy."""

from __future__ import annotations

import pytest

from canaryflow.executor.traffic import CannotSplit, ReplicaPlan, router_for
from canaryflow.executor.traffic.replica_ratio import ReplicaRatioRouter, ready_share
from canaryflow.runtime.kube import DeploymentReadiness


@pytest.mark.parametrize(
    ("full", "weight", "plan"),
    [
        (4, 25, ReplicaPlan(stable=3, canary=1)),
        (4, 50, ReplicaPlan(stable=2, canary=2)),
        (10, 10, ReplicaPlan(stable=9, canary=1)),
        (10, 5, ReplicaPlan(stable=9, canary=1)),  # at least one canary pod
        (4, 100, ReplicaPlan(stable=1, canary=3)),  # stable keeps one until promotion
        (2, 50, ReplicaPlan(stable=1, canary=1)),
        (3, 1, ReplicaPlan(stable=2, canary=1)),
    ],
)
def test_replicas_keep_the_original_total(full: int, weight: int, plan: ReplicaPlan) -> None:
    decided = ReplicaRatioRouter().replicas(full, weight)
    assert decided == plan
    assert decided.stable + decided.canary == full


@pytest.mark.parametrize("full", [0, 1])
def test_fewer_than_two_replicas_cannot_be_split(full: int) -> None:
    with pytest.raises(CannotSplit, match="at least 2 replicas"):
        ReplicaRatioRouter().replicas(full, 20)


@pytest.mark.parametrize(
    ("canary", "stable", "share"),
    [(1, 3, 25.0), (2, 2, 50.0), (0, 4, 0.0), (0, 0, 0.0), (1, 2, 33.33)],
)
def test_ready_share(canary: int, stable: int, share: float) -> None:
    assert ready_share(canary, stable) == share


def test_verify_weight_counts_ready_pods_not_desired_ones() -> None:
    stable = DeploymentReadiness(True, desired=3, ready=3, updated=3, available=3, settled=True)
    canary = DeploymentReadiness(True, desired=2, ready=1, updated=2, available=1, settled=True)
    assert ReplicaRatioRouter().verify_weight(stable, canary) == 25.0


def test_factory() -> None:
    assert isinstance(router_for(), ReplicaRatioRouter)
    assert router_for("replica-ratio").name == "replica-ratio"
    with pytest.raises(ValueError, match="unknown traffic strategy 'mesh'"):
        router_for("mesh")
