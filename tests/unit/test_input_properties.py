"""Everything canaryflow parses from outside, on generated and mutated inputs: a property.

Four doors take input nobody inside canaryflow wrote: operator commands on the bus, the
Alertmanager webhook's bodies, ReleasePolicy objects from the API server, and the envelope of
any event (the CLI reads every one with ``parse_event``). For each, Hypothesis builds valid
inputs from the real models, serialises them, and mutates them (fields dropped, values of the
wrong type or out of range, extra fields, unicode and lone surrogates, huge strings, nesting
up to 100,000 deep, bytes cut, replaced or inserted), then runs the same pure entry point the
service runs. Each outcome must be exactly one of:

- accepted: a valid model (or a decision) that can be stored and published as it is;
- refused with a reason: a ``ValueError`` (pydantic's ``ValidationError`` is one) or the
  entry point's own refusal (``AlertRefused``, ``PolicyProblem``, a ``Governing`` or
  ``Refusal`` with problems) carrying words a person can read;

never another exception, never a hang (each example has a deadline), and never a changed
input (the input is deep-copied before and compared after). Release requests are covered
end to end, on the real planner, by tests/integration/test_requests_property.py.

Settings are derandomised and database-less, so every run tries the same inputs. Run with
``--hypothesis-show-statistics`` to see how many each property tried.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from collections.abc import Callable
from datetime import timedelta
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from canaryflow.metrics_watcher.alerts import MAX_ALERTS, AlertRefused, parse_alerts
from canaryflow.metrics_watcher.policies import PolicyProblem, parse_policy
from canaryflow.metrics_watcher.webhook import MAX_BODY_BYTES, receive, respond
from canaryflow.planner import machine
from canaryflow.planner.machine import decide, operator_refusal
from canaryflow.planner.planning import Admission, Refusal
from canaryflow.planner.validation import check_request
from canaryflow.rollback.triggers import abort_refusal
from canaryflow.runtime.bus import decode
from canaryflow.runtime.decoding import BodyOverLimit, check_limits
from canaryflow.runtime.operators import ACTIONS
from canaryflow.runtime.policies import Governing, PolicyObject, governing
from canaryflow.runtime.store import Versioned
from canaryflow_contracts import MESSAGE_ID_HEADER, Envelope, EventData, Subjects
from canaryflow_contracts.events import (
    EVENT_TYPES,
    AbortRelease,
    AnalysisVerdict,
    OpenGate,
    OpenPipelineGate,
    OperatorCommand,
    OperatorCommandRefused,
    PauseRelease,
    SetWeight,
    TargetRef,
    parse_event,
)
from canaryflow_contracts.policy import (
    Analysis,
    Better,
    BusinessMetric,
    Comparison,
    CountTemplate,
    Deadlines,
    HeaderMatch,
    Hook,
    ImageRules,
    MetricRule,
    MetricTemplate,
    OperatorAction,
    OperatorGrant,
    ReleasePolicySpec,
    RouteMatch,
    Step,
    Sticky,
    Traffic,
)
from canaryflow_contracts.state import ReleaseState, ReleaseStatus
from tests.support.samples import one_of_each
from tests.unit.planner.factory import DEPLOYMENT, RID, at, envelope, policy, reached, request
from tests.unit.support_state import sample_state


def profile(examples: int) -> settings:
    """Reproducible (derandomised, no example database) and bounded: 5 s per example is far
    above what any of them needs on a loaded 2-core machine, and far below a hang."""
    return settings(
        max_examples=examples,
        deadline=timedelta(milliseconds=5000),
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --------------------------------------------------------------------------- mutations

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
ODD: st.SearchStrategy[Any] = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "\ud800",  # a lone surrogate: json.dumps writes it as an escape any parser may meet
        "\u202eevil",
        "shop-w\u0435b",
        "Ж",
        "a.b",
        "*",
        "\r\nX-Injected: yes",
        "x" * 3000,
        0,
        -1,
        101,
        2**63,
        -(2**63),
        10**30,
        1e308,
        -1e-308,
        0.5,
        True,
        None,
        [],
        {},
    ]
)
VALUES = ODD | JSON
# A JSON string the wire serialiser replaces with nesting (too deep for json.dumps itself).
_DEEP = "\x01deep\x01"
_DEEP_JSON = json.dumps(_DEEP).encode()


def _slots(doc: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) holding a value in ``doc``, walked without recursion."""
    slots: list[tuple[Any, Any]] = []
    todo = [doc]
    while todo:
        node = todo.pop()
        keys: list[Any] = list(node) if isinstance(node, dict) else []
        if isinstance(node, list):
            keys = list(range(len(node)))
        for key in keys:
            slots.append((node, key))
            if isinstance(node[key], dict | list):
                todo.append(node[key])
    return slots


def _nested(depth: int, as_object: bool) -> Any:
    value: Any = {} if as_object else []
    for _ in range(depth - 1):
        value = {"a": value} if as_object else [value]
    return value


@st.composite
def mutated(draw: st.DrawFn, doc: Any, wire: bool = False) -> Any:
    """``doc`` (a JSON document, not changed) with up to three mutations.

    ``wire``: the result is only serialised, so nesting may be drawn as deep as a body can be
    (a placeholder ``serialised`` replaces); otherwise it stays within Python's recursion.
    """
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(0, 3))):
        slots = _slots(doc)
        operation = draw(st.sampled_from(["drop", "set", "set", "extra", "deep", "huge", "whole"]))
        if operation == "whole" or not slots:
            return draw(VALUES)
        container, key = draw(st.sampled_from(slots))
        if operation == "drop":
            del container[key]
        elif operation == "set":
            container[key] = draw(VALUES)
        elif operation == "extra" and isinstance(container, dict):
            container[draw(st.text(max_size=12))] = draw(VALUES)
        elif operation == "extra":
            container.append(draw(VALUES))
        elif operation == "deep" and wire:
            container[key] = _DEEP
        elif operation == "deep":
            container[key] = _nested(draw(st.sampled_from([3, 33, 200])), draw(st.booleans()))
        elif operation == "huge":
            container[key] = draw(
                st.sampled_from(["x" * 200_000, list(range(1000)), {str(i): i for i in range(200)}])
            )
    return doc


@st.composite
def serialised(draw: st.DrawFn, doc: Any) -> bytes:
    """``doc`` as bytes, then maybe cut, overwritten or with bytes inserted."""
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()))
    body = text.encode("utf-8", "surrogatepass")  # a lone surrogate makes invalid UTF-8
    if _DEEP_JSON in body:
        depth = draw(st.sampled_from([33, 1000, 100_000]))
        opening, closing = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        body = body.replace(
            _DEEP_JSON, opening * depth + b"1" * (opening == b"[") + closing * depth
        )
        if opening == b'{"a":':
            body = body.replace(b'{"a":}', b'{"a":1}')
    operation = draw(st.sampled_from(["none", "none", "cut", "overwrite", "insert"]))
    position = draw(st.integers(0, len(body)))
    noise = draw(
        st.binary(min_size=1, max_size=16)
        | st.sampled_from([b"\xff", b"\x00", b'"\\ud800"', b"\\", b"{", b"]", b"NaN", b"1e999"])
    )
    if operation == "cut":
        return body[:position]
    if operation == "overwrite":
        return body[:position] + noise + body[position + len(noise) :]
    if operation == "insert":
        return body[:position] + noise + body[position:]
    return body


def refused_with_reason(error: BaseException) -> None:
    """A refusal a person can act on: words, and for pydantic every error located."""
    assert isinstance(error, ValueError), f"{type(error).__name__}: {error}"
    assert str(error).strip(), f"{type(error).__name__} without a reason"
    if isinstance(error, ValidationError):
        assert error.errors(), "a ValidationError without errors"
        assert all(e["msg"] for e in error.errors())


def publishable(data: EventData, release_id: str, event_id: str) -> None:
    """What EventPublisher does with an event, and what its consumers read back."""
    wrapped = Envelope.wrap(data, release_id=release_id, source="canaryflow/test", id=event_id)
    headers = {MESSAGE_ID_HEADER: wrapped.id}
    assert all(v.isprintable() and " " not in v for v in headers.values()), headers
    assert parse_event(wrapped.model_dump_json().encode()) == wrapped


def outcome(call: Callable[[], Any]) -> Any:
    """``call()``'s value, or None after checking it refused with a reason."""
    try:
        value = call()
    except ValueError as error:
        refused_with_reason(error)
        event("refused")
        return None
    event("accepted")
    return value


# --------------------------------------------------------------------------- 1. operators

SUBJECTS = Subjects()
ACTORS = st.sampled_from(
    ["alice@shop", "ops", "mallory", "bob@sre.example", "*", "Ж@пример", "a" * 256]
) | st.text(min_size=1, max_size=30)
EVENT_IDS = st.sampled_from(["seen-1", "cmd-1", "x" * 128]) | st.uuids().map(lambda u: u.hex)
APPROVE = {"name": "approve", "type": "confirm-rollout", "deadlineSeconds": 300}
NARROW = [
    OperatorGrant(subject="alice@shop", actions=list(OperatorAction)),
    OperatorGrant(subject="*@sre.example", actions=[OperatorAction.ABORT]),
]


@cache
def releases() -> tuple[ReleaseState, ...]:
    """Releases the commands meet: under analysis with wide, narrow and no grants, paused,
    waiting at a gate, over, and one that has already seen an event id."""
    planned = machine.accept(RID, envelope(request(), "req-1", "ci"), _admitted(), at(0)).state
    assert planned is not None
    analysing = decide(planned, envelope(reached(planned, 0), "reached-0"), at(10)).state
    assert analysing is not None and analysing.status is ReleaseStatus.ANALYSING
    paused = decide(analysing, envelope(PauseRelease(actor="ops"), "pause-0"), at(11)).state
    assert paused is not None and paused.paused
    gates = [{"subject": "ops", "actions": ["open-gate", "pause", "abort"]}]
    waiting_for = check_request(
        request(), DEPLOYMENT, [policy(hooks=[APPROVE], operators=gates)], at(0)
    )
    assert isinstance(waiting_for, Admission)
    waiting = machine.accept(RID, envelope(request(), "req-1"), waiting_for, at(0)).state
    assert waiting is not None and waiting.status is ReleaseStatus.WAITING
    return (
        analysing,
        analysing.model_copy(update={"operators": None}),
        analysing.model_copy(update={"operators": NARROW}),
        paused,
        waiting,
        analysing.model_copy(update={"status": ReleaseStatus.SUCCEEDED}),
        analysing.model_copy(update={"seen_event_ids": ["seen-1", "other"]}),
    )


def _admitted() -> Admission:
    admitted = check_request(request(), DEPLOYMENT, [policy()], at(0))
    assert isinstance(admitted, Admission)
    return admitted


@st.composite
def operator_commands(draw: st.DrawFn) -> OperatorCommand:
    kind = draw(st.sampled_from(list(ACTIONS)))
    fields: dict[str, Any] = {
        "actor": draw(ACTORS),
        "reason": draw(st.text(max_size=40) | st.just("r" * 2048)),
    }
    if kind is SetWeight:
        fields["weight"] = draw(st.integers(1, 100))
    if kind is OpenGate:
        fields["gate"] = draw(st.sampled_from(["approve", "other"]) | st.text(min_size=1))
    if kind is OpenPipelineGate:
        fields["environment"] = draw(st.sampled_from(["production", "staging"]))
    command: OperatorCommand = kind(**fields)
    return command


@st.composite
def command_messages(draw: st.DrawFn) -> tuple[type[OperatorCommand], str, bytes]:
    """A command as the CLI publishes it, then mutated; with the subject it arrives on."""
    command = draw(operator_commands())
    kind = type(command)
    wrapped = Envelope.wrap(command, release_id=RID, source="canaryflow/cli", id=draw(EVENT_IDS))
    doc = json.loads(wrapped.model_dump_json())
    body = draw(serialised(draw(mutated(doc, wire=True))))
    other = draw(st.sampled_from([k for k in ACTIONS if k is not kind]))
    subject = draw(
        st.sampled_from(
            [SUBJECTS.of(kind, RID)] * 6
            + [SUBJECTS.of(kind, "shop-web-2"), SUBJECTS.of(other, RID), SUBJECTS.of(kind, "Web")]
            + [SUBJECTS.of(kind, f"{RID}.x"), SUBJECTS.of(kind, ""), "canaryflow.operator"]
        )
    )
    return kind, subject, body


@given(message=command_messages())
@profile(800)
def test_an_operator_command_is_obeyed_or_refused_with_a_reason(
    message: tuple[type[OperatorCommand], str, bytes],
) -> None:
    kind, subject, body = message
    read: Envelope[Any] | None = outcome(lambda: decode(SUBJECTS, kind, subject, body))
    if read is None:
        return
    assert isinstance(read.data, kind) and read.subject == RID
    for state in releases():
        before = state.model_dump()
        decision = decide(state, read, at(20))
        assert state.model_dump() == before, "decide changed the state it was given"
        after = decision.state or state
        assert ReleaseState.model_validate_json(after.model_dump_json()) == after  # storable
        for command in decision.commands:
            publishable(command.data, command.subject_key or RID, command.event_id)
        why = operator_refusal(state, read, at(20))
        live = not state.status.terminal and read.id not in state.seen_event_ids
        if why is not None:
            assert why.strip()
            if live:  # refused: announced, with the reason, and nothing else happens
                [notice] = [c.data for c in decision.commands]
                assert isinstance(notice, OperatorCommandRefused) and notice.refusal == why
                assert after.model_dump(exclude={"history", "seen_event_ids", "updated_at"}) == (
                    state.model_dump(exclude={"history", "seen_event_ids", "updated_at"})
                )
        if isinstance(read.data, AbortRelease):  # the rollback service judges it alike
            assert (abort_refusal(read, state, at(20)) is None) == (why is None)


# --------------------------------------------------------------------------- 2. alerts

IN_FLIGHT = sample_state("web-1").model_copy(update={"status": ReleaseStatus.ANALYSING})


class Store:
    """The release store: shop/web has a release in flight, nothing else has."""

    async def holder_of(self, target: TargetRef) -> str | None:
        return "web-1" if target == IN_FLIGHT.target else None

    async def get(self, release_id: str) -> Versioned | None:
        return Versioned(IN_FLIGHT, 3) if release_id == "web-1" else None


class Sent:
    """The webhook's publish: checks each verdict is what EventPublisher can send."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    async def __call__(self, release_id: str, verdict: AnalysisVerdict, event_id: str) -> None:
        publishable(verdict, release_id, event_id)
        self.ids.append(event_id)


NAMES = st.sampled_from(["HighErrorRate", "Latency", ""]) | st.text(max_size=20)


@st.composite
def notifications(draw: st.DrawFn) -> dict[str, Any]:
    """An Alertmanager webhook payload (version 4)."""
    alerts = []
    for _ in range(draw(st.integers(0, 4))):
        labels = {"alertname": draw(NAMES), "severity": "page"}
        labels["namespace"] = draw(st.sampled_from(["shop", "other", "Shop"]))
        key = draw(st.sampled_from(["deployment", "target", "canaryflow_target"]))
        labels[key] = draw(st.sampled_from(["web", "api", "w" * 300]))
        alerts.append(
            {
                "status": draw(st.sampled_from(["firing", "firing", "resolved"])),
                "labels": labels,
                "annotations": {"summary": draw(st.text(max_size=40))},
                "startsAt": "2026-11-27T12:00:00Z",
                "generatorURL": "http://prometheus.local/graph",
                "fingerprint": draw(
                    st.sampled_from(["abc123", "", "f" * 16, "x" * 300, "a b\r\nc"])
                    | st.text(max_size=20)
                ),
            }
        )
    return {
        "version": "4",
        "status": "firing",
        "receiver": "canaryflow",
        "groupKey": '{}:{alertname="HighErrorRate"}',
        "groupLabels": {"alertname": "HighErrorRate"},
        "commonLabels": {"severity": "page"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.local",
        "alerts": alerts,
    }


def check_answer(status: int, answer: dict[str, Any], sent: Sent) -> None:
    assert status in (200, 400, 404, 413, 422), status
    if status == 200:
        assert answer["status"] == "ok"
        assert len(answer["rolled_back"]) == len(sent.ids)
    else:
        assert answer["status"] == "refused" and answer["reason"].strip()
        assert status == 404 or not sent.ids  # a malformed notification publishes nothing
    json.dumps(answer)  # what aiohttp writes back


@given(body=notifications().flatmap(mutated))
@profile(800)
def test_an_alert_notification_is_acted_on_or_refused_with_a_reason(body: Any) -> None:
    kept = copy.deepcopy(body)
    sent = Sent()
    try:
        answer = asyncio.run(receive(body, Store(), sent))
        status = 200
    except AlertRefused as refused:
        status, answer = refused.status, {"status": "refused", "reason": refused.reason}
    check_answer(status, answer, sent)
    event(f"answered {status}")
    assert body == kept, "the notification was changed"
    if isinstance(body, dict) and isinstance(body.get("alerts"), list):
        assert len(body["alerts"]) <= MAX_ALERTS or status == 413
    try:
        firing = parse_alerts(body)
    except AlertRefused as refused:
        assert refused.reason.strip() and 400 <= refused.status < 500
    else:
        assert all(alert.fingerprint for alert in firing)


@given(raw=notifications().flatmap(lambda doc: mutated(doc, wire=True)).flatmap(serialised))
@profile(800)
def test_an_alert_request_body_is_answered_with_a_status_and_a_reason(raw: bytes) -> None:
    sent = Sent()
    status, answer = asyncio.run(respond(raw, Store(), sent))
    check_answer(status, answer, sent)
    event(f"answered {status}")
    if len(raw) > MAX_BODY_BYTES:
        assert status == 413


# --------------------------------------------------------------------------- 3. policies

HOOKS: list[dict[str, Any]] = [
    {"name": "smoke", "type": "pre-rollout", "url": "http://hooks.local/smoke", "retries": 1},
    APPROVE,
    {"name": "load", "type": "rollout"},
    {"name": "sign-off", "type": "confirm-promotion", "deadlineSeconds": 60},
    {"name": "tell", "type": "post-rollout", "url": "http://hooks.local/done"},
]
PROBABILITY = st.floats(0, 1)
EFFECT = st.none() | st.floats(0.001, 10)


@st.composite
def policy_specs(draw: st.DrawFn) -> ReleasePolicySpec:
    """A valid ReleasePolicy spec, built from the models."""
    weights = sorted(draw(st.sets(st.integers(1, 100), min_size=1, max_size=6)))
    metrics = [
        MetricRule(name="errors", template=MetricTemplate.ERROR_RATE, max=draw(PROBABILITY)),
        MetricRule(name="latency", template=MetricTemplate.P99_LATENCY, max=draw(st.floats(0, 9))),
        MetricRule(name="raw", query="sum(rate(x{version='{version}'}[{window}]))", min=0),
    ][: draw(st.integers(0, 3))]
    compare = [
        Comparison(name=f"compare-{t.value}", template=t.value, min_effect=draw(EFFECT))
        for t in draw(st.lists(st.sampled_from(list(CountTemplate)), unique=True, max_size=2))
    ]
    business = [
        BusinessMetric(
            name="purchases", template="conversion", minimum_detectable_effect=0.1, better=b
        )
        for b in draw(st.lists(st.sampled_from(list(Better)), max_size=1))
    ]
    if not (metrics or compare or business):
        metrics = [MetricRule(name="errors", template="error-rate", max=0.05)]
    analysis = Analysis(
        interval_seconds=draw(st.floats(1, 600)),
        window_seconds=draw(st.integers(5, 3600)),
        min_requests=draw(st.integers(1, 10**6)),
        metrics=metrics,
        compare=compare,
        business=business,
    )
    traffic = draw(
        st.sampled_from(
            [
                Traffic(),
                Traffic(router="traefik", sticky=Sticky(max_age_seconds=60)),
                Traffic(
                    router="gateway-api",
                    match=[RouteMatch(headers=[HeaderMatch(name="x-canary", exact="1")])],
                ),
            ]
        )
    )
    grants = st.builds(
        OperatorGrant,
        subject=st.sampled_from(["*", "ops", "*@sre.example"]),
        actions=st.lists(st.sampled_from(list(OperatorAction)), min_size=1, max_size=3),
    )
    images = st.builds(
        ImageRules,
        allowed_prefixes=st.lists(st.sampled_from(["registry.local:5000/shop", "ghcr.io/"])),
        require_digest=st.booleans(),
    )
    return ReleasePolicySpec(
        target_ref="web",
        steps=[Step(weight=w, hold_seconds=draw(st.floats(0, 86400))) for w in weights],
        max_weight=draw(st.integers(weights[-1], 100)),
        analysis=analysis,
        deadlines=Deadlines(pod_ready_seconds=draw(st.floats(5, 1e6))),
        operators=draw(st.none() | st.lists(grants, max_size=3)),
        images=draw(st.none() | images),
        hooks=[
            Hook.model_validate(h)
            for h in draw(st.lists(st.sampled_from(HOOKS), unique_by=lambda h: str(h["name"])))
        ],
        traffic=traffic,
    )


def spec_document(spec: ReleasePolicySpec) -> dict[str, Any]:
    """The spec as the API server stores it (camelCase, no nulls)."""
    doc: dict[str, Any] = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert ReleasePolicySpec.model_validate(doc) == spec  # what we write, we read
    return doc


def check_governing(found: Governing, spec: Any) -> None:
    assert (found.spec is None) == bool(found.problems), found
    assert all(problem.strip() for problem in found.problems)
    if found.spec is not None:
        assert found.name == "web-policy"
        assert ReleasePolicySpec.model_validate_json(found.spec.model_dump_json()) == found.spec
    elif isinstance(spec, dict) and spec.get("targetRef") == "web":
        assert "web-policy is invalid" in found.problems[0]


@given(spec=policy_specs().map(spec_document).flatmap(mutated))
@profile(700)
def test_a_release_policy_is_read_or_refused_with_a_reason(spec: Any) -> None:
    kept = copy.deepcopy(spec)
    # What the planner and the executor read (read_policies hands on an object's spec, or {}).
    stored = spec if isinstance(spec, dict) else {}
    found = governing("shop", "web", [PolicyObject("web-policy", stored)])
    check_governing(found, stored)
    event("accepted" if found.spec is not None else "refused")
    # What the metrics-watcher reads, the whole object.
    whole = {"apiVersion": "canaryflow.io/v1alpha1", "kind": "ReleasePolicy", "spec": spec}
    try:
        read = parse_policy("shop", "web-policy", whole)
    except PolicyProblem as problem:
        assert str(problem).strip() and found.spec is None
    else:
        assert found.spec == (read if read.target_ref == "web" else None)
    # A valid policy plans any valid request, or says why not; never raises.
    answer = check_request(request(), DEPLOYMENT, [PolicyObject("web-policy", stored)], at(0))
    if isinstance(answer, Refusal):
        assert answer.reasons and all(reason.strip() for reason in answer.reasons)
    else:
        assert found.spec is not None
        decision = machine.accept(RID, envelope(request(), "req-1", "ci"), answer, at(0))
        assert decision.state is not None
        assert ReleaseState.model_validate_json(decision.state.model_dump_json()) == decision.state
        for command in decision.commands:
            publishable(command.data, command.subject_key or RID, command.event_id)
    assert spec == kept, "the policy object was changed"


@given(
    raw=policy_specs().map(spec_document).flatmap(lambda d: mutated(d, True)).flatmap(serialised)
)
@profile(600)
def test_a_release_policy_as_bytes_is_read_or_refused_with_a_reason(raw: bytes) -> None:
    spec = outcome(lambda: ReleasePolicySpec.model_validate_json(raw))
    if spec is not None:
        assert ReleasePolicySpec.model_validate_json(spec.model_dump_json()) == spec


# --------------------------------------------------------------------------- 4. envelopes


@cache
def wire_events() -> tuple[dict[str, Any], ...]:
    """One event of every catalogue type, as the services' publisher writes it."""
    return tuple(
        json.loads(Envelope.wrap(e, release_id="web-1", source="canaryflow/test").model_dump_json())
        for e in one_of_each()
    )


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    """Any event's envelope, maybe with its data as data_base64, then mutated."""
    doc = copy.deepcopy(draw(st.sampled_from(wire_events())))
    if draw(st.booleans()) and draw(st.booleans()):
        data = doc.pop("data")
        payload = draw(
            st.sampled_from(
                [json.dumps(data).encode(), b"[" * 50_000, b"{", b"\xff", b'"x"', b"null"]
            )
        )
        doc["data_base64"] = base64.b64encode(payload).decode()
    return draw(serialised(draw(mutated(doc, wire=True))))


RAW = envelopes() | st.binary(max_size=64) | JSON.map(lambda v: json.dumps(v).encode())


@given(raw=RAW)
@profile(1200)
def test_any_event_envelope_is_read_or_refused_with_a_reason(raw: bytes) -> None:
    # The CLI reads every event this way, without the services' decoding limits first.
    event: Envelope[Any] | None = outcome(lambda: parse_event(raw))
    if event is not None:
        assert isinstance(event.data, EVENT_TYPES[event.type])
        assert parse_event(event.model_dump_json().encode()) == event
    # A service's consumer of that type reads it with its limits and its subject.
    kind = EVENT_TYPES[event.type] if event is not None else AbortRelease
    consumed = outcome(lambda: decode(SUBJECTS, kind, SUBJECTS.of(kind, "web-1"), raw))
    if consumed is not None:
        assert event is not None
        # An envelope without ``time`` is stamped with the moment it is read: each read its own.
        assert consumed.model_copy(update={"time": event.time}) == event


# --------------------------------------------------------------------------- what they found


def test_a_body_cut_after_its_opening_brackets_is_over_the_depth_limit() -> None:
    # Measured 0 (nothing balanced), then json.loads raised RecursionError on it.
    with pytest.raises(BodyOverLimit, match="deeper than the limit"):
        check_limits(b"[" * 100_000)
    check_limits(b'{"a": [1, {"b": [')  # cut too, but shallow: left to the parser to refuse


def test_an_alert_body_nested_too_deep_is_refused_not_answered_500() -> None:
    status, answer = asyncio.run(respond(b'{"alerts": ' + b"[" * 100_000, Store(), Sent()))
    assert status == 400 and "deeper than the limit" in answer["reason"]


def test_an_alert_fingerprint_that_cannot_end_an_event_id_is_hashed() -> None:
    alert = {"status": "firing", "labels": {"alertname": "X", "namespace": "shop", "target": "web"}}
    for fingerprint in ("x" * 300, "a b\r\nNats-Msg-Id: forged"):
        (firing,) = parse_alerts({"alerts": [{**alert, "fingerprint": fingerprint}]})
        assert len(firing.fingerprint) == 16 and firing.fingerprint.isalnum()
    (kept,) = parse_alerts({"alerts": [{**alert, "fingerprint": "0f1e2d3c4b5a6978"}]})
    assert kept.fingerprint == "0f1e2d3c4b5a6978"


def test_data_base64_nested_too_deep_is_refused_with_a_reason() -> None:
    doc = copy.deepcopy(next(e for e in wire_events() if e["type"] == PauseRelease.event_type()))
    del doc["data"]
    doc["data_base64"] = base64.b64encode(b"[" * 50_000).decode()
    with pytest.raises(ValidationError, match="data_base64 is not base64 of a JSON payload"):
        parse_event(json.dumps(doc))
