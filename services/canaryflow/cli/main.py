"""``canaryflow``: request a release, see what is in flight, follow one, steer it.

It speaks NATS only (no Kubernetes access needed), so anyone who may publish to the bus can use
it. NATS_URL and CANARYFLOW_PREFIX select the installation, as for the services.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import re
import secrets
import socket
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import nats
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client
from nats.js.api import DeliverPolicy
from nats.js.errors import BucketNotFoundError, NotFoundError
from pydantic import ValidationError

from canaryflow.cli import render
from canaryflow.runtime import commands
from canaryflow.runtime.commands import OPERATOR_COMMANDS
from canaryflow.runtime.nats_access import NatsAccess, NatsAccessError
from canaryflow.runtime.settings import nats_servers
from canaryflow.runtime.store import ReleaseStore
from canaryflow_contracts import Envelope, EventData, Subjects
from canaryflow_contracts.events import (
    TERMINAL_EVENTS,
    ConfigMapChange,
    EnvVar,
    OpenGate,
    OpenPipelineGate,
    OperatorCommand,
    PolicyOverrides,
    ReleasePlanned,
    ReleaseRejected,
    ReleaseRequested,
    ReleaseSucceeded,
    RequestRefused,
    SetWeight,
    TargetRef,
    VersionSpec,
    parse_event,
)
from canaryflow_contracts.identities import IDENTITIES, authorization
from canaryflow_contracts.state import GroupState, PipelineState, ReleaseState


class CliError(Exception):
    """A failure the user can act on; printed without a traceback."""


def _default_actor() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="canaryflow", description=__doc__)
    parser.add_argument("--nats", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--prefix", default=os.environ.get("CANARYFLOW_PREFIX", "canaryflow"))
    commands = parser.add_subparsers(dest="command", required=True)

    release = commands.add_parser("release", help="request a release of a new version")
    release.add_argument("--namespace", "-n", required=True)
    release.add_argument("--deployment", "-d", required=True, help="the target Deployment")
    release.add_argument("--image", required=True, help="the new version's image")
    release.add_argument("--container", help="container to change (default: the first)")
    release.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    release.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="CONFIGMAP:KEY=VALUE",
        help="set a key of a ConfigMap the target reads (canaried on a versioned copy)",
    )
    release.add_argument("--id", dest="release_id", help="release id (default: generated)")
    release.add_argument("--max-weight", type=int, help="tighten the policy's maximum weight")
    release.add_argument("--by", default=_default_actor(), help="who requests it")
    release.add_argument("--reason", default="")
    release.add_argument("--watch", action="store_true", help="follow it until it ends")

    commands.add_parser("status", help="every release in flight").add_argument(
        "--all", action="store_true", help="include finished releases"
    )

    deadletters = commands.add_parser(
        "deadletters", help="messages the services gave up on, with their errors"
    )
    deadletters.add_argument("--last", type=int, default=20, help="how many (newest last)")

    watch = commands.add_parser("watch", help="follow one release until it ends")
    watch.add_argument("release_id")
    watch.add_argument("--timeout", type=float, default=0, help="give up after N seconds")

    authorization = commands.add_parser(
        "nats-authorization",
        help="print the NATS server's authorization block: each identity's NKey with the "
        "permissions it needs on this prefix (connects to nothing)",
    )
    authorization.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="IDENTITY=PUBLIC_NKEY",
        help=f"one of {', '.join(IDENTITIES)} and its public NKey (U...); repeat for each",
    )

    for name, event in OPERATOR_COMMANDS.items():
        command = commands.add_parser(name, help=(event.__doc__ or "").strip().splitlines()[0])
        if event is OpenPipelineGate:
            command.add_argument("release_id", metavar="pipeline_id")
            command.add_argument("environment", help="the environment the gate is before")
        else:
            command.add_argument("release_id")
        if event is SetWeight:
            command.add_argument("weight", type=int, help="the canary's share, in percent")
        if event is OpenGate:
            command.add_argument("gate", help="the gate's name in the policy")
        command.add_argument("--by", default=_default_actor(), help="who asks (recorded)")
        command.add_argument("--reason", default="", help="why (recorded)")
        command.add_argument(
            "--key",
            default=os.environ.get("CANARYFLOW_OPERATOR_KEY"),
            help="an OpenSSH ed25519 private key to sign the command with, for policies whose "
            "operators list keys (env CANARYFLOW_OPERATOR_KEY; a passphrase in "
            "CANARYFLOW_OPERATOR_KEY_PASSPHRASE)",
        )
    return parser


def signing_key(path: str) -> Ed25519PrivateKey:
    """The operator's private key from an OpenSSH key file; CliError with what is wrong."""
    try:
        return commands.signing_key(path, os.environ.get("CANARYFLOW_OPERATOR_KEY_PASSPHRASE"))
    except commands.CommandError as error:
        raise CliError(str(error)) from error


async def _report_nothing(error: Exception) -> None:
    """nats-py prints a traceback per failed attempt by default; we report failures ourselves."""


async def _connect(url: str) -> Client:
    try:
        # TLS and the operator's NKey from NATS_TLS_CA / NATS_NKEY_SEED (runtime/nats_access).
        access = NatsAccess.from_env("operator", dict(os.environ))
        return await nats.connect(
            nats_servers(url),
            connect_timeout=3,
            max_reconnect_attempts=2,
            error_cb=_report_nothing,
            **access.client_options(),
        )
    except NatsAccessError as error:
        raise CliError(str(error)) from error
    except Exception as error:
        raise CliError(f"cannot reach NATS at {url}: {error!r} (set NATS_URL or --nats)") from error


async def _publish(
    nc: Client,
    subjects: Subjects,
    data: EventData,
    release_id: str,
    key: Ed25519PrivateKey | None = None,
) -> str:
    envelope = commands.envelope_for(data, release_id, "canaryflow/cli", key)
    try:
        return await commands.publish(nc, subjects, envelope)
    except commands.CommandError as error:
        raise CliError(str(error)) from error


def operator_command(args: argparse.Namespace) -> OperatorCommand:
    """The command an operator subcommand asks for, with who asks and why."""
    return commands.operator_command(
        args.command,
        args.by,
        args.reason,
        weight=getattr(args, "weight", None),
        gate=getattr(args, "gate", None),
        environment=getattr(args, "environment", None),
    )


def _config_changes(items: list[str]) -> list[ConfigMapChange]:
    """``--config web-config:LAYOUT=compact`` items, grouped by ConfigMap."""
    changes: dict[str, dict[str, str]] = {}
    for item in items:
        name, colon, assignment = item.partition(":")
        key, equals, value = assignment.partition("=")
        if not (colon and equals and name and key):
            raise CliError(f"--config {item!r} must look like CONFIGMAP:KEY=VALUE")
        changes.setdefault(name, {})[key] = value
    return [ConfigMapChange(name=name, data=data) for name, data in changes.items()]


def _release_request(args: argparse.Namespace) -> tuple[str, ReleaseRequested]:
    env = []
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--env {item!r} must look like NAME=VALUE")
        env.append(EnvVar(name=name, value=value))
    release_id = args.release_id or f"{args.deployment.split('.')[0][:40]}-{secrets.token_hex(3)}"
    request = ReleaseRequested(
        target=TargetRef(namespace=args.namespace, name=args.deployment),
        version=VersionSpec(
            image=args.image,
            container=args.container,
            env=env,
            config_maps=_config_changes(args.config),
        ),
        overrides=PolicyOverrides(max_weight=args.max_weight),
        requested_by=args.by,
        reason=args.reason,
    )
    return release_id, request


async def follow_release(
    nc: Client,
    subjects: Subjects,
    release_id: str,
    on_event: Callable[[Envelope[Any]], None],
    give_up_after: float = 0,
    *,
    on_trace: Callable[[str], None] | None = None,
) -> Envelope[Any] | None:
    """Replay the release's events from its start, then live, until a terminal event.

    Returns the terminal event, or None when ``give_up_after`` seconds passed first.
    ``on_trace`` gets the ``traceparent`` header of the first event that has one (the
    request itself may not: the planner roots the trace when it handles it).
    """
    js = nc.jetstream()
    subscription = await js.subscribe(
        subjects.release(release_id),
        # The wildcard also matches dead letters, so name the stream.
        stream=subjects.events_stream.name,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up_after if give_up_after else None
    try:
        while True:
            wait = 3600.0 if deadline is None else deadline - loop.time()
            if wait <= 0:
                return None
            try:
                msg = await subscription.next_msg(timeout=min(wait, 5))
            except TimeoutError:
                continue
            if on_trace is not None and (traceparent := (msg.headers or {}).get("traceparent")):
                on_trace(traceparent)
                on_trace = None
            try:
                envelope = parse_event(msg.data)
            except (ValueError, ValidationError) as error:
                print(f"(unreadable event on {msg.subject}: {error})")
                continue
            on_event(envelope)
            if isinstance(envelope.data, TERMINAL_EVENTS):
                return envelope
    finally:
        await subscription.unsubscribe()


# How long `release --watch` waits for the planner to answer the request before it gives up.
ANSWER_SECONDS = 30.0


def answers(envelope: Envelope[Any], request_id: str) -> bool:
    """Whether ``envelope`` is the planner's answer to the request whose envelope id it is.

    The answer is the release planned or rejected *carrying that request id*, or the request's
    refusal: a release id may already be used, and its events then belong to another request.
    """
    data = envelope.data
    return (
        isinstance(data, ReleasePlanned | ReleaseRejected | RequestRefused)
        and data.request_id == request_id
    )


async def answer_to(
    nc: Client, subjects: Subjects, release_id: str, request_id: str, timeout: float
) -> Envelope[Any] | None:
    """The planner's answer to a request (see ``answers``), or None after ``timeout`` seconds."""
    found: asyncio.Future[Envelope[Any]] = asyncio.get_running_loop().create_future()

    async def take(msg: Any) -> None:
        try:
            envelope = parse_event(msg.data)
        except (ValueError, ValidationError):
            return  # not an event of ours: not the answer
        if answers(envelope, request_id) and not found.done():
            found.set_result(envelope)

    js = nc.jetstream()
    subscriptions = [
        await js.subscribe(
            subject,
            cb=take,
            stream=subjects.events_stream.name,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        for subject in (
            subjects.refusal(request_id),
            subjects.of(ReleasePlanned, release_id),
            subjects.of(ReleaseRejected, release_id),
        )
    ]
    try:
        return await asyncio.wait_for(found, timeout)
    except TimeoutError:
        return None
    finally:
        for subscription in subscriptions:
            await subscription.unsubscribe()


async def _release_and_watch(
    nc: Client, subjects: Subjects, release_id: str, request_id: str
) -> int:
    """Follow the release only once the planner said it is this request's."""
    answer = await answer_to(nc, subjects, release_id, request_id, ANSWER_SECONDS)
    if answer is None:
        print(f"no answer to request {request_id} within {ANSWER_SECONDS:g}s: is the planner up?")
        return 2
    if isinstance(answer.data, RequestRefused):
        print(f"request refused, nothing changed: {'; '.join(answer.data.reasons)}")
        return 1
    return await _watch(nc, subjects, release_id, 0)


def print_event(envelope: Envelope[Any]) -> None:
    for line in render.event_line(envelope):
        print(line, flush=True)


def jaeger_ui() -> str:
    return os.environ.get("JAEGER_UI_URL") or render.DEFAULT_JAEGER_UI


async def _stored_trace_parent(nc: Client, subjects: Subjects, release_id: str) -> str:
    try:
        kv = await nc.jetstream().key_value(subjects.releases_bucket)
    except BucketNotFoundError:
        return ""
    versioned = await ReleaseStore(kv).get(release_id)
    return versioned.state.trace_parent if versioned is not None else ""


async def _watch(nc: Client, subjects: Subjects, release_id: str, give_up_after: float) -> int:
    """Exit 0 when the release succeeded, 1 when it ended otherwise, 2 when we gave up."""

    def print_trace(traceparent: str) -> None:
        if link := render.trace_link(traceparent, jaeger_ui()):
            print(f"trace: {link}", flush=True)

    stored = await _stored_trace_parent(nc, subjects, release_id)
    if stored:
        print_trace(stored)
    final = await follow_release(
        nc,
        subjects,
        release_id,
        print_event,
        give_up_after,
        on_trace=None if stored else print_trace,
    )
    if final is None:
        print(f"stopped watching after {give_up_after:g}s; the release goes on")
        return 2
    return 0 if isinstance(final.data, ReleaseSucceeded) else 1


async def _status(nc: Client, subjects: Subjects, include_finished: bool) -> int:
    try:
        kv = await nc.jetstream().key_value(subjects.releases_bucket)
    except BucketNotFoundError:
        print("no releases yet (the services have not started on this NATS and prefix)")
        return 0
    releases = sorted(
        (v.state for v in await ReleaseStore(kv).all()), key=lambda state: state.created_at
    )
    shown = [state for state in releases if include_finished or not state.status.terminal]
    if not shown:
        print("no release in flight" + ("" if include_finished else " (--all shows finished)"))
    now = datetime.now(UTC)
    for state in shown:
        print("\n".join(render.status_lines(state, now, jaeger_ui())))
    store = ReleaseStore(kv)
    by_id: dict[str, ReleaseState | None] = {state.release_id: state for state in releases}
    for group in sorted((v.state for v in await store.all_groups()), key=_created):
        if include_finished or not group.status.terminal:
            ids = [m.release_id for m in group.members]
            members = {rid: by_id.get(rid) for rid in ids}
            print("\n".join(render.group_lines(group, members, now, jaeger_ui())))
    for pipeline in sorted((v.state for v in await store.all_pipelines()), key=_created):
        if include_finished or not pipeline.status.terminal:
            stages = {s.release_id: by_id.get(s.release_id) for s in pipeline.stages}
            print("\n".join(render.pipeline_lines(pipeline, stages, now, jaeger_ui())))
    return 0


def _created(state: GroupState | PipelineState) -> datetime:
    return state.created_at


async def _deadletters(nc: Client, subjects: Subjects, last: int) -> int:
    """Print the newest dead letters: which consumer gave up, after how many tries, and why."""
    js = nc.jetstream()
    stream = subjects.deadletter_stream.name
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        print(f"no dead-letter stream {stream} (the services have not started with this prefix)")
        return 0
    first = max(info.state.first_seq, info.state.last_seq - last + 1)
    if info.state.messages == 0:
        print("no dead letters")
        return 0
    for sequence in range(first, info.state.last_seq + 1):
        try:
            message = await js.get_msg(stream, sequence)
        except NotFoundError:
            continue  # expired or deleted
        envelope = parse_event(message.data or b"")
        for line in render.event_line(envelope):
            print(f"#{sequence} {line}")
    return 0


def nats_authorization(subjects: Subjects, keys: Sequence[str]) -> str:
    """The ``authorization`` block for a NATS server configuration (NATS reads JSON)."""
    users: dict[str, str] = {}
    for given in keys:
        identity, _, key = given.partition("=")
        if identity not in IDENTITIES:
            raise CliError(f"--key {given!r}: no identity {identity!r}; one of {IDENTITIES}")
        if not re.fullmatch(r"U[A-Z2-7]{55}", key):
            raise CliError(f"--key {given!r}: a public user NKey is U and 55 base32 characters")
        users[identity] = key
    if not users:
        raise CliError("name at least one identity's public NKey with --key IDENTITY=U...")
    block = authorization(users, subjects)
    return f"authorization: {json.dumps(block, indent=2)}"


async def run(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    subjects = Subjects(args.prefix)
    if args.command == "nats-authorization":
        print(nats_authorization(subjects, args.key))
        return 0
    nc = await _connect(args.nats)
    try:
        if args.command == "release":
            release_id, request = _release_request(args)
            request_id = await _publish(nc, subjects, request, release_id)
            print(f"requested release {release_id} of {request.target.key()} to {args.image}")
            if not args.watch:
                print(f"follow it with: canaryflow watch {release_id}")
                return 0
            return await _release_and_watch(nc, subjects, release_id, request_id)
        if args.command == "status":
            return await _status(nc, subjects, args.all)
        if args.command == "deadletters":
            return await _deadletters(nc, subjects, args.last)
        if args.command == "watch":
            return await _watch(nc, subjects, args.release_id, args.timeout)
        event = operator_command(args)
        key = signing_key(args.key) if args.key else None
        await _publish(nc, subjects, event, args.release_id, key)
        signed = " signed" if key is not None else ""
        print(f"{args.command} sent{signed} for {args.release_id} (by {args.by})")
        return 0
    finally:
        await nc.drain()


def main(argv: Sequence[str] | None = None) -> None:
    try:
        code = asyncio.run(run(argv))
    except CliError as error:
        print(f"canaryflow: {error}", file=sys.stderr)
        code = 2
    except ValidationError as error:
        for problem in error.errors():
            where = ".".join(str(part) for part in problem["loc"])
            print(
                f"canaryflow: {where}: {problem['msg']} (got {problem['input']!r})",
                file=sys.stderr,
            )
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
