"""Calling a webhook hook: what it is sent, what counts as passed, and the bounded retries."""

from __future__ import annotations

import json

import httpx

from canaryflow.executor.hooks import (
    PUBLISH_MARGIN_SECONDS,
    WebhookCaller,
    judged,
    longest_run_seconds,
    payload,
)
from canaryflow.runtime.signing import verify
from canaryflow_contracts.events import RunHook, TargetRef, VersionSpec
from canaryflow_contracts.policy import Hook, HookType

COMMAND = RunHook(
    target=TargetRef(namespace="shop", name="web"),
    version=VersionSpec(image="registry.local/web:v2"),
    hook=Hook(
        name="smoke",
        type=HookType.PRE_ROLLOUT,
        url="http://hooks.local/smoke",
        retries=2,
        timeout_seconds=3,
        metadata={"suite": "checkout"},
    ),
    step_index=0,
)


def caller(
    statuses: list[int | Exception], seen: list[httpx.Request]
) -> tuple[WebhookCaller, list[float]]:
    answers = iter(statuses)
    slept: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        outcome = next(answers)
        if isinstance(outcome, Exception):
            raise outcome
        return httpx.Response(outcome, text="nope" if outcome >= 300 else "")

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    return WebhookCaller(client, sleep), slept


def test_the_payload_names_the_release_the_hook_and_the_version() -> None:
    body = payload("web-1", COMMAND)
    assert body["releaseId"] == "web-1" and body["hook"] == "smoke"
    assert body["type"] == "pre-rollout" and body["step"] == 0
    assert body["version"]["image"] == "registry.local/web:v2"
    assert body["metadata"] == {"suite": "checkout"}


def test_only_2xx_passes() -> None:
    assert judged(204, "")[0] and not judged(302, "")[0] and not judged(500, "boom")[0]
    assert judged(500, "  boom \n trace ")[1] == "HTTP 500: boom trace"


async def test_a_hook_that_fails_then_answers_passes_after_a_retry() -> None:
    seen: list[httpx.Request] = []
    webhooks, slept = caller([httpx.ConnectError("refused"), 200], seen)
    outcome = await webhooks.call("web-1", COMMAND)
    assert outcome.ok and outcome.attempts == 2 and slept == [0.5]
    assert json.loads(seen[0].content)["hook"] == "smoke"


async def test_a_hook_that_keeps_failing_gives_up_after_its_retries() -> None:
    seen: list[httpx.Request] = []
    webhooks, slept = caller([500, 503, 500], seen)
    outcome = await webhooks.call("web-1", COMMAND)
    assert not outcome.ok and outcome.attempts == 3 == len(seen)
    assert outcome.detail == "after 3 attempt(s): HTTP 500: nope"
    assert slept == [0.5, 1.0]


def test_a_claimed_hook_run_is_given_up_on_only_after_every_attempt_could_have_timed_out() -> None:
    hook = Hook(name="smoke", type=HookType.PRE_ROLLOUT, url="http://x/smoke", retries=2)

    # Three attempts of 10 s (the default timeout), pauses of 0.5 s and 1 s, then the publish.
    assert longest_run_seconds(hook) == 30.0 + 1.5 + PUBLISH_MARGIN_SECONDS


async def test_each_call_is_signed_over_the_exact_bytes_sent() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    outcome = await WebhookCaller(client, signing_key="hook-key").call("web-1", COMMAND)

    assert outcome.ok
    (request,) = seen
    assert verify("hook-key", request.content, request.headers) is None
    assert json.loads(request.content)["releaseId"] == "web-1"
    assert request.headers["Content-Type"] == "application/json"
