"""The web process's HTTP surface without a bus: who may act, and what the pages are made of."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient, TestServer
from nats.aio.client import Client

from canaryflow.ui.app import ACTION_HEADER, Hub, Ui, UiSettings, build_app
from canaryflow.ui.identity import PROXY_SECRET_HEADER, IdentityPolicy

PROXIED = {"X-Forwarded-User": "ops@shop", PROXY_SECRET_HEADER: "s3cret"}


@pytest.fixture
async def http() -> AsyncIterator[TestClient[Any, Any]]:
    settings = UiSettings(identity=IdentityPolicy(header="X-Forwarded-User", proxy_secret="s3cret"))
    # No NATS: these requests are refused or answered before the bus is used.
    ui = Ui(settings, cast(Client, None), keys={})
    async with TestClient(TestServer(build_app(ui))) as client:
        yield client


async def test_the_page_knows_who_the_proxy_vouches_for_and_nobody_else(
    http: TestClient[Any, Any],
) -> None:
    me = await (await http.get("/api/me", headers=PROXIED)).json()
    assert (me["name"], me["can_act"], me["signs"]) == ("ops@shop", True, False)
    nobody = await (await http.get("/api/me", headers={"X-Forwarded-User": "ops@shop"})).json()
    assert (nobody["name"], nobody["can_act"]) == (None, False)


async def test_an_action_needs_a_proven_name_and_the_pages_own_header(
    http: TestClient[Any, Any],
) -> None:
    url = "/api/releases/rel-1/commands"
    unproven = await http.post(url, json={"action": "pause"}, headers={ACTION_HEADER: "1"})
    assert unproven.status == 403
    cross_site = await http.post(url, json={"action": "pause"}, headers=PROXIED)
    assert cross_site.status == 403
    unknown = await http.post(
        url, json={"action": "delete"}, headers={**PROXIED, ACTION_HEADER: "1"}
    )
    assert unknown.status == 400
    assert "no operator command 'delete'" in await unknown.text()


async def test_the_pages_and_their_scripts_are_served_by_the_process(
    http: TestClient[Any, Any],
) -> None:
    for path in ("/", "/releases/rel-1", "/static/ui.js", "/static/ui.css"):
        assert (await http.get(path)).status == 200, path
    chart = await http.get("/assets/uplot/uPlot.iife.min.js")
    assert chart.status == 200, "uPlot not installed: make venv (tools/ui/package.json)"
    assert "uPlot" in await chart.text()


def test_a_browser_follows_its_release_only() -> None:
    hub = Hub()
    mine, every = hub.join("rel-1"), hub.join("")
    hub.publish({"release": "rel-2", "id": "a"})
    hub.publish({"release": "rel-1", "id": "b"})
    assert [mine.get_nowait()["id"]] == ["b"]
    assert [every.get_nowait()["id"], every.get_nowait()["id"]] == ["a", "b"]
    hub.leave(mine)
    hub.publish({"release": "rel-1", "id": "c"})
    assert mine.empty()


def test_a_group_page_follows_the_group_and_its_members() -> None:
    hub = Hub()
    group = hub.join("grp-1", "grp-1-m1", "grp-1-m2")
    for release in ("grp-1", "rel-9", "grp-1-m2"):
        hub.publish({"release": release, "id": release})
    assert [group.get_nowait()["id"], group.get_nowait()["id"]] == ["grp-1", "grp-1-m2"]
    assert group.empty()


async def test_the_group_and_pipeline_pages_are_served(http: TestClient[Any, Any]) -> None:
    for path, script in (("/groups/grp-1", "groupPage"), ("/pipelines/p-1", "pipelinePage")):
        answer = await http.get(path)
        assert answer.status == 200, path
        assert f"canaryflow.{script}()" in await answer.text()
