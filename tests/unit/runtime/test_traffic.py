"""Replica decisions and weights of the routers (replica ratio, Traefik), and their factory."""

from __future__ import annotations

import pytest

from canaryflow.runtime.kube import DeploymentReadiness
from canaryflow.runtime.traffic import CannotSplit, ReplicaPlan, router_for
from canaryflow.runtime.traffic.replica_ratio import ReplicaRatioRouter, ready_share
from canaryflow.runtime.traffic.traefik import TraefikRouter, reweighted, weights
from canaryflow_contracts.events import TargetRef


@pytest.mark.parametrize(
    ("full", "weight", "plan"),
    [
        (4, 25, ReplicaPlan(stable=2, canary=1, baseline=1)),
        (4, 50, ReplicaPlan(stable=1, canary=2, baseline=1)),  # stable keeps one pod
        (10, 10, ReplicaPlan(stable=8, canary=1, baseline=1)),
        (10, 5, ReplicaPlan(stable=8, canary=1, baseline=1)),  # at least one canary pod
        (10, 30, ReplicaPlan(stable=4, canary=3, baseline=3)),
        (10, 50, ReplicaPlan(stable=1, canary=5, baseline=4)),
        (4, 100, ReplicaPlan(stable=1, canary=3)),  # stable keeps one until promotion
        (2, 50, ReplicaPlan(stable=1, canary=1)),  # too small for a baseline
        (3, 1, ReplicaPlan(stable=1, canary=1, baseline=1)),
    ],
)
def test_replicas_keep_the_original_total(full: int, weight: int, plan: ReplicaPlan) -> None:
    decided = ReplicaRatioRouter().replicas(full, weight)
    assert decided == plan
    assert decided.stable + decided.canary + decided.baseline == full


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


def test_the_weight_is_the_canarys_share_of_all_ready_pods_baseline_included() -> None:
    stable = DeploymentReadiness(True, desired=8, ready=8, updated=8, available=8, settled=True)
    one = DeploymentReadiness(True, desired=1, ready=1, updated=1, available=1, settled=True)
    assert ReplicaRatioRouter().verify_weight(stable, one, one) == 10.0


def test_verify_weight_counts_ready_pods_not_desired_ones() -> None:
    stable = DeploymentReadiness(True, desired=3, ready=3, updated=3, available=3, settled=True)
    canary = DeploymentReadiness(True, desired=2, ready=1, updated=2, available=1, settled=True)
    assert ReplicaRatioRouter().verify_weight(stable, canary) == 25.0


def test_factory() -> None:
    assert isinstance(router_for(), ReplicaRatioRouter)
    assert router_for("replica-ratio").name == "replica-ratio"
    with pytest.raises(ValueError, match="unknown traffic strategy 'mesh'"):
        router_for("mesh")


def test_the_traefik_router_canaries_a_one_pod_target_at_any_weight() -> None:
    router = TraefikRouter.__new__(TraefikRouter)  # replicas() is pure: no client needed

    assert router.replicas(1, 5) == ReplicaPlan(stable=1, canary=1, baseline=0)
    assert router.replicas(10, 25) == ReplicaPlan(stable=10, canary=3, baseline=0)
    with pytest.raises(CannotSplit):
        router.replicas(0, 5)


def test_traefik_weights_name_the_per_track_services_and_keep_the_rest() -> None:
    target = TargetRef(namespace="shop", name="web")
    listed = [
        {"name": "web-stable", "port": 80, "weight": 100},
        {"name": "web-canary", "port": 80, "weight": 0, "sticky": {"cookie": {}}},
    ]

    result = reweighted(listed, weights(target, 5))

    assert result == [
        {"name": "web-stable", "port": 80, "weight": 95},
        {"name": "web-canary", "port": 80, "weight": 5, "sticky": {"cookie": {}}},
    ]
    with pytest.raises(LookupError, match="does not list web-canary"):
        reweighted(listed[:1], weights(target, 5))
    with pytest.raises(ValueError, match="percentage"):
        weights(target, 101)


def test_a_router_that_writes_routes_is_refused_without_a_client_and_unknown_ones_always() -> None:
    with pytest.raises(ValueError, match="give it a Kubernetes client"):
        router_for("traefik")
    with pytest.raises(ValueError, match="unknown traffic strategy 'istio'"):
        router_for("istio")
