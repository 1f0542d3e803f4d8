"""Operating a release on the real stack: everything it changed comes back, people steer it.

Given the sample shop (10 pods of web:v1 behind a Service with real users) and the quick
policy, when a release changes configuration, environment or scaling and is rolled back, then
the old values are live again; when people pause, resume, abort, promote or set a weight, or a
hook or a gate stands in the way, the release does what they (and only those allowed) asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

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

from canaryflow.cli import main as cli
from canaryflow.demo import shop
from canaryflow.runtime import bundle as bundles
from canaryflow_contracts import Envelope, EventData
from canaryflow_contracts.events import (
    AbortRelease,
    AnalysisVerdict,
    ApplyPhase,
    ConfigMapChange,
    EnvVar,
    HookCompleted,
    OpenGate,
    OperatorCommandRefused,
    PauseRelease,
    PhaseReached,
    PromoteNow,
    ReleaseRequested,
    ReleaseRolledBack,
    ReleaseStatusChanged,
    ReleaseSucceeded,
    RequestPromotion,
    ResumeRelease,
    RollbackCompleted,
    SetWeight,
    TargetRef,
    VersionSpec,
    parse_event,
)
from tests.e2e.conftest import Endpoint, Releases
from tests.support import StackEnv, async_wait_until, wait_until
from tests.support.pods import PodHistory, handover

pytestmark = pytest.mark.stack

FULL_SIZE = 10


# --------------------------------------------------------------------------- helpers


async def request(
    releases: Releases, namespace: str, version: VersionSpec, target: str = "web"
) -> str:
    release_id = f"{target}-{uuid.uuid4().hex[:8]}"
    data = ReleaseRequested(
        target=TargetRef(namespace=namespace, name=target),
        version=version,
        requested_by="e2e-test",
    )
    await releases.publish(data, release_id)
    return release_id


async def history_until(
    releases: Releases,
    release_id: str,
    done: Callable[[list[Envelope[EventData]]], bool],
    timeout: float = 120,
) -> list[Envelope[EventData]]:
    """The release's events from its start until ``done`` holds for them (or fail)."""
    subscription = await releases.nc.jetstream().subscribe(
        releases.subjects.release(release_id),
        ordered_consumer=True,
        stream=releases.subjects.events_stream.name,
        deliver_policy=DeliverPolicy.ALL,
    )
    seen: list[Envelope[EventData]] = []
    give_up = asyncio.get_running_loop().time() + timeout
    try:
        while not done(seen):
            left = give_up - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"{release_id}: not there in {timeout:.0f}s: {names(seen)}")
            with contextlib.suppress(TimeoutError):
                seen.append(parse_event((await subscription.next_msg(timeout=min(left, 2))).data))
    finally:
        await subscription.unsubscribe()
    return seen


def names(events: list[Envelope[EventData]]) -> list[str]:
    return [e.type.removeprefix("io.canaryflow.").removesuffix(".v1") for e in events]


def count(kind: type[EventData]) -> Callable[[list[Envelope[EventData]]], int]:
    return lambda events: sum(isinstance(e.data, kind) for e in events)


# Steps a good version never fails, however long they are judged: these tests are about what
# people do to a release, not about judgement (a 1 % chance per tick adds up over a minute).
STEADY: dict[str, Any] = {"max_error_rate": 0.5, "max_p99_seconds": 5.0, "compare": False}


def with_operators(kube: client.ApiClient, namespace: str, **changes: Any) -> None:
    """A steady quick policy, with ops@shop allowed everything and nobody else anything."""
    grants = [
        {"subject": "ops@shop", "actions": ["pause", "resume", "abort", "promote", "set-weight"]}
    ]
    policy = shop.quick_policy(**{**STEADY, **changes})
    shop.apply_policy(kube, namespace, {**policy, "operators": grants})


def apps(kube: client.ApiClient) -> client.AppsV1Api:
    return client.AppsV1Api(kube)


def core(kube: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube)


def wait_rolled_out(kube: client.ApiClient, namespace: str, name: str = "web") -> None:
    def done() -> bool:
        d = apps(kube).read_namespaced_deployment(name, namespace)
        status = d.status
        return bool(
            (status.observed_generation or 0) >= d.metadata.generation
            and (status.updated_replicas or 0) == d.spec.replicas
            and (status.ready_replicas or 0) == d.spec.replicas
            and (status.replicas or 0) == d.spec.replicas
        )

    wait_until(done, timeout=60, message=f"{namespace}/{name} rolled out")


def use_config_map(kube: client.ApiClient, namespace: str, data: dict[str, str]) -> None:
    """web reads ConfigMap web-config through envFrom and a volume."""
    core(kube).create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="web-config"), data=data)
    )
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "web", "envFrom": [{"configMapRef": {"name": "web-config"}}]}
                    ],
                    "volumes": [{"name": "conf", "configMap": {"name": "web-config"}}],
                }
            }
        }
    }
    apps(kube).patch_namespaced_deployment("web", namespace, patch)
    wait_rolled_out(kube, namespace)


def live_pods(kube: client.ApiClient, namespace: str) -> list[client.V1Pod]:
    pods = core(kube).list_namespaced_pod(namespace, label_selector="app=web").items
    return [p for p in pods if p.metadata.deletion_timestamp is None]


def config_values_seen(kube: client.ApiClient, namespace: str, key: str) -> set[str]:
    """The value of ``key`` each live pod gets from the ConfigMaps it names."""
    seen = set()
    for pod in live_pods(kube, namespace):
        for source in pod.spec.containers[0].env_from or []:
            name = source.config_map_ref.name
            data = core(kube).read_namespaced_config_map(name, namespace).data or {}
            seen.add(data.get(key, "<absent>"))
    return seen


def env_values_seen(kube: client.ApiClient, namespace: str, name: str) -> set[str]:
    seen = set()
    for pod in live_pods(kube, namespace):
        values = [e.value for e in pod.spec.containers[0].env or [] if e.name == name]
        seen.add(values[0] if values else "<absent>")
    return seen


def canaryflow_leftovers(kube: client.ApiClient, namespace: str) -> list[str]:
    """Objects canaryflow made for a release that must be gone when it ends."""
    leftovers = [
        f"ConfigMap {c.metadata.name}"
        for c in core(kube).list_namespaced_config_map(namespace).items
        if bundles.CONFIG_BASE_LABEL in (c.metadata.labels or {})
    ]
    leftovers += [
        f"Secret {s.metadata.name}"
        for s in core(kube).list_namespaced_secret(namespace).items
        if s.metadata.name.endswith("-canaryflow-bundle")
    ]
    names = {d.metadata.name for d in apps(kube).list_namespaced_deployment(namespace).items}
    leftovers += [f"Deployment {n}" for n in names if n.endswith("-canary")]
    return leftovers


# --------------------------------------------------------------------------- the bundle


async def test_a_configuration_only_release_is_rolled_back_and_the_old_value_is_live_again(
    kube: client.ApiClient, shop_namespace: str, releases: Releases
) -> None:
    use_config_map(kube, shop_namespace, {"LAYOUT": "classic"})
    limits = {"cpu": "250m", "memory": "64Mi"}
    shop.apply_policy(
        kube, shop_namespace, {**shop.quick_policy(), "canaryResources": {"limits": limits}}
    )
    version = VersionSpec(
        image=shop.image("v1"),  # the image stable runs: only the configuration changes
        config_maps=[ConfigMapChange(name="web-config", data={"LAYOUT": "compact"})],
    )
    release_id = await request(releases, shop_namespace, version)
    await releases.events(release_id, until=(PhaseReached,), timeout=60)

    # During the canary, only the canary sees the new value, on its own copy.
    copy_name = f"web-config-{release_id}"
    canary = apps(kube).read_namespaced_deployment("web-canary", shop_namespace)
    assert canary.spec.template.spec.containers[0].env_from[0].config_map_ref.name == copy_name
    assert canary.spec.template.spec.containers[0].resources.limits == limits  # the policy's
    assert config_values_seen(kube, shop_namespace, "LAYOUT") == {"classic", "compact"}
    assert core(kube).read_namespaced_config_map("web-config", shop_namespace).data == {
        "LAYOUT": "classic"
    }

    await releases.publish(AbortRelease(actor="e2e-test", reason="layout"), release_id)
    events = await releases.events(release_id, timeout=90)

    assert isinstance(events[-1].data, ReleaseRolledBack), [e.type for e in events]
    assert config_values_seen(kube, shop_namespace, "LAYOUT") == {"classic"}
    assert len(live_pods(kube, shop_namespace)) == FULL_SIZE
    assert canaryflow_leftovers(kube, shop_namespace) == []


async def test_an_environment_change_is_rolled_back_and_the_old_value_is_live_again(
    kube: client.ApiClient, shop_namespace: str, releases: Releases
) -> None:
    version = VersionSpec(
        image=shop.image("v2-bad"), env=[EnvVar(name="CHECKOUT_LAYOUT", value="compact")]
    )
    release_id = await request(releases, shop_namespace, version)
    await releases.events(release_id, until=(PhaseReached,), timeout=60)
    assert env_values_seen(kube, shop_namespace, "CHECKOUT_LAYOUT") == {"classic", "compact"}

    events = await releases.events(release_id, timeout=120)  # the analysis fails it

    assert isinstance(events[-1].data, ReleaseRolledBack), [e.type for e in events]
    wait_rolled_out(kube, shop_namespace)
    assert env_values_seen(kube, shop_namespace, "CHECKOUT_LAYOUT") == {"classic"}
    assert canaryflow_leftovers(kube, shop_namespace) == []


async def test_an_autoscaler_held_by_the_release_is_restored_with_stable_whole_first(
    kube: client.ApiClient, shop_namespace: str, releases: Releases
) -> None:
    autoscaling = client.AutoscalingV2Api(kube)
    autoscaling.create_namespaced_horizontal_pod_autoscaler(
        shop_namespace,
        client.V2HorizontalPodAutoscaler(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V2HorizontalPodAutoscalerSpec(
                scale_target_ref=client.V2CrossVersionObjectReference(
                    api_version="apps/v1", kind="Deployment", name="web"
                ),
                min_replicas=FULL_SIZE,
                max_replicas=20,
                metrics=[
                    client.V2MetricSpec(
                        type="Resource",
                        resource=client.V2ResourceMetricSource(
                            name="cpu",
                            target=client.V2MetricTarget(
                                type="Utilization", average_utilization=60
                            ),
                        ),
                    )
                ],
            ),
        ),
    )
    before = autoscaling.read_namespaced_horizontal_pod_autoscaler("web", shop_namespace).spec
    history = PodHistory(shop_namespace, "app=web").start(kube)
    try:
        release_id = await request(
            releases, shop_namespace, VersionSpec(image=shop.image("v2-bad"))
        )
        await releases.events(release_id, until=(PhaseReached,), timeout=60)
        # The release holds the autoscaler (it would scale stable's 9 pods back to 10).
        held = autoscaling.read_namespaced_horizontal_pod_autoscaler("web", shop_namespace).spec
        assert held.min_replicas == 1
        assert held.behavior.scale_up.select_policy == "Disabled"

        events = await releases.events(release_id, timeout=120)
    finally:
        history.finish()

    assert isinstance(events[-1].data, ReleaseRolledBack), [e.type for e in events]
    after = autoscaling.read_namespaced_horizontal_pod_autoscaler("web", shop_namespace).spec
    assert after.to_dict() == before.to_dict()
    # From the API's own history of the pods: stable served at full size whenever a canary
    # pod stopped serving, so traffic never came back to a stable too small to take it.
    moved = handover(history, FULL_SIZE)
    assert moved.stable_whole_whenever_canary_left, history.events
    assert moved.fewest_serving >= FULL_SIZE
    completed = next(e.data for e in events if isinstance(e.data, RollbackCompleted))
    assert completed.stable_replicas == FULL_SIZE
    assert canaryflow_leftovers(kube, shop_namespace) == []


# --------------------------------------------------------------------------- operators


async def first_step_in_place(
    kube: client.ApiClient, namespace: str, releases: Releases, hold_seconds: float = 60
) -> str:
    """A release of web:v2 under the operators' policy, its first step (10 %) in place."""
    with_operators(kube, namespace, hold_seconds=hold_seconds)
    release_id = await request(releases, namespace, VersionSpec(image=shop.image("v2")))
    await history_until(releases, release_id, lambda e: count(PhaseReached)(e) >= 1, 60)
    return release_id


def final_verdict_of_step(index: int) -> Callable[[list[Envelope[EventData]]], bool]:
    def seen(events: list[Envelope[EventData]]) -> bool:
        return any(
            isinstance(e.data, AnalysisVerdict) and e.data.final and e.data.step.index == index
            for e in events
        )

    return seen


def position(events: list[Envelope[EventData]], found: Callable[[EventData], bool]) -> int:
    return next(i for i, e in enumerate(events) if found(e.data))


async def test_a_paused_release_holds_its_step_until_it_is_resumed(
    kube: client.ApiClient, shop_namespace: str, releases: Releases
) -> None:
    release_id = await first_step_in_place(kube, shop_namespace, releases, hold_seconds=6)

    await releases.publish(PauseRelease(actor="ops@shop", reason="checking dashboards"), release_id)
    # The step's analysis ends while paused; its pass must not move the release on.
    await history_until(releases, release_id, final_verdict_of_step(0), 60)
    await releases.publish(ResumeRelease(actor="ops@shop", reason="looks fine"), release_id)
    events = await releases.events(release_id, timeout=120)

    assert isinstance(events[-1].data, ReleaseSucceeded), names(events)
    paused = position(
        events, lambda d: isinstance(d, ReleaseStatusChanged) and d.status == "paused"
    )
    passed = position(events, lambda d: isinstance(d, AnalysisVerdict) and d.final)
    resumed = position(events, lambda d: isinstance(d, ResumeRelease))
    second = position(events, lambda d: isinstance(d, ApplyPhase) and d.step.index == 1)
    assert paused < passed < resumed < second, names(events)


async def test_promote_now_skips_the_remaining_steps_with_stable_whole_first(
    kube: client.ApiClient, shop_namespace: str, releases: Releases
) -> None:
    with_operators(kube, shop_namespace, hold_seconds=60)  # only promote-now ends it soon
    history = PodHistory(shop_namespace, "app=web").start(kube)
    try:
        release_id = await request(releases, shop_namespace, VersionSpec(image=shop.image("v2")))
        await history_until(releases, release_id, lambda e: count(PhaseReached)(e) >= 1, 60)
        await releases.publish(PromoteNow(actor="ops@shop", reason="hotfix"), release_id)
        events = await releases.events(release_id, timeout=120)
    finally:
        history.finish()

    assert isinstance(events[-1].data, ReleaseSucceeded), names(events)
    assert [e.data.step.weight for e in events if isinstance(e.data, PhaseReached)] == [10]
    web = apps(kube).read_namespaced_deployment("web", shop_namespace)
    assert web.spec.template.spec.containers[0].image == shop.image("v2")
    assert (web.status.ready_replicas, web.spec.replicas) == (FULL_SIZE, FULL_SIZE)
    moved = handover(history, FULL_SIZE)
    assert moved.stable_whole_whenever_canary_left and moved.fewest_serving >= FULL_SIZE
    assert canaryflow_leftovers(kube, shop_namespace) == []


async def test_an_unauthorised_abort_is_refused_and_the_release_carries_on(
    kube: client.ApiClient, shop_namespace: str, releases: Releases
) -> None:
    release_id = await first_step_in_place(kube, shop_namespace, releases)

    await releases.publish(AbortRelease(actor="mallory", reason="let me in"), release_id)
    seen = await history_until(
        releases, release_id, lambda e: count(OperatorCommandRefused)(e) >= 1, 30
    )
    refusal = next(e.data for e in seen if isinstance(e.data, OperatorCommandRefused))
    assert (refusal.actor, refusal.action, refusal.reason) == ("mallory", "abort", "let me in")
    # It carries on: still judged at its step, its canary still serving.
    verdicts = count(AnalysisVerdict)(seen)
    seen = await history_until(
        releases, release_id, lambda e: count(AnalysisVerdict)(e) >= verdicts + 3, 60
    )
    assert not [e for e in seen if isinstance(e.data, RollbackCompleted | ReleaseRolledBack)]
    canary = apps(kube).read_namespaced_deployment("web-canary", shop_namespace)
    assert (canary.status.ready_replicas or 0) >= 1

    await releases.publish(AbortRelease(actor="ops@shop", reason="stop here"), release_id)
    events = await releases.events(release_id, timeout=90)
    assert isinstance(events[-1].data, ReleaseRolledBack), names(events)
    assert count(OperatorCommandRefused)(events) == 1  # planner and rollback: one refusal
    assert canaryflow_leftovers(kube, shop_namespace) == []


def _key_file(directory: Path, name: str) -> tuple[Path, str]:
    """A fresh OpenSSH ed25519 key written as ssh-keygen writes it; (its file, its public line)."""
    key = Ed25519PrivateKey.generate()
    path = directory / name
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()))
    public = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    return path, f"{public} {name}"


async def test_a_grant_with_keys_obeys_only_commands_its_key_signed_through_the_cli(
    as_operator: None,
    *,
    kube: client.ApiClient,
    shop_namespace: str,
    releases: Releases,
    stack: StackEnv,
    tmp_path: Path,
) -> None:
    # Given a policy whose operator ops@shop must prove it with their key
    ops_key, ops_public = _key_file(tmp_path, "ops")
    other_key, _ = _key_file(tmp_path, "mallory")
    grants = [{"subject": "ops@shop", "actions": ["promote", "abort"], "keys": [ops_public]}]
    policy = shop.quick_policy(**{**STEADY, "hold_seconds": 60})
    shop.apply_policy(kube, shop_namespace, {**policy, "operators": grants})
    release_id = await request(releases, shop_namespace, VersionSpec(image=shop.image("v2")))
    await history_until(releases, release_id, lambda e: count(PhaseReached)(e) >= 1, 60)

    async def promote(*signing: str) -> int:
        return await cli.run(
            [
                "--nats", stack.nats_url, "--prefix", releases.subjects.prefix,
                "promote", release_id, "--by", "ops@shop", "--reason", "hotfix", *signing,
            ]
        )  # fmt: skip

    # When someone sends promote in ops@shop's name unsigned, then signed with another key
    assert await promote() == 0
    assert await promote("--key", str(other_key)) == 0
    seen = await history_until(
        releases, release_id, lambda e: count(OperatorCommandRefused)(e) >= 2, 30
    )
    # Then both are refused with the reason, and the release is still at its first step
    # (in either order: the two commands may be handled side by side)
    refusals = [e.data.refusal for e in seen if isinstance(e.data, OperatorCommandRefused)]
    reasons = sorted(refusal.rsplit(", and it is ", 1)[-1] for refusal in refusals)
    assert reasons == ["not signed", "signed by a key not listed for them"], refusals
    assert not [e for e in seen if isinstance(e.data, RequestPromotion)]
    # When ops@shop signs it with their own key, it is obeyed
    assert await promote("--key", str(ops_key)) == 0
    events = await releases.events(release_id, timeout=120)
    assert isinstance(events[-1].data, ReleaseSucceeded), names(events)
    assert [e.data.step.weight for e in events if isinstance(e.data, PhaseReached)] == [10]
    # A key file that is no key is refused by the CLI with the reason, before anything is sent
    (tmp_path / "junk").write_text("not a key")
    with pytest.raises(cli.CliError, match="not an OpenSSH private key"):
        cli.signing_key(str(tmp_path / "junk"))


async def test_set_weight_moves_the_canary_and_a_lower_weight_grows_stable_first(
    kube: client.ApiClient, shop_namespace: str, releases: Releases
) -> None:
    release_id = await first_step_in_place(kube, shop_namespace, releases)

    await releases.publish(SetWeight(actor="ops@shop", weight=40, reason="more"), release_id)
    await history_until(releases, release_id, lambda e: count(PhaseReached)(e) >= 2, 60)
    history = PodHistory(shop_namespace, "app=web").start(kube)
    try:
        await releases.publish(SetWeight(actor="ops@shop", weight=20, reason="less"), release_id)
        events = await history_until(
            releases, release_id, lambda e: count(PhaseReached)(e) >= 3, 60
        )
    finally:
        history.finish()

    reached = [e.data for e in events if isinstance(e.data, PhaseReached)]
    assert [(r.step.weight, r.canary_ready) for r in reached] == [(10, 1), (40, 4), (20, 2)]
    assert all(r.canary_ready + r.baseline_ready + r.stable_ready == FULL_SIZE for r in reached)
    moved = handover(history, FULL_SIZE)
    assert moved.fewest_serving >= FULL_SIZE, history.events  # stable grew before canary shrank

    await releases.publish(AbortRelease(actor="ops@shop"), release_id)
    events = await releases.events(release_id, timeout=90)
    assert isinstance(events[-1].data, ReleaseRolledBack), names(events)


# --------------------------------------------------------------------------- hooks and gates


def with_hooks(
    kube: client.ApiClient, namespace: str, hooks: list[dict[str, Any]], notify: str = ""
) -> None:
    grants = [{"subject": "ops@shop", "actions": ["abort", "open-gate"]}]
    spec = {**shop.quick_policy(hold_seconds=60, **STEADY), "operators": grants, "hooks": hooks}
    if notify:
        spec["notify"] = [{"url": notify}]
    shop.apply_policy(kube, namespace, spec)


async def test_a_gate_blocks_the_release_until_it_is_opened(
    kube: client.ApiClient, shop_namespace: str, releases: Releases, endpoint: Endpoint
) -> None:
    with_hooks(
        kube,
        shop_namespace,
        [
            {"name": "smoke", "type": "pre-rollout", "url": endpoint.url},
            {"name": "approve", "type": "confirm-rollout", "deadlineSeconds": 300},
        ],
    )
    release_id = await request(releases, shop_namespace, VersionSpec(image=shop.image("v2")))
    # The webhook passed and the gate waits; a stranger cannot open it.
    await history_until(releases, release_id, lambda e: count(HookCompleted)(e) >= 1, 60)
    await releases.publish(OpenGate(actor="mallory", gate="approve"), release_id)
    waited = await history_until(
        releases, release_id, lambda e: count(OperatorCommandRefused)(e) >= 1, 30
    )
    assert count(ApplyPhase)(waited) == 0, names(waited)
    assert apps_named(kube, shop_namespace) == {"web"}
    assert [call["hook"] for call in endpoint.calls] == ["smoke"]
    assert endpoint.calls[0]["releaseId"] == release_id

    await releases.publish(OpenGate(actor="ops@shop", gate="approve", reason="CAB ok"), release_id)
    events = await history_until(releases, release_id, lambda e: count(PhaseReached)(e) >= 1, 60)
    opened = position(events, lambda d: isinstance(d, OpenGate) and d.actor == "ops@shop")
    assert opened < position(events, lambda d: isinstance(d, ApplyPhase)), names(events)

    await releases.publish(AbortRelease(actor="ops@shop"), release_id)
    assert isinstance((await releases.events(release_id, timeout=90))[-1].data, ReleaseRolledBack)


async def test_a_gate_nobody_opens_expires_into_a_rollback(
    kube: client.ApiClient, shop_namespace: str, releases: Releases
) -> None:
    with_hooks(
        kube, shop_namespace, [{"name": "approve", "type": "confirm-rollout", "deadlineSeconds": 3}]
    )
    release_id = await request(releases, shop_namespace, VersionSpec(image=shop.image("v2")))

    events = await releases.events(release_id, timeout=60)

    outcome = events[-1].data
    assert isinstance(outcome, ReleaseRolledBack), names(events)
    assert "gate approve was not opened by its deadline" in outcome.summary
    assert count(ApplyPhase)(events) == 0
    assert apps_named(kube, shop_namespace) == {"web"}


async def test_a_failing_pre_rollout_hook_stops_the_release_before_any_traffic_moves(
    kube: client.ApiClient, shop_namespace: str, releases: Releases, endpoint: Endpoint
) -> None:
    endpoint.status = 500
    hook = {"name": "smoke", "type": "pre-rollout", "url": endpoint.url, "retries": 1}
    with_hooks(kube, shop_namespace, [hook], notify=f"{endpoint.base}/notify")
    history = PodHistory(shop_namespace, "app=web").start(kube)
    try:
        release_id = await request(releases, shop_namespace, VersionSpec(image=shop.image("v2")))
        events = await releases.events(release_id, timeout=60)
    finally:
        history.finish()

    assert isinstance(events[-1].data, ReleaseRolledBack), names(events)
    failed = next(e.data for e in events if isinstance(e.data, HookCompleted))
    assert not failed.ok and "HTTP 500" in failed.detail
    assert len(endpoint.calls) == 2  # the first attempt and one retry
    assert count(ApplyPhase)(events) == 0
    assert not [e for e in history.events if e.track != "stable"]  # no other pod, ever
    assert apps_named(kube, shop_namespace) == {"web"}
    # People heard about it, in a message Slack takes (text, blocks, metadata).
    heard = await async_wait_until(
        lambda: notes_of(endpoint, release_id, "rolled-back"), timeout=30, message="notified"
    )
    assert heard["text"].startswith(":rotating_light: Release") and heard["blocks"]
    assert "smoke" in heard["metadata"]["event_payload"]["text"]
    assert await notes_of(endpoint, release_id, "started")
    # Every hook call and notification was signed with the executor's key, over its bytes.
    assert endpoint.unverified == []


async def notes_of(endpoint: Endpoint, release_id: str, kind: str) -> dict[str, Any] | None:
    for note in endpoint.notes:
        event = note["metadata"]["event_payload"]
        if event["releaseId"] == release_id and event["kind"] == kind:
            return note
    return None


def apps_named(kube: client.ApiClient, namespace: str) -> set[str]:
    return {d.metadata.name for d in apps(kube).list_namespaced_deployment(namespace).items}


async def test_promotion_switches_stable_to_the_new_configuration_and_collects_the_old_copy(
    kube: client.ApiClient, shop_namespace: str, releases: Releases
) -> None:
    use_config_map(kube, shop_namespace, {"LAYOUT": "classic"})
    with_operators(kube, shop_namespace, hold_seconds=60)
    promoted = []
    for layout in ("compact", "grid"):
        change = ConfigMapChange(name="web-config", data={"LAYOUT": layout})
        version = VersionSpec(image=shop.image("v1"), config_maps=[change])
        release_id = await request(releases, shop_namespace, version)
        await history_until(releases, release_id, lambda e: count(PhaseReached)(e) >= 1, 60)
        await releases.publish(PromoteNow(actor="ops@shop"), release_id)
        events = await releases.events(release_id, timeout=120)
        assert isinstance(events[-1].data, ReleaseSucceeded), names(events)
        promoted.append(release_id)
        wait_rolled_out(kube, shop_namespace)

        web = apps(kube).read_namespaced_deployment("web", shop_namespace)
        live = f"web-config-{release_id}"
        assert web.spec.template.spec.containers[0].env_from[0].config_map_ref.name == live
        assert config_values_seen(kube, shop_namespace, "LAYOUT") == {layout}
        # The live copy stays; the one it replaced is collected; the original is the user's.
        assert canaryflow_leftovers(kube, shop_namespace) == [f"ConfigMap {live}"]
        assert core(kube).read_namespaced_config_map("web-config", shop_namespace).data == {
            "LAYOUT": "classic"
        }
