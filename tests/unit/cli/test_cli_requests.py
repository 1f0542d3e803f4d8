"""The CLI turns its arguments into the public request and commands, or says what is wrong."""

from __future__ import annotations

from typing import Any

import pytest

from canaryflow.cli import main as cli
from canaryflow_contracts import Envelope, EventData
from canaryflow_contracts.events import (
    ConfigMapChange,
    OpenPipelineGate,
    PauseRelease,
    ReleasePlanned,
    ReleaseRejected,
    RequestRefused,
    TargetRef,
    VersionSpec,
)


def test_config_arguments_are_grouped_by_config_map() -> None:
    changes = cli._config_changes(["web-config:LAYOUT=compact", "web-config:ITEMS=", "flags:x=1"])
    assert changes == [
        ConfigMapChange(name="web-config", data={"LAYOUT": "compact", "ITEMS": ""}),
        ConfigMapChange(name="flags", data={"x": "1"}),
    ]


@pytest.mark.parametrize("item", ["LAYOUT=compact", "web-config:LAYOUT", ":K=V", "cm:=v"])
def test_a_malformed_config_argument_is_refused_with_its_shape(item: str) -> None:
    with pytest.raises(cli.CliError, match="CONFIGMAP:KEY=VALUE"):
        cli._config_changes([item])


def test_only_an_answer_carrying_the_request_id_answers_the_request() -> None:
    target = TargetRef(namespace="shop", name="web")
    planned = ReleasePlanned(
        target=target,
        version=VersionSpec(image="registry.local/web:v2"),
        policy="web",
        steps=[],
        request_id="req-1",
    )
    refused = RequestRefused(
        request_id="req-2", release_id="web-1", request_subject="s", reasons=["already used"]
    )
    rejected = ReleaseRejected(target=target, reasons=["no policy"], request_id="req-3")

    def wrapped(data: EventData) -> Envelope[Any]:
        return Envelope.wrap(data, release_id="web-1", source="test")

    assert cli.answers(wrapped(planned), "req-1")
    # The release's own first event, when the id was reused by this request: not its answer.
    assert not cli.answers(wrapped(planned), "req-2")
    assert cli.answers(wrapped(refused), "req-2")
    assert cli.answers(wrapped(rejected), "req-3")
    assert not cli.answers(wrapped(PauseRelease(actor="a")), "req-1")


def test_a_pipeline_gate_is_opened_on_the_pipeline_id_before_a_named_environment() -> None:
    args = cli._parser().parse_args(
        ["open-pipeline-gate", "web-v2", "production", "--by", "ops@shop", "--reason", "ok"]
    )
    command = cli.operator_command(args)
    assert isinstance(command, OpenPipelineGate)
    assert (args.release_id, command.environment, command.actor) == (
        "web-v2",
        "production",
        "ops@shop",
    )
    with pytest.raises(SystemExit):  # the environment is required
        cli._parser().parse_args(["open-pipeline-gate", "web-v2"])
