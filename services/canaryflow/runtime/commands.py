"""Operator commands as people send them: built, signed with the operator's key, published.

Two front ends send them, the CLI (``canaryflow pause ...``) and the web view (its buttons), and
both must send the very same events, signed the same way, so that the planner and the rollback
service (``runtime.operators``) judge a click exactly as they judge a command line. The code
that makes and sends a command lives here once; each front end only says who asks and why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from nats.aio.client import Client
from nats.js.errors import NoStreamResponseError, NotFoundError

from canaryflow.runtime import operators
from canaryflow_contracts import MESSAGE_ID_HEADER, Envelope, EventData, Subjects
from canaryflow_contracts.events import (
    AbortRelease,
    OpenGate,
    OpenPipelineGate,
    OperatorCommand,
    PauseRelease,
    PromoteNow,
    ResumeRelease,
    SetWeight,
)

# The commands by the name people use for them (the CLI's subcommands, the page's buttons).
OPERATOR_COMMANDS: dict[str, type[OperatorCommand]] = {
    "pause": PauseRelease,
    "resume": ResumeRelease,
    "abort": AbortRelease,
    "promote": PromoteNow,
    "set-weight": SetWeight,
    "open-gate": OpenGate,
    "open-pipeline-gate": OpenPipelineGate,  # on a pipeline's id, not a release's
}


class CommandError(Exception):
    """A command that cannot be made or sent, with what to do about it."""


def operator_command(
    name: str,
    actor: str,
    reason: str = "",
    *,
    weight: int | None = None,
    gate: str | None = None,
    environment: str | None = None,
) -> OperatorCommand:
    """The command ``name`` (a key of ``OPERATOR_COMMANDS``) with who asks and why.

    Raises ``CommandError`` for an unknown name or a missing weight or gate, and pydantic's
    ``ValidationError`` for values the contract refuses (a weight of 0, an empty actor)."""
    kind = OPERATOR_COMMANDS.get(name)
    if kind is None:
        raise CommandError(f"no operator command {name!r}; one of {', '.join(OPERATOR_COMMANDS)}")
    if kind is SetWeight:
        if weight is None:
            raise CommandError("set-weight needs a weight")
        return SetWeight(actor=actor, reason=reason, weight=weight)
    if kind is OpenGate:
        if not gate:
            raise CommandError("open-gate needs the gate's name")
        return OpenGate(actor=actor, reason=reason, gate=gate)
    if kind is OpenPipelineGate:
        if not environment:
            raise CommandError("open-pipeline-gate needs the environment the gate is before")
        return OpenPipelineGate(actor=actor, reason=reason, environment=environment)
    return kind(actor=actor, reason=reason)


def signing_key(path: str | Path, passphrase: str | None = None) -> Ed25519PrivateKey:
    """An operator's private key from an OpenSSH key file; ``CommandError`` says what is wrong."""
    try:
        key = load_ssh_private_key(
            Path(path).read_bytes(), passphrase.encode() if passphrase else None
        )
    except OSError as error:
        raise CommandError(f"cannot read the key {path}: {error.strerror}") from error
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise CommandError(
            f"{path} is not an OpenSSH private key canaryflow can use ({error}); a key with a "
            "passphrase needs CANARYFLOW_OPERATOR_KEY_PASSPHRASE"
        ) from error
    if not isinstance(key, Ed25519PrivateKey):
        raise CommandError(
            f"{path} is a {type(key).__name__}: commands are signed with ed25519 keys"
        )
    return key


def envelope_for(
    data: EventData, release_id: str, source: str, key: Ed25519PrivateKey | None = None
) -> Envelope[Any]:
    """The event's envelope, signed (``operators.sign``) when a key is given."""
    envelope = Envelope.wrap(data, release_id=release_id, source=source)
    return operators.sign(envelope, key) if key is not None else envelope


async def publish(nc: Client, subjects: Subjects, envelope: Envelope[Any]) -> str:
    """Publish on the events stream, deduplicated by the envelope id; returns that id."""
    js = nc.jetstream()
    try:
        await js.publish(
            subjects.of(type(envelope.data), envelope.subject),
            envelope.model_dump_json().encode(),
            headers={MESSAGE_ID_HEADER: envelope.id},
            stream=subjects.events_stream.name,
        )
    except (NoStreamResponseError, NotFoundError) as error:
        raise CommandError(
            f"no stream {subjects.events_stream.name} on this NATS: are canaryflow's services "
            f"running with prefix {subjects.prefix!r}? ({error!r})"
        ) from error
    return envelope.id
