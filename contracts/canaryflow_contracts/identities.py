"""Who may say what on the bus: one NATS identity per service, one for systems that request
releases, one for operators.

NATS checks every publish and every subscription against the permissions of the connection's
user, so with these in the server's configuration a service can publish only the events the
catalogue says it publishes: a metrics-watcher (or anyone holding its key) cannot publish an
``ApplyPhase``, a requester cannot publish a verdict. The services check each command against
the release it belongs to as well (issue 19); this is the layer below, the server's.

What each identity may do, besides publishing its events:
- a service reads the release state (the KV bucket), binds durable consumers of the events
  stream and acknowledges their messages, copies a message it gives up on to the dead-letter
  stream, reads the events stream's messages (to dead-letter one named by an advisory), and
  creates or updates the installation's streams and buckets (every replica converges them at
  start; none may delete or purge one);
- the planner alone writes release state; the executor writes only its side-effect ledger's
  keys (``notified.…``, ``hook.…``); the metrics-watcher alone writes analysis progress;
- the requester publishes release requests and reads the events (live, or through a
  server-named consumer of the events stream); the operator (the CLI) publishes release
  requests and operator commands, reads the events, the dead letters and the release state;
- replies come to an inbox only that identity may read (``_INBOX_<identity>.>``; the clients
  set that prefix), so no identity reads another's answers.

Where NATS cannot say more: permissions match whole tokens, and a consumer's name is one
token, so a service may bind any consumer of the events stream, not only its own (it still
cannot publish what it may not). Per-consumer isolation needs one NATS account per service
with stream exports; not done.

``prefix=None`` writes permissions for any installation prefix (every stream and bucket name
becomes ``*``): the local stack serves one prefix per test. That form is wider (e.g. the
requester's server-named consumer may be of any stream, the release bucket's too); an
installation names its prefix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from canaryflow_contracts.envelope import EventData
from canaryflow_contracts.events import (
    AbortRelease,
    AnalysisVerdict,
    ApplyPhase,
    CommandRefused,
    GroupPlanned,
    GroupPromoteMember,
    GroupRejected,
    GroupRequested,
    GroupRolledBack,
    GroupStatusChanged,
    GroupSucceeded,
    HookCompleted,
    OpenGate,
    OpenPipelineGate,
    OperatorCommandRefused,
    PauseRelease,
    PhaseFailed,
    PhaseReached,
    PipelinePlanned,
    PipelineRequested,
    PipelineStatusChanged,
    PipelineStopped,
    PipelineSucceeded,
    PromoteNow,
    PromotionCompleted,
    ReleaseFailed,
    ReleasePlanned,
    ReleaseRejected,
    ReleaseRequested,
    ReleaseRolledBack,
    ReleaseStatusChanged,
    ReleaseSucceeded,
    RequestAnalysis,
    RequestPromotion,
    RequestRefused,
    ResumeRelease,
    RollbackCompleted,
    RollbackFailed,
    RollbackRequested,
    RunHook,
    SetWeight,
)
from canaryflow_contracts.subjects import Subjects

SERVICES = ("planner", "executor", "metrics-watcher", "rollback")
IDENTITIES = (*SERVICES, "requester", "operator")

# The events each identity publishes (a unit test holds this to the catalogue's publishers).
PUBLISHES: Mapping[str, tuple[type[EventData], ...]] = {
    "planner": (
        RequestRefused,
        ReleasePlanned,
        ReleaseRejected,
        ReleaseStatusChanged,
        ReleaseSucceeded,
        ReleaseRolledBack,
        ReleaseFailed,
        ApplyPhase,
        RequestAnalysis,
        RequestPromotion,
        RunHook,
        RollbackRequested,
        OperatorCommandRefused,
        # A release group's members are requested by the planner, and its transitions told.
        ReleaseRequested,
        GroupPlanned,
        GroupRejected,
        GroupStatusChanged,
        GroupPromoteMember,
        GroupSucceeded,
        GroupRolledBack,
        PipelinePlanned,
        PipelineStatusChanged,
        PipelineSucceeded,
        PipelineStopped,
    ),
    "executor": (
        PhaseReached,
        PhaseFailed,
        PromotionCompleted,
        HookCompleted,
        CommandRefused,
        RollbackRequested,
    ),
    "metrics-watcher": (AnalysisVerdict,),
    "rollback": (RollbackCompleted, RollbackFailed, OperatorCommandRefused, CommandRefused),
    "requester": (ReleaseRequested, GroupRequested, PipelineRequested),
    "operator": (
        ReleaseRequested,
        GroupRequested,
        PipelineRequested,
        OpenPipelineGate,
        PauseRelease,
        ResumeRelease,
        AbortRelease,
        PromoteNow,
        SetWeight,
        OpenGate,
        RollbackRequested,
    ),
}

# The first token after the prefix of every subject in the events stream.
_DOMAINS = tuple(subject.split(".")[1] for subject in Subjects().events_stream.subjects)

# Keys of the release bucket the executor's side-effect ledger writes (executor/ledger.py).
LEDGER_KEY_KINDS = ("notified", "hook")

# The first token of every key the metrics-watcher writes in its analyses bucket
# (metrics_watcher/analysis.py). Granted by that token, so that written for any prefix
# (``$KV.*.analysis.>``) it still cannot reach a release bucket's ``release.<id>`` keys.
ANALYSIS_KEY_KIND = "analysis"


def inbox_prefix(identity: str) -> str:
    """Where an identity's replies come: ``_INBOX_<identity>``, readable by it alone."""
    return f"_INBOX_{identity.replace('-', '_')}"


@dataclass(frozen=True)
class Permissions:
    """Subjects an identity may publish to and subscribe to (NATS ``allow`` lists)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def as_nats(self) -> dict[str, dict[str, list[str]]]:
        """The ``permissions`` block of a NATS user."""
        return {
            "publish": {"allow": list(self.publish)},
            "subscribe": {"allow": list(self.subscribe)},
        }


@dataclass(frozen=True)
class _Names:
    """An installation's names, or ``*`` for each when written for any prefix."""

    prefix: str
    events: str
    deadletter: str
    releases: str  # KV bucket
    analyses: str  # KV bucket

    @classmethod
    def of(cls, subjects: Subjects | None) -> _Names:
        if subjects is None:
            return cls("*", "*", "*", "*", "*")
        return cls(
            subjects.prefix,
            subjects.events_stream.name,
            subjects.deadletter_stream.name,
            subjects.releases_bucket,
            subjects.analyses_bucket,
        )

    def kv(self, bucket: str) -> str:
        """A bucket's stream: ``KV_<bucket>``, or ``*`` for any (a wildcard is a whole token:
        ``KV_*`` would name a stream called that)."""
        return "*" if bucket == "*" else f"KV_{bucket}"

    def event(self, event: type[EventData]) -> str:
        """Every release's subject of one event: ``<prefix>.<domain>.<name>.v<N>.*``."""
        return f"{self.prefix}.{event.subject_stem()}.*"

    def live_events(self) -> tuple[str, ...]:
        """Every event as it is published: the events stream's domains and the dead letters
        (not ``<prefix>.>``, which for ``*`` would match inboxes and JetStream's own)."""
        return (
            *(f"{self.prefix}.{domain}.>" for domain in _DOMAINS),
            f"{self.prefix}.deadletter.>",
        )

    def request(self) -> tuple[str, ...]:
        """Release requests: the grammar's subject and any other under the request prefix."""
        return (f"{self.prefix}.release.requested.>", f"{self.prefix}.release.requested")


def _kv_get(stream: str) -> list[str]:
    """Reading keys of a bucket (its stream ``KV_<bucket>``): direct gets, for buckets made
    beforehand with ``allow_direct``, as well as the stream's message get ours use."""
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
    ]


def _kv_list(stream: str) -> list[str]:
    """Listing a bucket's keys: a server-named consumer nats-py asks about, then lets expire."""
    return [
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.INFO.{stream}.*",
        f"$JS.FC.{stream}.>",
    ]


def _events_read(names: _Names) -> list[str]:
    """Reading the events stream through a server-named (ephemeral) consumer only: the create
    subject without a consumer name refuses a durable one, so no one takes a service's."""
    return [
        f"$JS.API.STREAM.INFO.{names.events}",
        f"$JS.API.CONSUMER.CREATE.{names.events}",
        f"$JS.API.CONSUMER.INFO.{names.events}.*",
        f"$JS.FC.{names.events}.>",
    ]


def _service(identity: str, names: _Names) -> tuple[list[str], list[str]]:
    events, releases = names.events, names.kv(names.releases)
    publish = [
        *(names.event(event) for event in PUBLISHES[identity]),
        f"{names.prefix}.deadletter.>",
        # Every replica converges the streams and the release bucket at start.
        *(
            f"$JS.API.STREAM.{action}.{stream}"
            for stream in (events, names.deadletter)
            for action in ("INFO", "CREATE", "UPDATE")
        ),
        f"$JS.API.STREAM.CREATE.{releases}",
        # Its durable consumers (named, with a filter): bound, converged, pulled, acknowledged.
        f"$JS.API.CONSUMER.INFO.{events}.*",
        f"$JS.API.CONSUMER.CREATE.{events}.*.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{events}.*",
        f"$JS.ACK.{events}.>",
        f"$JS.API.STREAM.MSG.GET.{events}",
        *_kv_get(releases),
    ]
    if identity in ("planner", "rollback"):  # their safety nets go over every release
        publish += _kv_list(releases)
    if identity == "planner":
        publish.append(f"$KV.{names.releases}.>")
    if identity == "executor":
        publish += [f"$KV.{names.releases}.{kind}.*" for kind in LEDGER_KEY_KINDS]
    if identity == "metrics-watcher":
        analyses = names.kv(names.analyses)
        publish += [
            f"$JS.API.STREAM.CREATE.{analyses}",
            *_kv_get(analyses),
            f"$KV.{names.analyses}.{ANALYSIS_KEY_KIND}.>",
        ]
    subscribe = [
        f"{inbox_prefix(identity)}.>",
        # The server's word that a message was never settled (runtime/bus.watch_exhausted).
        f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{events}.*",
    ]
    return publish, subscribe


def permissions(identity: str, subjects: Subjects | None = None) -> Permissions:
    """What ``identity`` may publish and subscribe to in the installation of ``subjects``
    (``None``: any installation's prefix)."""
    if identity not in IDENTITIES:
        raise ValueError(f"no NATS identity {identity!r}; there are {', '.join(IDENTITIES)}")
    names = _Names.of(subjects)
    if identity in SERVICES:
        publish, subscribe = _service(identity, names)
    else:
        publish = [
            *(
                subject
                for event in PUBLISHES[identity]
                for subject in (
                    names.request() if event is ReleaseRequested else (names.event(event),)
                )
            ),
            *_events_read(names),
        ]
        subscribe = [f"{inbox_prefix(identity)}.>", *names.live_events()]
        if identity == "operator":
            # `canaryflow status` reads the release state; `canaryflow deadletters` the letters.
            publish += [
                *_kv_get(names.kv(names.releases)),
                *_kv_list(names.kv(names.releases)),
                f"$JS.API.STREAM.INFO.{names.deadletter}",
                f"$JS.API.STREAM.MSG.GET.{names.deadletter}",
            ]
    return Permissions(tuple(dict.fromkeys(publish)), tuple(dict.fromkeys(subscribe)))


def authorization(
    users: Mapping[str, str], subjects: Subjects | None = None, admin: str | None = None
) -> dict[str, object]:
    """The NATS server's ``authorization`` block: ``users`` maps each identity to its public
    NKey (``U…``); ``admin``, a public NKey allowed everything (the local stack's tools)."""
    entries: list[dict[str, object]] = [
        {"nkey": key, "permissions": permissions(identity, subjects).as_nats()}
        for identity, key in users.items()
    ]
    if admin is not None:
        entries.append({"nkey": admin})
    return {"users": entries}


def identities_table() -> str:
    """The docs' table: each identity, the events it publishes and what else it may do."""
    lines = ["| identity | publishes | may also |", "|---|---|---|"]
    extra = {
        "planner": "write release state; read it; bind and ack its consumers; dead-letter",
        "executor": "write its side-effect ledger's keys only; read release state; bind and "
        "ack its consumers; dead-letter",
        "metrics-watcher": "write analysis progress; read release state; bind and ack its "
        "consumers; dead-letter",
        "rollback": "read release state; bind and ack its consumers; dead-letter",
        "requester": "read every event (live, or through a server-named consumer)",
        "operator": "read every event, the release state and the dead letters",
    }
    for identity in IDENTITIES:
        published = ", ".join(f"`{event.__name__}`" for event in PUBLISHES[identity])
        lines.append(
            f"| {identity} (`{inbox_prefix(identity)}`) | {published} | {extra[identity]} |"
        )
    return "\n".join(lines)
