"""Planning and validation: overrides only tighten, and every reason to refuse is named."""

from __future__ import annotations

import pytest

from canaryflow.planner.planning import Admission, Plan, Refusal, plan
from canaryflow.planner.validation import DeploymentFacts, check_request
from canaryflow_contracts.events import AnalysisOverrides, PolicyOverrides, VersionSpec
from canaryflow_contracts.policy import MetricTemplate, ReleasePolicySpec
from tests.unit.planner.factory import DEPLOYMENT, OLD_IMAGE, POLICY_SPEC, T0, at, policy, request

SPEC = ReleasePolicySpec.model_validate(POLICY_SPEC)


def planned(overrides: PolicyOverrides) -> Plan:
    result = plan(request(overrides), SPEC, T0)
    assert isinstance(result, Plan), result
    return result


def test_the_policy_alone_gives_its_steps_and_deadlines() -> None:
    result = planned(PolicyOverrides())
    assert [(s.index, s.weight, s.hold_seconds) for s in result.steps] == [
        (0, 10, 30),
        (1, 25, 30),
        (2, 50, 60),
    ]
    assert result.ready_deadline == at(60)
    assert result.pause_seconds == 300
    assert result.analysis.min_requests == 50
    assert result.analysis.max_error_rate == 0.05


@pytest.mark.parametrize(
    ("max_weight", "weights"),
    [(50, [10, 25, 50]), (30, [10, 25, 30]), (25, [10, 25]), (5, [5])],
)
def test_a_lower_max_weight_cuts_the_steps(max_weight: int, weights: list[int]) -> None:
    result = planned(PolicyOverrides(max_weight=max_weight))
    assert [s.weight for s in result.steps] == weights
    assert [s.index for s in result.steps] == list(range(len(weights)))


def test_tightenings_are_applied() -> None:
    overrides = PolicyOverrides(
        hold_seconds=45,
        analysis=AnalysisOverrides(
            max_error_rate=0.01, max_p99_latency_seconds=0.2, min_requests=200
        ),
    )
    result = planned(overrides)
    assert [s.hold_seconds for s in result.steps] == [45, 45, 60]
    assert result.analysis.min_requests == 200
    assert result.analysis.max_error_rate == 0.01
    assert result.analysis.max_p99_latency_seconds == 0.2
    # ...and written into the rules the metrics-watcher judges with.
    limits = {rule.template: rule.max for rule in result.tightened.metrics}
    assert limits[MetricTemplate.ERROR_RATE] == 0.01
    assert limits[MetricTemplate.P99_LATENCY] == 0.2
    assert result.tightened.min_requests == 200


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (PolicyOverrides(max_weight=80), "overrides.max_weight"),
        (PolicyOverrides(hold_seconds=5), "overrides.hold_seconds"),
        (
            PolicyOverrides(analysis=AnalysisOverrides(max_error_rate=0.2)),
            "overrides.analysis.max_error_rate",
        ),
        (
            PolicyOverrides(analysis=AnalysisOverrides(max_p99_latency_seconds=2)),
            "overrides.analysis.max_p99_latency_seconds",
        ),
        (
            PolicyOverrides(analysis=AnalysisOverrides(min_requests=10)),
            "overrides.analysis.min_requests",
        ),
    ],
)
def test_a_loosening_is_refused_naming_the_field(overrides: PolicyOverrides, field: str) -> None:
    result = plan(request(overrides), SPEC, T0)
    assert isinstance(result, Refusal)
    [reason] = result.reasons
    assert reason.startswith(field + " ")
    assert "loosens" in reason


def test_every_loosening_is_reported_at_once() -> None:
    overrides = PolicyOverrides(
        max_weight=100, analysis=AnalysisOverrides(max_error_rate=0.5, min_requests=1)
    )
    result = plan(request(overrides), SPEC, T0)
    assert isinstance(result, Refusal)
    assert len(result.reasons) == 3


def test_a_threshold_the_policy_lacks_is_a_tightening() -> None:
    only_errors = {
        **POLICY_SPEC,
        "analysis": {"metrics": [{"name": "errors", "template": "error-rate", "max": 0.05}]},
    }
    spec = ReleasePolicySpec.model_validate(only_errors)
    overrides = PolicyOverrides(analysis=AnalysisOverrides(max_p99_latency_seconds=9))
    result = plan(request(overrides), spec, T0)
    assert isinstance(result, Plan)
    assert result.analysis.max_p99_latency_seconds == 9
    added = [rule for rule in result.tightened.metrics if rule.template == "p99-latency"]
    assert [rule.max for rule in added] == [9]


def test_a_valid_request_is_admitted_with_the_stable_image() -> None:
    admitted = check_request(request(), DEPLOYMENT, [policy()], T0)
    assert isinstance(admitted, Admission)
    assert admitted.policy_name == "web-policy"
    assert admitted.stable_image == OLD_IMAGE


def refusal(*args: object) -> list[str]:
    result = check_request(*args)  # type: ignore[arg-type]
    assert isinstance(result, Refusal), result
    return list(result.reasons)


def test_a_missing_deployment_and_policy_are_both_reported() -> None:
    reasons = refusal(request(), None, [], T0)
    assert reasons[0] == "Deployment shop/web not found"
    assert "no ReleasePolicy in namespace shop" in reasons[1]


def test_a_policy_for_another_deployment_does_not_count() -> None:
    reasons = refusal(request(), DEPLOYMENT, [policy(targetRef="api")], T0)
    assert "no ReleasePolicy" in reasons[0]


def test_an_invalid_policy_is_named() -> None:
    reasons = refusal(request(), DEPLOYMENT, [policy(steps=[])], T0)
    assert reasons[0].startswith("ReleasePolicy shop/web-policy is invalid: steps")


def test_an_image_the_policy_does_not_allow_is_refused_with_the_rule() -> None:
    rules = {"allowedPrefixes": ["registry.example.com/shop"], "requireDigest": True}
    reasons = refusal(
        request(image="ghcr.io/someone/web:v2"), DEPLOYMENT, [policy(images=rules)], T0
    )
    assert reasons == [
        "version.image: image 'ghcr.io/someone/web:v2' is not under any allowed prefix "
        "(registry.example.com/shop) and is not pinned by digest (@sha256:...), which the "
        "policy requires (ReleasePolicy web-policy)"
    ]
    pinned = "registry.example.com/shop/web:v2@sha256:" + "c" * 64
    assert isinstance(
        check_request(request(image=pinned), DEPLOYMENT, [policy(images=rules)], T0), Admission
    )


def test_two_policies_for_one_target_are_ambiguous() -> None:
    second = policy()
    second = type(second)(name="other", spec=second.spec)
    reasons = refusal(request(), DEPLOYMENT, [policy(), second], T0)
    assert "other, web-policy" in reasons[0]


def test_an_unknown_container_and_too_few_replicas_are_refused() -> None:
    req = request().model_copy(update={"version": VersionSpec(image="web:v2", container="side")})
    small = DeploymentFacts(replicas=1, containers=(("web", OLD_IMAGE),))
    reasons = refusal(req, small, [policy()], T0)
    assert any("no container 'side'" in r for r in reasons)
    assert any("at least 2" in r for r in reasons)


def test_loosening_reasons_join_the_others() -> None:
    reasons = refusal(request(PolicyOverrides(max_weight=90)), None, [policy()], T0)
    assert reasons[0] == "Deployment shop/web not found"
    assert reasons[1].startswith("overrides.max_weight")


def test_a_one_pod_target_is_admitted_with_a_weighted_router_and_refused_by_replica_ratio() -> None:
    single = DeploymentFacts(replicas=1, containers=(("web", OLD_IMAGE),))
    traefik = policy(traffic={"router": "traefik", "sticky": {"cookieName": "v"}})

    assert isinstance(check_request(request(), single, [traefik], T0), Admission)
    reasons = refusal(request(), single, [policy()], T0)
    assert any("replica-ratio router cannot split it at 10 %" in r for r in reasons), reasons


def test_an_unknown_router_and_sticky_users_it_cannot_keep_are_refused_with_the_reason() -> None:
    unknown = refusal(request(), DEPLOYMENT, [policy(traffic={"router": "istio"})], T0)
    assert unknown == [
        "traffic: unknown traffic router 'istio' (known: gateway-api, replica-ratio, traefik) "
        "(ReleasePolicy web-policy)"
    ]
    sticky = policy(traffic={"router": "gateway-api", "sticky": {"cookieName": "v"}})
    (reason,) = refusal(request(), DEPLOYMENT, [sticky], T0)
    assert "no session persistence" in reason and "use the traefik router" in reason


def test_a_router_this_installation_has_not_enabled_is_refused_with_the_reason() -> None:
    traefik = policy(traffic={"router": "traefik"})

    refused = check_request(request(), DEPLOYMENT, [traefik], T0, routers={"replica-ratio"})

    assert isinstance(refused, Refusal)
    assert refused.reasons == (
        "traffic: traffic router 'traefik' is not enabled in this installation (enabled: "
        "replica-ratio; the Helm chart's traffic.routers) (ReleasePolicy web-policy)",
    )
    allowed = check_request(request(), DEPLOYMENT, [traefik], T0, routers={"traefik"})
    assert isinstance(allowed, Admission)
