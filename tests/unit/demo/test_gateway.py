"""What the demo makes of the gateway's figures and of what users behind it saw."""

from __future__ import annotations

import re
from collections import Counter

from canaryflow.dataplane.users import NO_VERSION, Tally
from canaryflow.demo.gateway import Window, snapshot, traefik_services


def test_the_route_s_inline_service_is_matched_by_namespace_and_route_whatever_its_hash() -> None:
    pattern = re.compile(traefik_services("demo-1", "web"))
    assert pattern.fullmatch("demo-1-web-096b1381b197cc677ce2@kubernetescrd")
    assert not pattern.fullmatch("demo-1-web-stable-80@kubernetescrd@other")
    assert not pattern.fullmatch("demo-10-web-096b1381b197cc677ce2@kubernetescrd")


def test_a_window_counts_only_what_happened_since_the_snapshot() -> None:
    tally = Tally()
    tally.sessions.update({"v1": 8, "v2": 2})
    tally.requests.update({("v1", 200): 30, ("v2", 200): 6})
    before = snapshot(tally)
    tally.sessions.update({"v1": 9, "v2": 1})
    tally.requests.update(
        {("v1", 200): 27, ("v2", 500): 1, (NO_VERSION, 502): 2, (NO_VERSION, 0): 1}
    )
    tally.mixed += 1
    window = Window.between(before, tally)
    assert window.sessions == Counter({"v1": 9, "v2": 1})
    assert (window.mixed, window.failed, window.requests) == (1, 3, 31)
    assert window.line() == (
        "10 new sessions [v1 9 (90%), v2 1 (10%)], 1 saw two versions, "
        "3 of 31 requests failed at the gateway"
    )


def test_a_version_s_own_500_is_not_a_gateway_failure() -> None:
    before = Tally()
    after = Tally()
    after.requests.update({("v3", 500): 5, (NO_VERSION, 404): 1})
    assert Window.between(before, after).failed == 0
