"""NATS subjects and JetStream resources, derived from one prefix.

Subjects put intent first and identifiers last: ``<prefix>.<domain>.<name>.v<N>.<release_id>``,
so ``canaryflow.release.*.v1.>`` follows every release's outcome and ``canaryflow.*.*.*.rel-42``
follows one release. The prefix exists so that tests (and several installations sharing one
NATS) get their own streams, consumers and KV bucket without colliding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from canaryflow_contracts.envelope import EventData
from canaryflow_contracts.identifiers import request_token

DEFAULT_PREFIX = "canaryflow"
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")

# Events are kept a week: long enough to replay or audit a release, bounded for the disk.
EVENT_RETENTION_SECONDS = 7 * 24 * 3600
# Nats-Msg-Id duplicates are dropped within this window.
DUPLICATE_WINDOW_SECONDS = 120.0


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    max_age_seconds: float
    duplicate_window_seconds: float
    description: str


@dataclass(frozen=True)
class Subjects:
    """Every subject, stream and bucket name of one canaryflow installation."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not _PREFIX_RE.match(self.prefix):
            raise ValueError(
                f"subject prefix {self.prefix!r} must be a lower-case NATS token "
                "(letters, digits, '-' or '_', starting with a letter, at most 32 chars)"
            )

    @property
    def _upper(self) -> str:
        return re.sub(r"[^A-Z0-9]", "_", self.prefix.upper())

    def of(self, event: type[EventData], release_id: str) -> str:
        """The subject one event of ``release_id`` is published on."""
        return f"{self.prefix}.{event.subject_stem()}.{release_id}"

    def refusal(self, request_id: str) -> str:
        """Where the refusal of the request whose envelope id is ``request_id`` is published."""
        return f"{self.prefix}.request.refused.v1.{request_token(request_id)}"

    def requests(self) -> tuple[str, ...]:
        """Filters for every subject under the public request prefix, the grammar's and all
        the others (``>`` needs a token after the prefix, so the prefix itself is apart)."""
        return (f"{self.prefix}.release.requested.>", f"{self.prefix}.release.requested")

    def release_in(self, event: type[EventData], subject: str) -> str | None:
        """The release id ``subject`` names for ``event``; None when it breaks the grammar.

        The grammar is ``<prefix>.<domain>.<name>.v<N>.<release id>``: exactly one token after
        the version, whatever it holds (whether that is a valid release id is checked apart,
        so that a refusal can say which rule was broken).
        """
        head = f"{self.prefix}.{event.subject_stem()}."
        token = subject[len(head) :] if subject.startswith(head) else ""
        return token if token and "." not in token else None

    def every(self, event: type[EventData]) -> str:
        """The filter that matches this event type for every release."""
        return f"{self.prefix}.{event.subject_stem()}.*"

    def release(self, release_id: str) -> str:
        """The filter that matches every event of one release."""
        return f"{self.prefix}.*.*.*.{release_id}"

    @staticmethod
    def release_id_of(subject: str) -> str:
        return subject.rsplit(".", 1)[-1]

    @property
    def events_stream(self) -> StreamSpec:
        return StreamSpec(
            name=f"{self._upper}_EVENTS",
            subjects=tuple(
                f"{self.prefix}.{domain}.>"
                for domain in (
                    "release",
                    "phase",
                    "analysis",
                    "promotion",
                    "rollback",
                    "operator",
                    "hook",
                    "command",
                    "request",
                    "group",
                    "pipeline",
                )
            ),
            max_age_seconds=EVENT_RETENTION_SECONDS,
            duplicate_window_seconds=DUPLICATE_WINDOW_SECONDS,
            description="Every canaryflow release event and command.",
        )

    @property
    def deadletter_stream(self) -> StreamSpec:
        return StreamSpec(
            name=f"{self._upper}_DEADLETTER",
            subjects=(f"{self.prefix}.deadletter.>",),
            max_age_seconds=4 * EVENT_RETENTION_SECONDS,
            duplicate_window_seconds=DUPLICATE_WINDOW_SECONDS,
            description="Messages a service gave up on after bounded redeliveries, for operators.",
        )

    @property
    def releases_bucket(self) -> str:
        """JetStream KV bucket holding each release's state, written with compare-and-set."""
        return f"{self._upper}_RELEASES"

    @property
    def analyses_bucket(self) -> str:
        """JetStream KV bucket holding each analysis's progress, so any replica can continue it."""
        return f"{self._upper}_ANALYSES"

    def consumer(self, service: str, handler: str) -> str:
        """Durable consumer name: short and alphanumeric, as NATS recommends."""
        return re.sub(r"[^A-Za-z0-9_-]", "_", f"{service}_{handler}")
