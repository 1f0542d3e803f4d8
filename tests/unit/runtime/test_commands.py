"""Operator commands as the CLI and the web view send them (runtime/commands.py): one way."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from pydantic import ValidationError

from canaryflow.runtime import commands, operators
from canaryflow_contracts.events import OpenGate, OpenPipelineGate, PauseRelease, SetWeight


def test_every_command_is_built_by_its_name_with_who_and_why() -> None:
    pause = commands.operator_command("pause", "ops@shop", "look")
    assert (type(pause), pause.actor, pause.reason) == (PauseRelease, "ops@shop", "look")
    weight = commands.operator_command("set-weight", "ops@shop", weight=40)
    assert isinstance(weight, SetWeight) and weight.weight == 40
    gate = commands.operator_command("open-gate", "ops@shop", gate="confirm")
    assert isinstance(gate, OpenGate) and gate.gate == "confirm"
    pipeline_gate = commands.operator_command("open-pipeline-gate", "ops@shop", environment="prod")
    assert isinstance(pipeline_gate, OpenPipelineGate) and pipeline_gate.environment == "prod"
    assert set(commands.OPERATOR_COMMANDS) == {
        "pause", "resume", "abort", "promote", "set-weight", "open-gate", "open-pipeline-gate",
    }  # fmt: skip


def test_a_command_that_cannot_be_made_says_why() -> None:
    with pytest.raises(commands.CommandError, match="no operator command 'delete'"):
        commands.operator_command("delete", "ops@shop")
    with pytest.raises(commands.CommandError, match="needs a weight"):
        commands.operator_command("set-weight", "ops@shop")
    with pytest.raises(commands.CommandError, match="gate's name"):
        commands.operator_command("open-gate", "ops@shop")
    with pytest.raises(commands.CommandError, match="needs the environment"):
        commands.operator_command("open-pipeline-gate", "ops@shop")
    with pytest.raises(ValidationError):
        commands.operator_command("set-weight", "ops@shop", weight=0)


def test_a_signed_envelope_proves_its_key_as_the_planner_checks_it(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "ops"
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()))
    loaded = commands.signing_key(path)
    envelope = commands.envelope_for(
        commands.operator_command("abort", "ops@shop"), "rel-1", "canaryflow/ui", loaded
    )
    signer, why = operators.proven_key(envelope, datetime.now(UTC))
    assert (signer is not None, why) == (True, None)
    unsigned = commands.envelope_for(PauseRelease(actor="ops@shop"), "rel-1", "canaryflow/ui")
    assert operators.proven_key(unsigned, datetime.now(UTC)) == (None, "it is not signed")
    (tmp_path / "junk").write_text("not a key")
    with pytest.raises(commands.CommandError, match="not an OpenSSH private key"):
        commands.signing_key(tmp_path / "junk")
