"""Who may steer a release: one rule, read by the planner and by the rollback service.

Both consume operator commands (the rollback service takes an abort directly, so that it works
without the planner), so both must refuse the same commands for the same reasons; the rule
lives here once, as pure functions over the policy's grants that the release recorded when it
was planned.

Why signatures: the name on a command (``actor``) is whatever its sender wrote, so anyone who
may publish on the operator subjects could act in alice's name. A grant that lists ``keys``
(OpenSSH ``ssh-ed25519`` public keys, what operators already hold) is honoured only for a
command signed by one of them: the CLI signs the command's type, id, time, release and data
(``signed_bytes``) with the operator's private key and carries the public key and signature
as the CloudEvents extensions ``operatorkey`` and ``operatorsig``. A signature older than
``SIGNED_MAX_AGE_SECONDS`` is refused, so a recorded command cannot be replayed later (within
that age JetStream's duplicate window and the planner's seen ids drop a repeat of the same id).
A grant without keys still trusts the declared name: the policy says which it wants.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_ssh_public_key,
)

from canaryflow_contracts.envelope import Envelope
from canaryflow_contracts.events import (
    AbortRelease,
    OpenGate,
    OpenPipelineGate,
    OperatorCommand,
    OperatorCommandRefused,
    PauseRelease,
    PromoteNow,
    ResumeRelease,
    SetWeight,
    TargetRef,
)
from canaryflow_contracts.policy import OperatorAction, OperatorGrant

ACTIONS: dict[type[OperatorCommand], OperatorAction] = {
    PauseRelease: OperatorAction.PAUSE,
    ResumeRelease: OperatorAction.RESUME,
    AbortRelease: OperatorAction.ABORT,
    PromoteNow: OperatorAction.PROMOTE,
    SetWeight: OperatorAction.SET_WEIGHT,
    OpenGate: OperatorAction.OPEN_GATE,
    OpenPipelineGate: OperatorAction.OPEN_GATE,
}
# Without a list in the policy: what only ever makes a release safer.
DEFAULT_ACTIONS = frozenset({OperatorAction.PAUSE, OperatorAction.ABORT})
# The CloudEvents extensions a signed command carries (names: lower-case letters and digits).
KEY_EXTENSION, SIGNATURE_EXTENSION = "operatorkey", "operatorsig"
# A signed command is acted on this long after its time, and no earlier than this before it.
SIGNED_MAX_AGE_SECONDS = 300
SIGNED_MAX_AHEAD_SECONDS = 60
SIGNED_DOMAIN = "canaryflow-operator-command-v1"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def action_of(command: OperatorCommand) -> OperatorAction:
    for kind, action in ACTIONS.items():
        if isinstance(command, kind):
            return action
    raise ValueError(f"not an operator command: {type(command).__name__}")


def refusal(
    grants: list[OperatorGrant] | None,
    actor: str,
    action: OperatorAction,
    signer: str | None = None,
    unproven: str = "it is not signed",
) -> str | None:
    """Why ``actor`` may not do ``action`` under ``grants``; None when they may.

    ``signer``: the key (``key_id``) whose signature on the command held, if any; ``unproven``
    says why there is none. A grant with keys matches only a command one of them signed."""
    if grants is None:
        if action in DEFAULT_ACTIONS:
            return None
        return (
            f"the policy lists no operators, so only pause and abort are allowed; "
            f"{action.value} needs a grant in spec.operators"
        )
    keyed = False
    for grant in grants:
        if not fnmatch.fnmatchcase(actor, grant.subject) or action not in grant.actions:
            continue
        if grant.keys is None:
            return None
        if signer is not None and signer in {key_id(key) for key in grant.keys}:
            return None
        keyed = True
    if keyed:
        why = unproven if signer is None else "it is signed by a key not listed for them"
        return (
            f"{actor} may {action.value} releases of this target only with a signature by one "
            f"of their keys in spec.operators, and {why}"
        )
    return f"{actor} may not {action.value} releases of this target (spec.operators)"


def command_refusal(
    grants: list[OperatorGrant] | None, command: Envelope[Any], now: datetime
) -> str | None:
    """``refusal`` of an operator command as it came: its actor, action and signature."""
    data: OperatorCommand = command.data
    signer, unproven = proven_key(command, now)
    return refusal(grants, data.actor, action_of(data), signer, unproven or "it is not signed")


def key_id(openssh_public_key: str) -> str:
    """A public key as the ``operatorkey`` extension names it: the base64 blob of its OpenSSH
    line (``ssh-ed25519 AAAA... comment``), without the type and the comment."""
    parts = openssh_public_key.split()
    return parts[1] if len(parts) > 1 else parts[0] if parts else ""


def signed_bytes(command: Envelope[Any]) -> bytes:
    """What an operator signs: the command's type, id, time (microseconds since the epoch),
    release id and data (JSON, keys sorted, no spaces), one per line after a domain tag."""
    micros = (command.time.astimezone(UTC) - _EPOCH) // timedelta(microseconds=1)
    data = json.dumps(command.data.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    lines = [SIGNED_DOMAIN, command.type, command.id, str(micros), command.subject, data]
    return "\n".join(lines).encode()


def sign(command: Envelope[Any], private_key: Ed25519PrivateKey) -> Envelope[Any]:
    """The command with its signature in the ``operatorkey``/``operatorsig`` extensions."""
    public = private_key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
    signature = base64.b64encode(private_key.sign(signed_bytes(command))).decode()
    # model_dump keeps the extensions the command already carries (e.g. traceparent).
    attributes = command.model_dump(exclude={"data"})
    attributes.update({KEY_EXTENSION: key_id(public.decode()), SIGNATURE_EXTENSION: signature})
    return type(command)(data=command.data, **attributes)


def proven_key(command: Envelope[Any], now: datetime) -> tuple[str | None, str | None]:
    """(the ``key_id`` whose signature on this command holds, None) or (None, why not)."""
    extensions = command.extensions
    key, signature = extensions.get(KEY_EXTENSION), extensions.get(SIGNATURE_EXTENSION)
    if key is None and signature is None:
        return None, "it is not signed"
    if not isinstance(key, str) or not isinstance(signature, str):
        return None, f"it carries only one of {KEY_EXTENSION} and {SIGNATURE_EXTENSION}"
    try:
        public = load_ssh_public_key(f"ssh-ed25519 {key}".encode())
        raw = base64.b64decode(signature, validate=True)
    except (ValueError, binascii.Error, TypeError, UnsupportedAlgorithm) as error:
        return None, f"its key or signature cannot be read ({type(error).__name__})"
    if not isinstance(public, Ed25519PublicKey):
        return None, "its key is not an ssh-ed25519 key"
    try:
        public.verify(raw, signed_bytes(command))
    except InvalidSignature:
        return None, "its signature does not match the command (altered, or signed for another)"
    age = (now - command.time).total_seconds()
    if age > SIGNED_MAX_AGE_SECONDS:
        return None, (
            f"it was signed {age:.0f} s ago, more than {SIGNED_MAX_AGE_SECONDS} s: "
            "an old command is not replayed"
        )
    if age < -SIGNED_MAX_AHEAD_SECONDS:
        return None, f"it is dated {-age:.0f} s ahead of this service's clock"
    return key, None


def refusal_notice(target: TargetRef, command: OperatorCommand, why: str) -> OperatorCommandRefused:
    return OperatorCommandRefused(
        target=target,
        action=action_of(command),
        actor=command.actor,
        reason=command.reason,
        refusal=why,
    )


def refused_id(release_id: str, command_event_id: str) -> str:
    """The same id from the planner and the rollback service: JetStream keeps one refusal."""
    digest = hashlib.sha256(command_event_id.encode()).hexdigest()[:12]
    return f"{release_id}.refused.{digest}"
