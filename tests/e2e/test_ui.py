"""The web view in a real browser, on the real stack (issue 17).

Given the four services, the web process (``python -m canaryflow.ui``) behind a stand-in for an
authenticating proxy (the browser context sends the identity header and the proxy's secret, as
the proxy would), and Debian's chromium driven by Playwright: the list shows the releases in
flight, a release page plots canary against baseline and follows the release live, its buttons
send the CLI's commands in the proven name (signed with that person's key), a refusal shows on
the page, and a page that cannot tell who you are has no buttons.

Screenshots land in ``tmp_path``; with ``CANARYFLOW_UI_SCREENSHOTS=docs/images`` they are
written there too (how docs/web.md's pictures were made).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from kubernetes import client
from nats.js.api import DeliverPolicy
from playwright.async_api import Browser, BrowserContext, Page, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeout

from canaryflow.demo import shop
from canaryflow.demo.launcher import PROCESS_BASICS, ServiceLauncher, free_port
from canaryflow.ui.identity import PROXY_SECRET_HEADER
from canaryflow_contracts.events import (
    AnalysisVerdict,
    PauseRelease,
    ReleaseRolledBack,
    ReleaseStatusChanged,
    parse_event,
)
from tests.e2e.conftest import Releases
from tests.support import StackEnv, wait_until

pytestmark = [pytest.mark.stack, pytest.mark.usefixtures("local_cluster")]

CHROMIUM = "/usr/bin/chromium"
IDENTITY_HEADER = "X-Forwarded-User"
PROXY_SECRET = uuid.uuid4().hex
# Debian's chromium on a machine with no internet: no first-run, sync, component or
# background fetches (each would be refused, many at a time).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass
class UiProcess:
    url: str
    ops_public_key: str
    process: subprocess.Popen[bytes]
    log: Path


def _key_file(path: Path) -> str:
    key = Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()))
    public = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    return f"{public} {path.name}"


@pytest.fixture
def ui(services: ServiceLauncher, stack: StackEnv, tmp_path: Path) -> Iterator[UiProcess]:
    """The web process on the services' streams, trusting the proxy's header and secret, and
    holding ops@shop's key (mallory@shop is vouched for by the proxy but has no key)."""
    ops_public = _key_file(tmp_path / "ops")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k in PROCESS_BASICS},
        "PYTHONUNBUFFERED": "1",
        "NATS_URL": stack.nats_url,
        **stack.nats_env("operator"),
        "CANARYFLOW_PREFIX": services.prefix,
        "CANARYFLOW_UI_PORT": str(port),
        "CANARYFLOW_UI_IDENTITY_HEADER": IDENTITY_HEADER,
        "CANARYFLOW_UI_PROXY_SECRET": PROXY_SECRET,
        "CANARYFLOW_UI_OPERATOR_KEYS": f"ops@shop={tmp_path / 'ops'}",
        "JAEGER_UI_URL": stack.jaeger_query_url,
    }
    log = tmp_path / "ui.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "canaryflow.ui"], env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, log.read_text()
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        return False

    wait_until(healthy, timeout=30, message="the web process answering /healthz")
    yield UiProcess(url, ops_public, process, log)
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not await asyncio.to_thread(os.path.exists, CHROMIUM):
        pytest.fail(f"no {CHROMIUM}: `make venv` installs Debian's chromium")
    async with async_playwright() as playwright:
        # Playwright gives each launch a fresh, empty profile (user data) directory.
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


PAGE_ERRORS: list[str] = []


async def as_person(browser: Browser, name: str | None) -> BrowserContext:
    """A browser context as the proxy would pass it on: ``name`` vouched for, or nobody.
    Every script error of its pages is kept in ``PAGE_ERRORS``."""
    headers = {IDENTITY_HEADER: name, PROXY_SECRET_HEADER: PROXY_SECRET} if name else {}
    context = await browser.new_context(
        extra_http_headers=headers, viewport={"width": 1280, "height": 900}
    )
    context.on("weberror", lambda error: PAGE_ERRORS.append(str(error.error)))
    return context


def save(page_png: Path, name: str) -> None:
    wanted = os.environ.get("CANARYFLOW_UI_SCREENSHOTS")
    if wanted:
        Path(wanted).mkdir(parents=True, exist_ok=True)
        shutil.copy(page_png, Path(wanted) / name)


async def watch_rows(page: Page, table: str) -> None:
    """Record, in the page, when each row with a ``data-event-id`` first appears in ``table``."""
    await page.evaluate(
        """(table) => {
            window.__shown = window.__shown || {};
            const note = () => document.querySelectorAll(table + ' tr[data-event-id]').forEach(
                (row) => { window.__shown[row.dataset.eventId] ??= Date.now(); });
            new MutationObserver(note).observe(document.querySelector(table),
                {childList: true, subtree: true});
            note();
        }""",
        table,
    )


async def test_the_web_view_lists_plots_follows_and_steers_releases(
    kube: client.ApiClient,
    shop_namespace: str,
    *,
    releases: Releases,
    ui: UiProcess,
    browser: Browser,
    tmp_path: Path,
) -> None:
    # Given two targets: web (ops@shop may steer it, with their key) and api, whose v2-bad fails
    namespace = shop_namespace
    grants = [
        {
            "subject": "ops@shop",
            "actions": ["pause", "resume", "abort", "promote", "set-weight"],
            "keys": [ui.ops_public_key],
        }
    ]
    # Pods get 90 s to be ready: on a loaded 2-core machine 30 s rolled a release back
    # before its first verdict (the page showed it faithfully; the plots were never drawn).
    web_policy = shop.quick_policy(hold_seconds=20, pod_ready_seconds=90)
    shop.apply_policy(kube, namespace, {**web_policy, "operators": grants})
    shop.deploy(kube, namespace, name="api")
    api_policy = shop.quick_policy("api", pod_ready_seconds=90)
    shop.apply_policy(kube, namespace, api_policy, name="api")
    web = await releases.request(namespace, shop.image("v2"))
    api = await releases.request(namespace, shop.image("v2-bad", "api"), target="api")

    ops = await (await as_person(browser, "ops@shop")).new_page()
    # When ops opens the list: both releases are there, in flight, without a reload
    await ops.goto(f"{ui.url}/?namespace={namespace}")
    for release_id in (web, api):
        await ops.wait_for_selector(f'tr[data-release="{release_id}"]', timeout=60_000)
    listed = await ops.locator("#in-flight tr[data-release], #recent tr[data-release]").count()
    assert listed == 2
    await ops.screenshot(path=tmp_path / "ui-list.png", full_page=True)
    save(tmp_path / "ui-list.png", "ui-list.png")

    # When ops opens web's page: its plots appear and its verdicts arrive while it moves
    verdicts_seen: dict[str, float] = {}  # verdict id -> when it was published (its time)
    subscription = await releases.nc.jetstream().subscribe(
        releases.subjects.of(AnalysisVerdict, web),
        stream=releases.subjects.events_stream.name,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.NEW,
    )
    await ops.goto(f"{ui.url}/releases/{web}")
    await watch_rows(ops, "#verdicts")
    try:
        await ops.wait_for_selector('#plots [data-metric^="errors"] canvas', timeout=120_000)
    except PlaywrightTimeout:
        await ops.screenshot(path=tmp_path / "no-plots.png", full_page=True)
        raise AssertionError(f"no plot; page errors {PAGE_ERRORS}; {tmp_path}") from None
    await ops.wait_for_selector("#weights canvas")
    live_from = time.time()  # verdicts published from now on arrive live, not with the load
    assert await ops.locator("#trace-link").get_attribute("href") or ""
    before = await ops.locator("#verdicts tr[data-event-id]").count()
    await ops.wait_for_function(
        f"document.querySelectorAll('#verdicts tr[data-event-id]').length >= {before + 6}",
        timeout=60_000,
    )
    with contextlib.suppress(TimeoutError):
        while True:
            msg = await subscription.next_msg(timeout=0.5)
            envelope = parse_event(msg.data)
            verdicts_seen[envelope.id] = envelope.time.timestamp()
    await subscription.unsubscribe()
    shown: dict[str, float] = await ops.evaluate("window.__shown")
    delays = [shown[i] / 1000 - t for i, t in verdicts_seen.items() if i in shown and t > live_from]
    assert len(delays) >= 3, (verdicts_seen, shown)
    print(
        f"\nverdict on the bus -> row on the page: median {statistics.median(delays):.3f} s, "
        f"max {max(delays):.3f} s over {len(delays)} verdicts"
    )
    assert max(delays) < 5, delays

    # When mallory@shop (vouched for by the proxy, no key, no grant) asks to promote it:
    # the page shows the planner's refusal
    mallory = await (await as_person(browser, "mallory@shop")).new_page()
    await mallory.goto(f"{ui.url}/releases/{web}")
    await mallory.fill("#reason", "ship it")
    await mallory.click('button[data-action="promote"]')
    await mallory.wait_for_selector("#commands .refused", timeout=30_000)
    refusal = await mallory.locator("#commands .refused").first.inner_text()
    assert "mallory@shop may not promote" in refusal, refusal

    # And a page that cannot tell who you are offers no buttons, and its actions are refused
    nobody = await (await as_person(browser, None)).new_page()
    await nobody.goto(f"{ui.url}/releases/{web}")
    await nobody.wait_for_selector("#verdicts tr[data-event-id]")
    assert await nobody.locator("#actions").is_hidden()
    assert await nobody.locator("button[data-action]").count() == 0
    async with httpx.AsyncClient() as http:
        refused = await http.post(  # the name without the proxy's secret: not the proxy's
            f"{ui.url}/api/releases/{web}/commands",
            json={"action": "abort"},
            headers={"X-Canaryflow-Action": "1", IDENTITY_HEADER: "ops@shop"},
        )
    assert refused.status_code == 403

    # When ops clicks pause: the release is paused (the planner obeyed their signed command)
    await ops.fill("#reason", "looking at the plots")
    clicked = time.monotonic()
    await ops.click('button[data-action="pause"]')
    paused = await _until(releases, web, _paused)
    assert paused
    await ops.wait_for_selector('button[data-action="resume"]', timeout=30_000)
    print(f"pause clicked -> resume button shown: {time.monotonic() - clicked:.2f} s")
    command = ops.locator("#commands tr[data-command-id]").first
    assert "pause" in await command.inner_text()
    assert "ops@shop" in await command.inner_text()
    assert "looking at the plots" in await command.inner_text()
    assert "yes" in await command.inner_text()  # signed with ops@shop's key
    assert not await command.locator(".refused").count()  # obeyed: mallory's alone refused
    assert await ops.locator("#commands .refused").count() == 1
    stored = await _until(releases, web, lambda d: isinstance(d, PauseRelease))
    assert stored

    # When api's bad version is rolled back: its page says so, with the failing plots
    await releases.events(api, until=(ReleaseRolledBack,), timeout=240)
    await ops.goto(f"{ui.url}/releases/{api}")
    await ops.wait_for_selector("#title .status.rolled_back", timeout=30_000)
    await ops.wait_for_selector('#plots [data-metric^="errors"] canvas')
    assert await ops.locator("#actions").is_hidden()  # a finished release takes no commands
    await ops.screenshot(path=tmp_path / "ui-rolled-back.png", full_page=True)
    save(tmp_path / "ui-rolled-back.png", "ui-rolled-back.png")

    # And ops aborts web from its page, which ends it
    await ops.goto(f"{ui.url}/releases/{web}")
    await ops.fill("#reason", "enough")
    await ops.click('button[data-action="abort"]')
    await releases.events(web, until=(ReleaseRolledBack,), timeout=120)
    await ops.wait_for_selector("#title .status.rolled_back", timeout=30_000)
    await ops.wait_for_function(
        "document.querySelectorAll('#commands tr[data-command-id]').length >= 3"
    )
    await ops.screenshot(path=tmp_path / "ui-aborted.png", full_page=True)
    save(tmp_path / "ui-aborted.png", "ui-aborted.png")
    assert PAGE_ERRORS == []


def _paused(data: Any) -> bool:
    return isinstance(data, ReleaseStatusChanged) and data.status == "paused"


async def _until(releases: Releases, release_id: str, found: Any, timeout: float = 30) -> bool:
    """Whether an event of the release for which ``found`` holds arrives within ``timeout``."""
    subscription = await releases.nc.jetstream().subscribe(
        releases.subjects.release(release_id),
        stream=releases.subjects.events_stream.name,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            with contextlib.suppress(TimeoutError):
                msg = await subscription.next_msg(timeout=min(left, 2))
                if found(parse_event(msg.data).data):
                    return True
        return False
    finally:
        await subscription.unsubscribe()


async def test_the_web_view_shows_a_group_and_its_members_as_they_move(
    kube: client.ApiClient,
    shop_namespace: str,
    *,
    releases: Releases,
    ui: UiProcess,
    browser: Browser,
    tmp_path: Path,
) -> None:
    # Given a group of two (api, then web), each under the quick policy
    namespace = shop_namespace
    shop.deploy(kube, namespace, name="api")
    steady: dict[str, Any] = {"max_p99_seconds": 5.0, "compare": False}  # as test_groups.py
    shop.apply_policy(kube, namespace, shop.quick_policy("api", **steady), name="api")
    shop.apply_policy(kube, namespace, shop.quick_policy(**steady))
    group_id = await releases.request_group(
        namespace, [("api", shop.image("v2", "api")), ("web", shop.image("v2"))]
    )
    api, web = f"{group_id}-m1", f"{group_id}-m2"

    # When ops opens the list: the group is there, with its members in order
    ops = await (await as_person(browser, "ops@shop")).new_page()
    await ops.goto(f"{ui.url}/?namespace={namespace}")
    row = ops.locator(f'#groups tr[data-group="{group_id}"]')
    await row.wait_for(timeout=60_000)
    assert await row.locator("[data-member]").evaluate_all(
        "(m) => m.map((e) => e.dataset.member)"
    ) == [api, web]

    # And on the group's page the members move live: api passes and waits at the group's gate
    # while web has not started, then both are promoted in order
    await ops.goto(f"{ui.url}/groups/{group_id}")
    await ops.wait_for_selector(
        f'#members tr[data-member="{api}"][data-state="waiting"]', timeout=300_000
    )
    assert api in await ops.locator("#gate").inner_text()
    await ops.screenshot(path=tmp_path / "ui-group-waiting.png", full_page=True)
    save(tmp_path / "ui-group-waiting.png", "ui-group-waiting.png")
    await ops.wait_for_selector(
        f'#members tr[data-member="{web}"] a[href="/releases/{web}"]', timeout=60_000
    )
    await ops.wait_for_selector("#title .status.succeeded", timeout=400_000)
    states = await ops.locator("#members tr[data-member]").evaluate_all(
        "(m) => m.map((e) => e.dataset.state)"
    )
    assert states == ["succeeded", "succeeded"]
    assert "promoted in order" in await ops.locator("#outcome").inner_text()
    assert await ops.locator("#events tr[data-event-id]").count() >= 6
    await ops.screenshot(path=tmp_path / "ui-group.png", full_page=True)
    save(tmp_path / "ui-group.png", "ui-group.png")

    # And the list says so too, with each member's state
    await ops.goto(f"{ui.url}/?namespace={namespace}&status=finished")
    await ops.wait_for_selector(f'#groups tr[data-group="{group_id}"] .status.succeeded')
    assert await ops.locator('#groups [data-state="succeeded"]').count() == 2
    assert PAGE_ERRORS == []
