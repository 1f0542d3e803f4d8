"""The public contract: what an external system relies on must hold."""

from __future__ import annotations

import gc
import json

import jsonschema
import pytest
from pydantic import ValidationError

from canaryflow_contracts import CATALOGUE, Envelope, Subjects, envelope_of, generate
from canaryflow_contracts.events import (
    AnalysisVerdict,
    PauseRelease,
    PlannedStep,
    ReleaseRequested,
    TargetRef,
    VerdictAction,
    VerdictResult,
    VersionSpec,
)
from canaryflow_contracts.identifiers import version_of
from canaryflow_contracts.policy import ReleasePolicySpec

REQUEST_JSON = {
    "specversion": "1.0",
    "id": "9b2f6a0e-ci-1234",
    "source": "ci/shop-pipeline",
    "type": "io.canaryflow.release.requested.v1",
    "time": "2026-11-27T12:00:00Z",
    "subject": "shop-web-42",
    "data": {
        "target": {"namespace": "shop", "name": "web"},
        "version": {"image": "registry.example.com:5000/shop/web:v2.3.1"},
        "requested_by": "ci@shop",
    },
}


def test_generated_files_match_the_code() -> None:
    assert generate.main(["--check"]) == 0


def test_a_hand_written_request_parses_and_matches_its_schema() -> None:
    envelope = Envelope[ReleaseRequested].model_validate(REQUEST_JSON).check_type()
    assert envelope.data.target == TargetRef(namespace="shop", name="web")
    schema = generate.json_schemas()[ReleaseRequested.event_type()]
    jsonschema.validate(REQUEST_JSON, schema)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("data", "version", "image"), "Shop Web:latest"),
        (("data", "version", "image"), "shop/web:"),
        (("data", "target", "namespace"), "Shop"),
        (("subject",), "has.dots"),
        (("data", "requested_by"), ""),
    ],
)
def test_bad_requests_are_refused_with_a_reason(path: tuple[str, ...], value: str) -> None:
    bad = json.loads(json.dumps(REQUEST_JSON))
    node = bad
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ValidationError) as error:
        Envelope[ReleaseRequested].model_validate(bad)
    assert path[-1] in str(error.value)


def test_an_envelope_whose_type_does_not_match_its_payload_is_refused() -> None:
    wrong = {**REQUEST_JSON, "type": AnalysisVerdict.event_type()}
    with pytest.raises(ValueError, match="does not match"):
        Envelope[ReleaseRequested].model_validate(wrong).check_type()


def test_an_envelope_type_is_built_once_and_outlives_garbage_collection() -> None:
    # pydantic keeps parametrised models only weakly; a rebuilt class costs milliseconds.
    first = id(envelope_of(AnalysisVerdict))
    gc.collect()
    assert id(envelope_of(AnalysisVerdict)) == first
    assert envelope_of(AnalysisVerdict).model_fields["data"].annotation is AnalysisVerdict
    request = envelope_of(ReleaseRequested).model_validate(REQUEST_JSON).data
    rewrapped = Envelope.wrap(request, release_id="shop-web-v2", source="test")
    assert type(rewrapped) is envelope_of(ReleaseRequested)


def test_every_event_has_a_unique_versioned_type_and_subject() -> None:
    types = [entry.event.event_type() for entry in CATALOGUE]
    assert len(types) == len(set(types))
    assert all(t.startswith("io.canaryflow.") and t.endswith(".v1") for t in types)
    subjects = Subjects("canaryflow")
    events = subjects.events_stream
    for entry in CATALOGUE:
        subject = subjects.of(entry.event, "rel-1")
        assert subject.endswith(".rel-1")
        stream = events if entry.event.event_domain != "deadletter" else subjects.deadletter_stream
        assert any(subject.startswith(s.removesuffix(">")) for s in stream.subjects), subject
        assert len(subject.split(".")) <= 16


def test_subject_prefix_is_checked() -> None:
    with pytest.raises(ValueError, match="prefix"):
        Subjects("Has.Dots")
    assert Subjects("cf_test1").events_stream.name == "CF_TEST1_EVENTS"


def test_asyncapi_document_references_resolve() -> None:
    document = generate.asyncapi()
    text = json.dumps(document)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        node = document
        for key in ref.removeprefix("#/").split("/"):
            node = node[key]
    assert document["channels"]["ReleaseRequested"]["address"] == (
        "canaryflow.release.requested.v1.{releaseId}"
    )


POLICY = {
    "targetRef": "web",
    "steps": [{"weight": 10, "holdSeconds": 30}, {"weight": 50, "holdSeconds": 30}],
    "analysis": {"metrics": [{"name": "errors", "template": "error-rate", "max": 0.05}]},
}


def test_policy_reads_camel_case_and_fills_safe_defaults() -> None:
    spec = ReleasePolicySpec.model_validate(POLICY)
    assert spec.analysis.min_requests == 50
    assert spec.service_name == "web"
    assert spec.deadlines.pod_ready_seconds == 120


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            {"steps": [{"weight": 50, "holdSeconds": 1}, {"weight": 10, "holdSeconds": 1}]},
            "increase",
        ),
        ({"maxWeight": 20}, "exceeds maxWeight"),
        (
            {"analysis": {"metrics": [{"name": "errors", "template": "error-rate"}]}},
            "set max, min or both",
        ),
        (
            {
                "analysis": {
                    "metrics": [{"name": "e", "template": "error-rate", "query": "up", "max": 1}]
                }
            },
            "exactly one",
        ),
    ],
)
def test_bad_policies_are_refused_with_a_reason(change: dict[str, object], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        ReleasePolicySpec.model_validate({**POLICY, **change})


def test_step_and_version_models_round_trip() -> None:
    step = PlannedStep(index=0, weight=10, hold_seconds=5)
    assert PlannedStep.model_validate_json(step.model_dump_json()) == step
    version = VersionSpec.model_validate(
        {"image": "shop:v2", "env": [{"name": "FLAG", "value": "on"}]}
    )
    assert version.env[0].name == "FLAG"


@pytest.mark.parametrize(
    ("image", "version"),
    [
        ("registry.local:5000/shop/web:v2.3", "v2.3"),
        ("registry.local:5000/shop/web", "latest"),
        ("web:v1@sha256:" + "a" * 64, "v1"),
        ("web@sha256:" + "ab" * 32, "sha256-" + "ab" * 6),
    ],
)
def test_the_version_of_an_image_is_its_tag_or_digest(image: str, version: str) -> None:
    assert version_of(image) == version


@pytest.mark.parametrize(
    ("result", "action", "final", "routine"),
    [
        (VerdictResult.PASS, VerdictAction.CONTINUE, False, True),
        (VerdictResult.INSUFFICIENT_DATA, VerdictAction.CONTINUE, False, True),
        (VerdictResult.PASS, VerdictAction.CONTINUE, True, False),  # the step's judgement
        (VerdictResult.FAIL, VerdictAction.CONTINUE, False, False),
        (VerdictResult.PASS, VerdictAction.EXTEND, False, False),
        (VerdictResult.FAIL, VerdictAction.ROLLBACK, False, False),
    ],
)
def test_a_routine_verdict_is_interim_unfailed_and_asks_to_go_on(
    result: VerdictResult, action: VerdictAction, final: bool, routine: bool
) -> None:
    verdict = AnalysisVerdict(
        target=TargetRef(namespace="shop", name="web"),
        step=PlannedStep(index=0, weight=10, hold_seconds=30),
        result=result,
        action=action,
        final=final,
        reason="",
        checks=[],
    )
    assert verdict.routine is routine


@pytest.mark.parametrize(
    ("subject", "named"),
    [
        ("canaryflow.release.requested.v1.web-1", "web-1"),
        ("canaryflow.release.requested.v1.Web\u0430", "Web\u0430"),  # named; not valid: apart
        ("canaryflow.release.requested.v1.web-1.more", None),
        ("canaryflow.release.requested.v2.web-1", None),
        ("canaryflow.release.requested.v1", None),
        ("other.release.requested.v1.web-1", None),
    ],
)
def test_a_subject_names_a_release_only_in_the_grammar(subject: str, named: str | None) -> None:
    assert Subjects().release_in(ReleaseRequested, subject) == named


def test_the_request_filter_reads_what_the_grammar_refuses_and_the_stream_stores_it() -> None:
    subjects = Subjects()
    assert subjects.requests() == (
        "canaryflow.release.requested.>",
        "canaryflow.release.requested",
    )
    assert "canaryflow.release.>" in subjects.events_stream.subjects
    assert "canaryflow.request.>" in subjects.events_stream.subjects  # where refusals go
    assert subjects.refusal("4f1c2a9e-ci-8812") == "canaryflow.request.refused.v1.4f1c2a9e-ci-8812"


def test_a_request_without_id_is_not_an_envelope() -> None:
    body = json.loads(json.dumps(REQUEST_JSON))
    del body["id"]
    with pytest.raises(ValidationError, match="id"):
        envelope_of(ReleaseRequested).model_validate(body)
    # Built in code, an envelope still gets a fresh id.
    assert Envelope.wrap(PauseRelease(actor="a"), release_id="web-1", source="t").id
