"""At most N releases in flight per namespace and per cluster, from the target's policy."""

from __future__ import annotations

from canaryflow.planner.planning import limit_refusal
from canaryflow.planner.validation import check_request
from canaryflow_contracts.policy import InFlightLimits
from tests.unit.planner.factory import DEPLOYMENT, T0, policy, request

IN_FLIGHT = [("shop", "web-1"), ("shop", "api-1"), ("blog", "blog-1")]


def test_no_limits_no_refusal() -> None:
    assert limit_refusal(None, "shop", IN_FLIGHT) is None


def test_the_namespace_limit_counts_only_that_namespace() -> None:
    assert limit_refusal(InFlightLimits(namespace=3), "shop", IN_FLIGHT) is None
    assert limit_refusal(InFlightLimits(namespace=2), "shop", IN_FLIGHT) == (
        "namespace shop has 2 release(s) in flight (api-1, web-1); its policy allows 2"
    )
    assert limit_refusal(InFlightLimits(namespace=1), "blog", IN_FLIGHT) is not None
    assert limit_refusal(InFlightLimits(namespace=1), "news", IN_FLIGHT) is None


def test_the_cluster_limit_counts_every_namespace() -> None:
    assert limit_refusal(InFlightLimits(cluster=4), "news", IN_FLIGHT) is None
    assert limit_refusal(InFlightLimits(cluster=3), "news", IN_FLIGHT) == (
        "the cluster has 3 release(s) in flight; the policy allows 3"
    )


def test_the_policy_s_limits_reach_the_admission() -> None:
    limited = policy(limits={"namespace": 2, "cluster": 50})
    admitted = check_request(request(), DEPLOYMENT, [limited], T0)
    assert getattr(admitted, "limits", None) == InFlightLimits(namespace=2, cluster=50)
