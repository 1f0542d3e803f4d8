"""Replica decisions, weights and objects of the routers (replica ratio, Traefik, Gateway API),
and their factory."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes.client import (
    ApiClient,
    ApiException,
    V1Endpoint,
    V1EndpointConditions,
    V1EndpointSlice,
    V1ObjectMeta,
    V1ObjectReference,
    V1Pod,
)

from canaryflow.runtime.conventions import TRACK_LABEL, DeploymentReadiness
from canaryflow.runtime.traffic import (
    CannotSplit,
    ReplicaPlan,
    every_router,
    router_for,
    weighted,
)
from canaryflow.runtime.traffic.gateway_api import split_rules
from canaryflow.runtime.traffic.replica_ratio import ReplicaRatioRouter, ready_share
from canaryflow.runtime.traffic.services import (
    leaving_endpoints,
    stable_selector,
    track_service_body,
)
from canaryflow.runtime.traffic.traefik import (
    TraefikRouter,
    match_routes,
    neutral_spec,
    reweighted,
    split_spec,
    weights,
)
from canaryflow_contracts.events import TargetRef
from canaryflow_contracts.policy import HeaderMatch, RouteMatch, Sticky, Traffic


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
    assert router_for(Traffic(router="replica-ratio")).name == "replica-ratio"
    assert router_for(Traffic(router="traefik")).name == "traefik"
    assert router_for(Traffic(router="gateway-api")).name == "gateway-api"
    with pytest.raises(ValueError, match=r"unknown traffic router 'mesh' \(known: "):
        router_for(Traffic(router="mesh"))


def test_only_the_enabled_routers_are_made_and_finalized() -> None:
    with pytest.raises(ValueError, match=r"'traefik' is not enabled .*\(enabled: replica-ratio;"):
        router_for(Traffic(router="traefik"), enabled={"replica-ratio"})
    assert router_for(Traffic(router="traefik"), enabled={"traefik"}).name == "traefik"
    api = ApiClient()
    assert [r.name for r in every_router(api, {"replica-ratio"})] == ["replica-ratio"]
    assert {r.name for r in every_router(api)} == {"replica-ratio", "traefik", "gateway-api"}


def test_the_traefik_router_canaries_a_one_pod_target_at_any_weight() -> None:
    router = TraefikRouter.__new__(TraefikRouter)  # replicas() is pure: no client needed

    # A baseline beside the canary, on pods of its own, at the same share.
    assert router.replicas(1, 5) == ReplicaPlan(stable=1, canary=1, baseline=1)
    assert router.replicas(10, 25) == ReplicaPlan(stable=10, canary=3, baseline=3)
    assert router.replicas(10, 50) == ReplicaPlan(stable=10, canary=5, baseline=3)
    assert router.replicas(10, 100) == ReplicaPlan(stable=10, canary=10, baseline=0)
    with pytest.raises(CannotSplit):
        router.replicas(0, 5)


@pytest.mark.parametrize(
    ("canary", "expected"),
    [
        (0, {"stable": 100, "baseline": 0, "canary": 0}),
        (5, {"stable": 90, "baseline": 5, "canary": 5}),
        (33, {"stable": 34, "baseline": 33, "canary": 33}),
        (34, {"stable": 33, "baseline": 33, "canary": 34}),
        (50, {"stable": 25, "baseline": 25, "canary": 50}),
        (99, {"stable": 1, "baseline": 0, "canary": 99}),
        (100, {"stable": 0, "baseline": 0, "canary": 100}),
    ],
)
def test_the_baseline_gets_the_canarys_share_unless_stable_would_get_less(
    canary: int, expected: dict[str, int]
) -> None:
    shares = weighted.track_weights(canary)

    assert shares == expected
    assert sum(shares.values()) == 100
    assert shares["baseline"] <= shares["stable"] or canary == 100


def test_traefik_weights_name_the_per_track_services_and_keep_the_rest() -> None:
    target = TargetRef(namespace="shop", name="web")
    listed = [
        {"name": "web-stable", "port": 80, "weight": 100},
        {"name": "web-baseline", "port": 80, "weight": 0},
        {"name": "web-canary", "port": 80, "weight": 0, "sticky": {"cookie": {}}},
    ]

    result = reweighted(listed, weights(target, 5))

    assert result == [
        {"name": "web-stable", "port": 80, "weight": 90},
        {"name": "web-baseline", "port": 80, "weight": 5},
        {"name": "web-canary", "port": 80, "weight": 5, "sticky": {"cookie": {}}},
    ]
    with pytest.raises(LookupError, match="does not list web-baseline, web-canary"):
        reweighted(listed[:1], weights(target, 5))
    with pytest.raises(ValueError, match="percentage"):
        weights(target, 101)


def test_a_router_that_writes_routes_is_refused_without_a_client_and_unknown_ones_always() -> None:
    target = TargetRef(namespace="shop", name="web")
    with pytest.raises(ValueError, match="give it a client"):
        asyncio.run(router_for(Traffic(router="traefik")).set_routes(target, 5))
    with pytest.raises(ValueError, match="unknown traffic router 'istio'"):
        router_for(Traffic(router="istio"))


def test_options_a_router_cannot_honour_are_refused_with_the_reason() -> None:
    sticky = Sticky(cookie_name="v")
    with pytest.raises(ValueError, match="no session persistence"):
        router_for(Traffic(router="gateway-api", sticky=sticky))
    with pytest.raises(ValueError, match="cannot keep users sticky or route by header"):
        router_for(Traffic(sticky=sticky))
    with pytest.raises(ValueError, match="cannot keep users sticky or route by header"):
        router_for(Traffic(match=[CANARY_HEADER]))
    assert router_for(Traffic(router="traefik", sticky=sticky, match=[CANARY_HEADER]))


CANARY_HEADER = RouteMatch(headers=[HeaderMatch(name="X-Canary", exact="always")])


def test_the_traefik_split_starts_on_stable_with_the_policys_cookie() -> None:
    target = TargetRef(namespace="shop", name="web")

    spec = split_spec(target, 80, Sticky(cookie_name="shop_v", max_age_seconds=3600))

    assert spec == {
        "weighted": {
            "services": [
                {"name": "web-stable", "port": 80, "weight": 100},
                {"name": "web-baseline", "port": 80, "weight": 0},
                {"name": "web-canary", "port": 80, "weight": 0},
            ],
            "sticky": {"cookie": {"name": "shop_v", "httpOnly": True, "maxAge": 3600}},
        }
    }
    assert "sticky" not in split_spec(target, 80, None)["weighted"]


def test_a_traefik_service_the_router_made_routes_to_the_targets_own_service_afterwards() -> None:
    # Kept rather than deleted: an IngressRoute that routes to it would answer 404 without it.
    assert neutral_spec("web", 8080) == {
        "weighted": {"services": [{"name": "web", "port": 8080, "weight": 1}]}
    }


def test_traefik_match_routes_copy_every_route_to_the_target_with_the_headers_anded() -> None:
    target = TargetRef(namespace="shop", name="web")
    cookie = RouteMatch(headers=[HeaderMatch(name="Cookie", regex="(^|; )canary=always(;|$)")])
    routes = [
        {
            "spec": {
                "entryPoints": ["web"],
                "routes": [
                    {
                        "match": "Host(`shop.local`)",
                        "services": [{"name": "web", "kind": "TraefikService"}],
                    },
                    {"match": "Host(`other`)", "services": [{"name": "other", "port": 80}]},
                ],
            }
        }
    ]

    body = match_routes(target, 80, routes, [CANARY_HEADER, cookie])

    assert body is not None
    assert body["metadata"]["name"] == "web-canary-match"
    assert body["spec"]["entryPoints"] == ["web"]
    assert [r["match"] for r in body["spec"]["routes"]] == [
        "(Host(`shop.local`)) && Header(`X-Canary`, `always`)",
        "(Host(`shop.local`)) && HeaderRegexp(`Cookie`, `(^|; )canary=always(;|$)`)",
    ]
    for route in body["spec"]["routes"]:
        assert route["services"] == [{"name": "web-canary", "port": 80}]
        assert route["priority"] > len(route["match"])
    assert match_routes(target, 80, routes, []) is None
    with pytest.raises(LookupError, match="no IngressRoute in shop routes to TraefikService web"):
        match_routes(target, 80, routes[:0], [CANARY_HEADER])


def test_gateway_api_rules_weight_every_rule_and_put_header_matches_first() -> None:
    target = TargetRef(namespace="shop", name="web")
    original = [
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "backendRefs": [{"name": "web", "port": 80}],
        }
    ]

    rules = split_rules(original, target, 80, 30, [CANARY_HEADER])

    assert rules == [
        {
            "matches": [
                {
                    "path": {"type": "PathPrefix", "value": "/"},
                    "headers": [{"type": "Exact", "name": "X-Canary", "value": "always"}],
                }
            ],
            "backendRefs": [{"name": "web-canary", "port": 80, "weight": 1}],
        },
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "backendRefs": [
                {"name": "web-stable", "port": 80, "weight": 40},
                {"name": "web-baseline", "port": 80, "weight": 30},
                {"name": "web-canary", "port": 80, "weight": 30},
            ],
        },
    ]
    # At weight 0 (before the canary is Ready, and at finalize) nothing reaches the canary.
    at_zero = split_rules(original, target, 80, 0, [CANARY_HEADER])
    assert len(at_zero) == 1
    assert at_zero[0]["backendRefs"][0] == {"name": "web-stable", "port": 80, "weight": 100}
    assert {ref["weight"] for ref in at_zero[0]["backendRefs"][1:]} == {0}
    assert original[0]["backendRefs"] == [{"name": "web", "port": 80}], "input left as it was"


def test_per_track_services_select_the_targets_pods_by_track() -> None:
    target = TargetRef(namespace="shop", name="web")
    stable = {
        "spec": {
            "selector": {"matchLabels": {"app": "web", TRACK_LABEL: "stable"}},
            "template": {"metadata": {"labels": {"app": "web", TRACK_LABEL: "stable"}}},
        }
    }
    assert stable_selector(stable, target) == {"app": "web"}
    body = track_service_body(target, "canary", {"app": "web"}, [])
    assert body.spec.selector == {"app": "web", TRACK_LABEL: "canary"}
    assert body.metadata.name == "web-canary"
    unlabelled = {"spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {}}}
    with pytest.raises(LookupError, match=r"do not carry the label canaryflow\.io/track: stable"):
        stable_selector(unlabelled, target)


def test_a_weighted_router_gives_a_track_traffic_only_once_its_service_is_reachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stable before the take-over, the baseline and the canary before a positive weight;
    weight 0 (finalize, the rollback's first write) waits for nothing."""
    calls: list[str] = []

    async def reachable(api: object, target: TargetRef, track: str) -> None:
        calls.append(f"reachable {track}")

    def services(*_: object) -> int:
        calls.append("services")
        return 80

    monkeypatch.setattr(weighted, "reachable", reachable)
    monkeypatch.setattr(weighted, "ensure_track_services", services)

    class Recording(weighted.WeightedRouter):
        def _take_over(self, target: TargetRef, port: int) -> None:
            calls.append(f"take over on {port}")

        def _write(self, target: TargetRef, canary_weight_percent: int) -> None:
            calls.append(f"weight {canary_weight_percent}")

    router = Recording(object(), Traffic(router="traefik"))
    target = TargetRef(namespace="shop", name="web")

    async def release() -> None:
        await router.reconcile(target)
        await router.set_routes(target, 10)
        await router.set_routes(target, 0)

    asyncio.run(release())
    assert calls == [
        "services",
        "reachable stable",
        "take over on 80",
        "reachable baseline",
        "reachable canary",
        "weight 10",
        "weight 0",
    ]


def _pod(name: str, track: str, terminating: bool = False) -> V1Pod:
    return V1Pod(
        metadata=V1ObjectMeta(
            name=name,
            labels={"app": "web", TRACK_LABEL: track},
            deletion_timestamp="2026-12-07T03:00:00Z" if terminating else None,
        )
    )


def _endpoint(pod: str, ready: bool | None = True) -> V1Endpoint:
    return V1Endpoint(
        addresses=[f"10.244.0.{len(pod)}"],
        conditions=V1EndpointConditions(ready=ready),
        target_ref=V1ObjectReference(kind="Pod", name=pod),
    )


def test_a_route_given_back_waits_out_every_endpoint_of_a_pod_that_goes() -> None:
    """The target's own Service selects the canary's and baseline's pods too: their
    endpoints, and those of pods gone or terminating, keep the route on the track Services;
    an endpoint the API already marks not ready is no gateway's to route to."""
    pods = [
        _pod("web-1", "stable"),
        _pod("web-2", "stable"),
        _pod("web-canary-1", "canary"),
        _pod("web-baseline-1", "baseline"),
        _pod("web-3", "stable", terminating=True),
    ]
    endpoints = [
        _endpoint("web-1"),
        _endpoint("web-2", ready=None),  # unset means ready
        _endpoint("web-canary-1"),
        _endpoint("web-baseline-1"),
        _endpoint("web-3"),
        _endpoint("web-gone"),  # deleted, the controller has not caught up
        _endpoint("web-4", ready=False),
    ]
    slices = [
        V1EndpointSlice(address_type="IPv4", endpoints=endpoints[:3]),
        V1EndpointSlice(address_type="IPv4", endpoints=endpoints[3:]),
    ]
    assert leaving_endpoints(slices, pods) == (
        6,
        ["web-canary-1", "web-baseline-1", "web-3", "web-gone"],
    )
    assert leaving_endpoints(
        [V1EndpointSlice(address_type="IPv4", endpoints=endpoints[:2])], pods
    ) == (2, [])
    assert leaving_endpoints([V1EndpointSlice(address_type="IPv4", endpoints=None)], pods) == (
        0,
        [],
    )


def test_a_weighted_router_gives_its_routes_back_only_once_the_service_has_settled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``remove`` waits for the own Service to list only pods that stay before the routes go
    back, and waits for nothing when it took nothing over; the per-track Services go after,
    and only once the gateway has had the time to see the routes given back."""
    calls: list[str] = []

    async def settled(api: object, target: TargetRef, service: str) -> None:
        calls.append(f"settled {service}")

    async def sleep(seconds: float) -> None:
        calls.append(f"sleep {seconds:g}")

    monkeypatch.setattr(weighted, "settled", settled)
    monkeypatch.setattr(asyncio, "sleep", sleep)
    taken = [True, False]

    class Recording(weighted.WeightedRouter):
        def _taken_over(self, target: TargetRef) -> bool:
            return taken[0]

        def _give_back(self, target: TargetRef) -> bool:
            calls.append("give back")
            return taken.pop(0)

        def _delete_track_services(self, target: TargetRef) -> None:
            calls.append("delete services")

    router = Recording(object(), Traffic(router="traefik"), service="shop")
    target = TargetRef(namespace="shop", name="web")
    asyncio.run(router.remove(target))
    asyncio.run(router.remove(target))
    settle = f"sleep {weighted.GIVE_BACK_SETTLE_SECONDS:g}"
    assert calls == [
        "settled shop",
        "give back",
        settle,
        "delete services",
        "give back",
        "delete services",
    ]


class StoredTraefikService(TraefikRouter):
    """The traefik router over one TraefikService kept in memory with a resourceVersion, as
    the API server keeps it: a replace carrying an older version is refused with 409."""

    def __init__(self, body: dict[str, Any] | None, traffic: Traffic | None = None) -> None:
        super().__init__(None, traffic or Traffic(router="traefik"))
        self.body = body
        self.revision = 1
        self.writes: list[dict[str, Any]] = []
        self.before_write: list[Callable[[], None]] = []
        self.deleted: list[str] = []

    def store(self, body: dict[str, Any]) -> None:
        self.revision += 1
        self.body = copy.deepcopy(body)
        self.body["metadata"]["resourceVersion"] = str(self.revision)

    def _read(self, target: TargetRef) -> dict[str, Any] | None:
        if self.body is None:
            return None
        found = copy.deepcopy(self.body)
        found["metadata"]["resourceVersion"] = str(self.revision)
        return found

    def _replace(self, target: TargetRef, body: dict[str, Any]) -> None:
        while self.before_write:
            self.before_write.pop(0)()  # another writer, between this one's read and write
        if body["metadata"].get("resourceVersion") != str(self.revision):
            raise ApiException(status=409, reason="Conflict")
        self.writes.append(copy.deepcopy(body))
        self.store(body)

    def _delete_match_route(self, target: TargetRef) -> None:
        self.deleted.append("match route")

    def _neutral(self, target: TargetRef) -> dict[str, Any]:
        return neutral_spec(target.name, 80)


def _taken_over_service(target: TargetRef, canary: int) -> dict[str, Any]:
    spec = split_spec(target, 80, None)
    spec["weighted"]["services"] = [
        {"name": name, "port": 80, "weight": weight}
        for name, weight in weights(target, canary).items()
    ]
    original = json.dumps({"weighted": {"services": [{"name": "web", "port": 80}]}})
    return {
        "metadata": {"name": target.name, "annotations": {"canaryflow.io/original-spec": original}},
        "spec": spec,
    }


def test_a_weight_written_from_an_older_read_never_undoes_the_routes_given_back() -> None:
    """A redelivered promotion finalizes (weight 0) while the first delivery gives the route
    back: the finalize read the weighted spec before, its write comes after. It is refused
    (409), read again, and writes nothing; the route keeps the original services."""
    target = TargetRef(namespace="shop", name="web")
    router = StoredTraefikService(_taken_over_service(target, 50))
    first = StoredTraefikService(None)
    first.body, first.revision = router.body, router.revision

    def gave_back() -> None:
        first.body, first.revision = router.body, router.revision
        assert first._give_back(target)
        router.body, router.revision = first.body, first.revision

    router.before_write.append(gave_back)
    asyncio.run(router.finalize(target))
    assert router.writes == []  # its own write was refused and not made again
    assert router.body is not None
    assert router.body["spec"] == {"weighted": {"services": [{"name": "web", "port": 80}]}}
    assert "canaryflow.io/original-spec" not in router.body["metadata"]["annotations"]
    assert router.names_tracks(target, router.body) == []
    # A positive weight on a route given back is refused, not written.
    with pytest.raises(LookupError, match="does not list web-baseline, web-canary, web-stable"):
        router._weigh(target, 10)


def test_a_weight_is_written_again_over_a_newer_version_of_a_route_still_taken_over() -> None:
    target = TargetRef(namespace="shop", name="web")
    router = StoredTraefikService(_taken_over_service(target, 10))
    router.before_write.append(lambda: router.store(router.body or {}))  # e.g. a label added
    router._weigh(target, 30)
    assert len(router.writes) == 1
    assert router.body is not None
    assert {s["name"]: s["weight"] for s in router.body["spec"]["weighted"]["services"]} == (
        weights(target, 30)
    )


def test_the_per_track_services_are_kept_while_a_route_still_names_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    target = TargetRef(namespace="shop", name="web")
    broken = _taken_over_service(target, 0)
    del broken["metadata"]["annotations"]["canaryflow.io/original-spec"]
    router = StoredTraefikService(broken)
    router._delete_track_services(target)  # would raise: the router has no client
    assert "still routes to web-baseline, web-canary, web-stable" in caplog.text
    assert router.names_tracks(target, {"spec": neutral_spec("web", 80)}) == []


def test_two_take_overs_of_one_step_at_once_both_succeed_and_keep_the_persons_spec() -> None:
    """A redelivered ApplyPhase takes the TraefikService over beside the first delivery: the
    later write is refused (409), reads it taken over, and writes nothing more."""
    target = TargetRef(namespace="shop", name="web")
    own = {"weighted": {"services": [{"name": "web", "port": 80}]}}
    router = StoredTraefikService({"metadata": {"name": "web"}, "spec": own})
    other = StoredTraefikService(None)

    def took_over() -> None:
        other.body, other.revision = router.body, router.revision
        other._take_over(target, 80)
        router.body, router.revision = other.body, other.revision

    router.before_write.append(took_over)
    router._take_over(target, 80)
    assert router.writes == []  # the other delivery's write stands
    assert router.body is not None
    assert json.loads(router.body["metadata"]["annotations"]["canaryflow.io/original-spec"]) == own
    assert router.names_tracks(target, router.body) == ["web-baseline", "web-canary", "web-stable"]
