"""Which pods get a listener, and in which order listeners change hands (keyed by UID)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from canaryflow.dataplane.objects import SERVING_GATE
from canaryflow.dataplane.pods import (
    Plan,
    ServedPod,
    due,
    handover,
    plan,
    sd_targets,
    served_pod,
    serving_status,
)


def _pod(
    *,
    uid: str = "u1",
    ip: str | None = "10.244.1.5",
    ready: bool = True,
    ports: tuple[int, ...] = (8080,),
    deleting: bool = False,
    image: str = "registry.local/shop/web:v2",
    gated: bool = False,
    conditions: dict[str, bool] | None = None,
) -> Any:
    status = {"Ready": ready, **(conditions or {})}
    return SimpleNamespace(
        metadata=SimpleNamespace(
            uid=uid, name=f"web-{uid}", namespace="shop",
            labels={}, annotations={},
            deletion_timestamp="2026-12-06T00:00:00Z" if deleting else None,
        ),
        spec=SimpleNamespace(
            node_name="kwok-node-0",
            containers=[
                SimpleNamespace(
                    name="app",
                    image=image,
                    ports=[
                        SimpleNamespace(container_port=p, protocol="TCP", name=None)
                        for p in ports
                    ],
                )
            ],
            readiness_gates=[SimpleNamespace(condition_type=SERVING_GATE)] if gated else None,
        ),
        status=SimpleNamespace(
            pod_ip=ip,
            conditions=[
                SimpleNamespace(type=kind, status="True" if true else "False")
                for kind, true in status.items()
            ],
        ),
    )  # fmt: skip


def _served(uid: str, ip: str = "10.244.1.5", port: int = 8080) -> ServedPod:
    return ServedPod(uid, "shop", f"web-{uid}", ip, (port,), "v2")


def test_a_ready_pod_with_a_port_is_served_at_its_address_with_its_version() -> None:
    assert served_pod(_pod(ports=(8080, 9090))) == ServedPod(
        "u1", "shop", "web-u1", "10.244.1.5", (8080, 9090), "v2"
    )


def test_pods_not_ready_terminating_without_address_or_port_get_no_listener() -> None:
    assert served_pod(_pod(ready=False)) is None
    assert served_pod(_pod(deleting=True)) is None
    assert served_pod(_pod(ip=None)) is None
    assert served_pod(_pod(ports=())) is None


def test_a_gated_pod_gets_its_listener_before_it_is_ready_and_is_then_made_ready() -> None:
    # KWOK leaves a pod with the serving gate not Ready (its containers are): the listener
    # comes first, Ready (and so the endpoint, and the gateway's route) only after it.
    waiting = _pod(ready=False, gated=True, conditions={"ContainersReady": True})
    assert served_pod(waiting) == ServedPod(
        "u1", "shop", "web-u1", "10.244.1.5", (8080,), "v2", gated=True
    )
    patch = serving_status("2026-12-06T00:00:00Z")["status"]["conditions"]
    assert {(c["type"], c["status"]) for c in patch} == {(SERVING_GATE, "True"), ("Ready", "True")}
    done = _pod(gated=True, conditions={"ContainersReady": True, SERVING_GATE: True})
    assert served_pod(done) == ServedPod("u1", "shop", "web-u1", "10.244.1.5", (8080,), "v2")


def test_a_gated_pod_whose_containers_never_get_ready_or_that_terminates_gets_no_listener() -> None:
    never = _pod(ready=False, gated=True, conditions={"ContainersReady": False})
    assert served_pod(never) is None
    leaving = _pod(ready=False, gated=True, deleting=True, conditions={"ContainersReady": True})
    assert served_pod(leaving) is None


def test_a_new_uid_on_a_reused_address_starts_after_the_old_uid_stops() -> None:
    old, new = _served("old"), _served("new")

    step = plan({"old": old}, [new])

    assert step.stop == ("old",)
    assert step.start == (new,)


def test_a_served_pod_that_stays_is_left_alone() -> None:
    pod = _served("a")

    step = plan({"a": pod}, [pod, _served("b", ip="10.244.2.9")])

    assert step.stop == ()
    assert [p.uid for p in step.start] == ["b"]


def test_a_second_uid_on_an_address_still_held_waits_for_the_holder_to_go() -> None:
    holder, newcomer = _served("a"), _served("b")

    assert plan({"a": holder}, [holder, newcomer]).start == ()
    assert plan({}, [holder, newcomer]).start == (holder,)


def test_scrape_targets_carry_the_labels_prometheus_pod_role_gives() -> None:
    pod = _pod(ports=(8080, 9090), ready=False)
    pod.metadata.labels = {"app": "web", "canaryflow.io/track": "canary"}
    pod.metadata.annotations = {"prometheus.io/scrape": "true"}

    targets = sd_targets(pod)

    assert [t["targets"] for t in targets] == [["10.244.1.5:8080"], ["10.244.1.5:9090"]]
    labels = targets[0]["labels"]
    assert labels["__meta_kubernetes_pod_ready"] == "false"  # listed; the job drops it
    assert labels["__meta_kubernetes_pod_label_app"] == "web"
    assert labels["__meta_kubernetes_pod_label_canaryflow_io_track"] == "canary"
    assert labels["__meta_kubernetes_pod_labelpresent_canaryflow_io_track"] == "true"
    assert labels["__meta_kubernetes_pod_annotation_prometheus_io_scrape"] == "true"
    assert labels["__meta_kubernetes_pod_container_port_number"] == "8080"
    assert labels["__meta_kubernetes_pod_uid"] == "u1"
    assert sd_targets(_pod(ip=None)) == []


def test_a_pod_that_left_keeps_answering_for_the_grace_while_new_pods_start_at_once() -> None:
    current = {"old": _served("old", ip="10.244.1.5"), "other": _served("other", ip="10.244.1.9")}
    new = _served("new", ip="10.244.1.7")
    step = plan(current, [current["other"], new])

    assert due(step, current, {"old": 100.0}, now=101.9, grace=2.0) == Plan((), (new,))
    assert due(step, current, {"old": 100.0}, now=102.0, grace=2.0) == Plan(("old",), (new,))
    # Without a grace, a pod stops answering as soon as it leaves.
    assert due(step, current, {"old": 100.0}, now=100.0, grace=0.0) == Plan(("old",), (new,))


def test_a_pod_that_left_stops_at_once_when_a_new_pod_takes_its_address() -> None:
    current = {"old": _served("old", ip="10.244.1.5"), "other": _served("other", ip="10.244.1.9")}
    reuse = _served("new", ip="10.244.1.5")
    step = plan(current, [current["other"], reuse])

    assert due(step, current, {"old": 100.0}, now=100.1, grace=2.0) == Plan(("old",), (reuse,))


def test_a_pod_an_event_shows_ready_starts_at_once_and_takes_its_address_from_one_that_left() -> (
    None
):
    current = {"old": _served("old", ip="10.244.1.5"), "other": _served("other", ip="10.244.1.9")}
    new, reuse = _served("new", ip="10.244.1.7"), _served("again", ip="10.244.1.5")

    assert handover(current, new) == Plan((), (new,))
    assert handover(current, reuse) == Plan(("old",), (reuse,))
    assert handover(current, current["other"]) == Plan((), ())
