"""ReleasePolicy: how a platform team wants one Deployment released.

It is a namespaced custom resource (group canaryflow.io, version v1alpha1); its CRD in
deploy/helm/canaryflow/crds/ is generated from these models, so the API server validates
exactly what the planner reads. Field names are camelCase on the wire, as Kubernetes users expect.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Self

from pydantic import ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel

from canaryflow_contracts.identifiers import DNS_SUBDOMAIN_PATTERN
from canaryflow_contracts.text import TextModel

GROUP = "canaryflow.io"
VERSION = "v1alpha1"
KIND = "ReleasePolicy"
PLURAL = "releasepolicies"


class _Spec(TextModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class Step(_Spec):
    weight: int = Field(ge=1, le=100, description="Canary share of traffic in percent.")
    hold_seconds: float = Field(ge=0, le=86400, description="How long the step is analysed.")


class MetricTemplate(StrEnum):
    """Built-in value queries the metrics-watcher knows (for ``metrics`` rules)."""

    ERROR_RATE = "error-rate"
    P99_LATENCY = "p99-latency"
    REQUEST_RATE = "request-rate"
    # The same, as the gateway (Traefik) saw each track's backend Service.
    GATEWAY_ERROR_RATE = "gateway-error-rate"
    GATEWAY_P99_LATENCY = "gateway-p99-latency"
    GATEWAY_REQUEST_RATE = "gateway-request-rate"


class CountTemplate(StrEnum):
    """Built-in count queries for canary-against-baseline comparisons."""

    ERRORS = "errors"  # 5xx responses out of requests
    LATENCY = "latency"  # the request-duration histogram
    CONVERSION = "conversion"  # purchases out of visits
    GATEWAY_ERRORS = "gateway-errors"  # 5xx out of requests, as the gateway counted them
    GATEWAY_LATENCY = "gateway-latency"  # the gateway's request-duration histogram


_NAME = r"^[a-z0-9][a-z0-9-]*$"
_PLACEHOLDERS = (
    "Placeholders {namespace}, {service}, {version}, {track} and {window} are filled in for "
    "each measured version."
)


class NamedTemplate(_Spec):
    """A platform team's own named query, usable by name like a built-in one.

    Either a value query (``query``, for ``metrics`` rules), a pair of cumulative counters
    (``events`` out of ``trials``, for rate comparisons) or a cumulative histogram
    (``buckets``, one series per ``le``, for distribution comparisons).
    """

    name: str = Field(pattern=_NAME, max_length=63)
    query: str | None = Field(default=None, description=f"A value query. {_PLACEHOLDERS}")
    events: str | None = Field(default=None, description="Cumulative count of events.")
    trials: str | None = Field(default=None, description="Cumulative count of trials.")
    buckets: str | None = Field(
        default=None, description="Cumulative histogram bucket counts, one series per le."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        kinds = [
            self.query is not None,
            self.events is not None or self.trials is not None,
            self.buckets is not None,
        ]
        if sum(kinds) != 1:
            raise ValueError(
                f"template {self.name!r}: set exactly one of query, events+trials or buckets"
            )
        if (self.events is None) != (self.trials is None):
            raise ValueError(f"template {self.name!r}: events and trials go together")
        return self


class MetricRule(_Spec):
    """An absolute guard on the canary's own value (e.g. error rate at most 5 %)."""

    name: str = Field(pattern=_NAME, max_length=63)
    template: str | None = Field(
        default=None,
        pattern=_NAME,
        description="A built-in (error-rate, p99-latency, request-rate) or a named template.",
    )
    query: str | None = Field(default=None, description=f"Raw PromQL. {_PLACEHOLDERS}")
    max: float | None = Field(
        default=None,
        description="Fail when the canary's value is above (for the error-rate templates: "
        "beyond chance at the window's requests, a one-sided binomial test at 1 %).",
    )
    min: float | None = Field(default=None, description="Fail when the canary's value is below.")

    @model_validator(mode="after")
    def _one_source_and_a_threshold(self) -> Self:
        if (self.template is None) == (self.query is None):
            raise ValueError(f"metric {self.name!r}: set exactly one of template or query")
        if self.max is None and self.min is None:
            raise ValueError(f"metric {self.name!r}: set max, min or both")
        return self


class Better(StrEnum):
    """Which way a compared metric should move for the canary to be no worse."""

    LOWER = "lower"
    HIGHER = "higher"


class _Counted(_Spec):
    """What a comparison counts: a named count template, or its own raw queries."""

    name: str = Field(pattern=_NAME, max_length=63)
    template: str | None = Field(
        default=None,
        pattern=_NAME,
        description="A built-in (errors, latency, conversion) or a named template.",
    )
    events: str | None = Field(default=None, description=f"Raw cumulative counter. {_PLACEHOLDERS}")
    trials: str | None = Field(default=None, description="Raw cumulative counter of trials.")
    buckets: str | None = Field(
        default=None, description="Raw cumulative histogram buckets, one series per le."
    )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        raw = [self.events is not None or self.trials is not None, self.buckets is not None]
        if (self.template is not None) + sum(raw) != 1:
            raise ValueError(
                f"{self.name!r}: set exactly one of template, events+trials or buckets"
            )
        if (self.events is None) != (self.trials is None):
            raise ValueError(f"{self.name!r}: events and trials go together")
        return self


class Comparison(_Counted):
    """Canary against the live baseline, by a sequential test (fails as soon as it is sure)."""

    better: Better = Field(default=Better.LOWER, description="Which direction is good.")
    min_effect: float | None = Field(
        default=None,
        ge=0.001,
        le=10,
        description="Relative change that matters (0.2 = 20 %). When set, a pass also needs "
        "the confidence interval to rule out a change this bad; otherwise the end of the hold "
        "is inconclusive.",
    )


class DropAction(StrEnum):
    ROLLBACK = "rollback"
    PAUSE = "pause"  # hold the release for a person's decision


class BusinessMetric(_Counted):
    """A business outcome (purchases per visit) whose lift is estimated with an interval."""

    better: Better = Field(default=Better.HIGHER, description="Which direction is good.")
    minimum_detectable_effect: float = Field(
        ge=0.001,
        le=10,
        description="Relative change the release must be able to rule out (0.1 = 10 %).",
    )
    on_drop: DropAction = Field(
        default=DropAction.ROLLBACK,
        description="A significant move in the bad direction: roll back, or pause for a person.",
    )

    @model_validator(mode="after")
    def _a_rate(self) -> Self:
        if self.buckets is not None:
            raise ValueError(f"business metric {self.name!r}: count events and trials, not buckets")
        return self


class OnVerdict(StrEnum):
    """What a verdict at the end of a step leads to."""

    CONTINUE = "continue"
    EXTEND = "extend"
    PAUSE = "pause"
    ROLLBACK = "rollback"


class VerdictPolicy(_Spec):
    inconclusive: OnVerdict = Field(
        default=OnVerdict.EXTEND,
        description="Enough data, nothing failed, but not everything could be settled.",
    )
    insufficient_data: OnVerdict = Field(
        default=OnVerdict.PAUSE, description="Below the minimum sample: never continue."
    )
    max_extensions: int = Field(
        default=1, ge=0, le=10, description="How often a step's hold may be extended."
    )

    @model_validator(mode="after")
    def _never_continue_without_data(self) -> Self:
        if self.insufficient_data is OnVerdict.CONTINUE:
            raise ValueError("insufficientData may not continue: missing data is never a pass")
        return self


class ProviderKind(StrEnum):
    PROMETHEUS = "prometheus"
    HTTP_JSON = "http-json"


class ProviderRef(_Spec):
    """Where to ask, when not the metrics-watcher's default Prometheus."""

    type: ProviderKind = ProviderKind.PROMETHEUS
    address: str = Field(
        min_length=1,
        max_length=2048,
        description="Base URL (Prometheus) or URL template with {query} (http-json).",
    )
    value_path: str = Field(
        default="value", description="http-json: dotted path to the number in the answer."
    )
    series_path: str = Field(
        default="series",
        description="http-json: dotted path to a list of {labels: {...}, value: n}.",
    )


class Analysis(_Spec):
    interval_seconds: float = Field(default=5, ge=1, le=600, description="Time between ticks.")
    window_seconds: int = Field(default=30, ge=5, le=3600, description="PromQL range window.")
    min_requests: int = Field(
        default=50,
        ge=1,
        description="Below this many canary (and baseline) requests the verdict is "
        "insufficient data, never a pass.",
    )
    alpha: float = Field(
        default=0.01,
        ge=1e-6,
        le=0.2,
        description="False-positive rate of the sequential comparisons (any number of looks).",
    )
    metrics: list[MetricRule] = Field(default_factory=list)
    compare: list[Comparison] = Field(
        default_factory=list, description="Canary against the live baseline."
    )
    business: list[BusinessMetric] = Field(default_factory=list)
    templates: list[NamedTemplate] = Field(
        default_factory=list, description="Named queries rules can refer to."
    )
    verdicts: VerdictPolicy = Field(default_factory=VerdictPolicy)
    provider: ProviderRef | None = None

    @model_validator(mode="after")
    def _something_to_judge(self) -> Self:
        if not (self.metrics or self.compare or self.business):
            raise ValueError("analysis needs at least one of metrics, compare or business")
        names = [
            *(rule.name for rule in self.metrics),
            *(rule.name for rule in self.compare),
            *(rule.name for rule in self.business),
        ]
        if len(names) != len(set(names)):
            raise ValueError(f"metric names must be unique, got {names}")
        return self


class Deadlines(_Spec):
    pod_ready_seconds: float = Field(default=120, ge=5, description="Canary pods Ready by then.")
    pause_seconds: float = Field(
        default=600, ge=10, description="A release paused for lack of data is rolled back after."
    )


class InFlightLimits(_Spec):
    """How many releases may be in flight at once where this policy's target is released:
    a request beyond either limit is rejected with the count and the limit."""

    namespace: int | None = Field(
        default=None, ge=1, le=10000, description="In this namespace, this release included."
    )
    cluster: int | None = Field(
        default=None, ge=1, le=100000, description="In the whole cluster, this release included."
    )


class Resources(_Spec):
    """Requests and limits of a container, in Kubernetes quantities (``cpu: 250m``)."""

    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)


class ImageRules(_Spec):
    """Which images a target may run: a request or command outside them is refused.

    A prefix matches on a path boundary: ``registry.example.com/shop`` allows
    ``registry.example.com/shop/web:v2`` and ``registry.example.com/shop:v2``, never
    ``registry.example.com/shop-evil/web``. Images are compared as written (no registry
    defaulting), so list them the way releases name them.
    """

    allowed_prefixes: list[str] = Field(
        default_factory=list,
        max_length=50,
        description="An image must start with one of these (a registry, a repository path or "
        "a whole repository). Empty: any image.",
    )
    require_digest: bool = Field(
        default=False,
        description="The image must be pinned by digest (@sha256:...), so the version canaried "
        "is exactly the version built and tested.",
    )

    def refusal(self, image: str) -> str | None:
        """Why ``image`` may not run on this target, or None when it may."""
        problems = []
        if self.allowed_prefixes and not any(
            _within(image, prefix) for prefix in self.allowed_prefixes
        ):
            problems.append(f"is not under any allowed prefix ({', '.join(self.allowed_prefixes)})")
        if self.require_digest and "@sha256:" not in image:
            problems.append("is not pinned by digest (@sha256:...), which the policy requires")
        return f"image {image!r} " + " and ".join(problems) if problems else None


def _within(image: str, prefix: str) -> bool:
    if not prefix or not image.startswith(prefix):
        return False
    return len(image) == len(prefix) or prefix.endswith("/") or image[len(prefix)] in "/:@"


class OperatorAction(StrEnum):
    """What a person may do to a release in flight."""

    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    PROMOTE = "promote"
    SET_WEIGHT = "set-weight"
    OPEN_GATE = "open-gate"


OpensshEd25519Key = Annotated[
    str,
    StringConstraints(
        pattern=r"^ssh-ed25519 AAAAC3NzaC1lZDI1NTE5[A-Za-z0-9+/]+={0,2}( [^\n]*)?$", max_length=1024
    ),
]
"""An OpenSSH public key line of type ssh-ed25519 (the blob starts with its type's name)."""


class OperatorGrant(_Spec):
    subject: str = Field(
        min_length=1,
        max_length=256,
        description="Who: an identity (alice@example.com) or a pattern with * "
        "(*@sre.example.com; * alone is anyone).",
    )
    actions: list[OperatorAction] = Field(min_length=1)
    keys: list[OpensshEd25519Key] | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        description="OpenSSH ed25519 public keys (ssh-ed25519 AAAA... comment) of this "
        "subject: when given, a command is honoured only if one of them signed it (the CLI's "
        "--key); without, the command's declared actor is trusted.",
    )


class HookType(StrEnum):
    """When a hook runs. The confirm-* ones are gates: they wait to be opened."""

    PRE_ROLLOUT = "pre-rollout"  # before any traffic moves; a failure ends the release
    CONFIRM_ROLLOUT = "confirm-rollout"  # gate before any traffic moves
    ROLLOUT = "rollout"  # each step once in place, before its analysis (e.g. a load test)
    CONFIRM_PROMOTION = "confirm-promotion"  # gate before promotion
    POST_ROLLOUT = "post-rollout"  # after promotion; its outcome is reported, nothing waits
    ROLLBACK = "rollback"  # after a rollback; likewise

    @property
    def gate(self) -> bool:
        return self in (HookType.CONFIRM_ROLLOUT, HookType.CONFIRM_PROMOTION)


class GateExpiry(StrEnum):
    """What a gate nobody opened before its deadline means."""

    ROLLBACK = "rollback"
    CONTINUE = "continue"


class Hook(_Spec):
    name: str = Field(pattern=_NAME, max_length=63)
    type: HookType
    url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://",
        description="Called with an HTTP POST (2xx: passed). Absent: the hook is the "
        "RunHook event on NATS, answered by another system with HookCompleted. Gates have "
        "none: a person (canaryflow open-gate) or a system (OpenGate) opens them.",
    )
    timeout_seconds: float = Field(default=10, gt=0, le=300, description="Per HTTP attempt.")
    retries: int = Field(default=2, ge=0, le=10, description="HTTP attempts after the first.")
    deadline_seconds: float = Field(
        default=600,
        ge=1,
        le=7 * 86400,
        description="A gate waits this long to be opened; a NATS hook this long for its answer.",
    )
    on_expiry: GateExpiry = Field(
        default=GateExpiry.ROLLBACK, description="A gate not opened in time: roll back or go on."
    )
    metadata: dict[str, str] = Field(default_factory=dict, description="Sent with the hook.")

    @model_validator(mode="after")
    def _gates_have_no_url(self) -> Self:
        if self.type.gate and self.url is not None:
            raise ValueError(f"hook {self.name!r}: a {self.type.value} gate is opened, not called")
        return self


class NotifyOn(StrEnum):
    """What a person hears about: a release starting, waiting, ending, or a refused command."""

    STARTED = "started"
    PAUSED = "paused"
    WAITING = "waiting"
    ROLLING_BACK = "rolling-back"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled-back"
    FAILED = "failed"
    REFUSED = "refused"


class Notify(_Spec):
    url: str = Field(
        max_length=2048,
        pattern=r"^https?://",
        description="A webhook; the payload is a Slack incoming-webhook message (text, blocks) "
        "with the event's data in metadata.event_payload for other receivers.",
    )
    on: list[NotifyOn] = Field(default_factory=list, description="What to send; empty: everything.")


class Sticky(_Spec):
    """Keep each user on the version they were first sent to, by a cookie (Flagger's
    sessionAffinity). A step's weight is then the share of **new** sessions: returning users
    stay where they are until the release ends, and are moved to stable at a rollback."""

    cookie_name: str = Field(
        default="canaryflow-sticky",
        pattern=r"^[A-Za-z0-9!#$%&'*+.^_|~-]+$",
        max_length=128,
        description="Name of the cookie the gateway sets.",
    )
    max_age_seconds: int | None = Field(
        default=None,
        ge=1,
        le=30 * 86400,
        description="Cookie lifetime; absent: a session cookie (until the browser closes).",
    )


class HeaderMatch(_Spec):
    name: str = Field(pattern=r"^[A-Za-z0-9-]+$", max_length=256, description="Header name.")
    exact: str | None = Field(
        default=None, pattern=r"^[^`\r\n]*$", max_length=1024, description="The exact value."
    )
    regex: str | None = Field(
        default=None,
        pattern=r"^[^`\r\n]*$",
        max_length=1024,
        description="A regular expression (RE2) the value must match; a cookie is matched "
        "as the Cookie header, e.g. '(^|; )canary=always(;|$)'.",
    )

    @model_validator(mode="after")
    def _one_way(self) -> Self:
        if (self.exact is None) == (self.regex is None):
            raise ValueError(f"header {self.name!r}: set exactly one of exact or regex")
        return self


class RouteMatch(_Spec):
    """Requests that carry every one of these headers go to the canary, whatever the weight."""

    headers: list[HeaderMatch] = Field(min_length=1, max_length=16)


class Traffic(_Spec):
    """How the canary's share of traffic is routed."""

    # A name, not an enum: adding a router must not change the contract; the planner and the
    # executor refuse a name they do not know, listing the ones they do.
    router: str = Field(
        default="replica-ratio",
        pattern=_NAME,
        max_length=63,
        description="replica-ratio (the canary's share is its share of Ready pods), traefik "
        "(a weighted TraefikService named like the target) or gateway-api (weights on the "
        "HTTPRoute named like the target).",
    )
    sticky: Sticky | None = Field(
        default=None,
        description="Keep users on one version by cookie (traefik only). Absent: each request "
        "is routed on its own.",
    )
    match: list[RouteMatch] = Field(
        default_factory=list,
        max_length=16,
        description="Requests matching any entry always go to the canary (A/B routing); "
        "weighted routers only.",
    )


class ReleasePolicySpec(_Spec):
    target_ref: str = Field(
        pattern=DNS_SUBDOMAIN_PATTERN, description="Name of the Deployment in this namespace."
    )
    service: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="The Service in front of it (metrics are labelled by it); "
        "defaults to the Deployment's name.",
    )
    steps: list[Step] = Field(min_length=1, max_length=20)
    max_weight: int = Field(default=50, ge=1, le=100, description="No step goes beyond.")
    analysis: Analysis
    deadlines: Deadlines = Field(default_factory=Deadlines)
    canary_resources: Resources | None = Field(
        default=None,
        description="What the new version's container may use while it is a canary "
        "(replaces the version's own requests and limits until promotion).",
    )
    operators: list[OperatorGrant] | None = Field(
        default=None,
        description="Who may steer this target's releases, and how. Absent: anyone may pause "
        "or abort (both only make a release safer) and nothing else; present: exactly what "
        "it lists, for whom it lists.",
    )
    images: ImageRules | None = Field(
        default=None,
        description="Which images this target may run (registries, digests). Absent: any.",
    )
    hooks: list[Hook] = Field(default_factory=list, description="Webhooks, bus hooks and gates.")
    notify: list[Notify] = Field(
        default_factory=list, description="Where people hear about this target's releases."
    )
    traffic: Traffic = Field(
        default_factory=Traffic,
        description="Which router splits traffic, sticky sessions and header matches.",
    )
    limits: InFlightLimits | None = Field(
        default=None,
        description="At most this many releases in flight per namespace and per cluster. "
        "Absent: no limit beyond one release per Deployment.",
    )

    @model_validator(mode="after")
    def _steps_increase_within_max(self) -> Self:
        weights = [step.weight for step in self.steps]
        if weights != sorted(set(weights)):
            raise ValueError(f"step weights must strictly increase, got {weights}")
        if weights[-1] > self.max_weight:
            raise ValueError(f"step weight {weights[-1]} exceeds maxWeight {self.max_weight}")
        names = [hook.name for hook in self.hooks]
        if len(names) != len(set(names)):
            raise ValueError(f"hook names must be unique, got {names}")
        return self

    @property
    def service_name(self) -> str:
        return self.service or self.target_ref
