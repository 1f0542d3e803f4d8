"""ReleasePolicy: how a platform team wants one Deployment released.

It is a namespaced custom resource (group canaryflow.io, version v1alpha1); its CRD in
deploy/crds/ is generated from these models, so the API server validates exactly what the
planner reads. Field names are camelCase on the wire, as Kubernetes users expect.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from canaryflow_contracts.identifiers import DNS_SUBDOMAIN_PATTERN

GROUP = "canaryflow.io"
VERSION = "v1alpha1"
KIND = "ReleasePolicy"
PLURAL = "releasepolicies"


class _Spec(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class Step(_Spec):
    weight: int = Field(ge=1, le=100, description="Canary share of traffic in percent.")
    hold_seconds: float = Field(ge=0, le=86400, description="How long the step is analysed.")


class MetricTemplate(StrEnum):
    """Built-in queries the metrics-watcher knows; ``query`` allows any other PromQL."""

    ERROR_RATE = "error-rate"
    P99_LATENCY = "p99-latency"
    REQUEST_RATE = "request-rate"


class MetricRule(_Spec):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=63)
    template: MetricTemplate | None = None
    query: str | None = Field(
        default=None,
        description=(
            "Raw PromQL. Placeholders {namespace}, {service}, {version}, {track} and {window} "
            "are filled in for each measured version."
        ),
    )
    max: float | None = Field(default=None, description="Fail when the canary's value is above.")
    min: float | None = Field(default=None, description="Fail when the canary's value is below.")

    @model_validator(mode="after")
    def _one_source_and_a_threshold(self) -> Self:
        if (self.template is None) == (self.query is None):
            raise ValueError(f"metric {self.name!r}: set exactly one of template or query")
        if self.max is None and self.min is None:
            raise ValueError(f"metric {self.name!r}: set max, min or both")
        return self


class Analysis(_Spec):
    interval_seconds: float = Field(default=5, ge=1, le=600, description="Time between ticks.")
    window_seconds: int = Field(default=30, ge=5, le=3600, description="PromQL range window.")
    min_requests: int = Field(
        default=50,
        ge=1,
        description="Below this many canary requests in the window the verdict is "
        "insufficient data, never a pass.",
    )
    metrics: list[MetricRule] = Field(min_length=1)


class Deadlines(_Spec):
    pod_ready_seconds: float = Field(default=120, ge=5, description="Canary pods Ready by then.")
    pause_seconds: float = Field(
        default=600, ge=10, description="A release paused for lack of data is rolled back after."
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

    @model_validator(mode="after")
    def _steps_increase_within_max(self) -> Self:
        weights = [step.weight for step in self.steps]
        if weights != sorted(set(weights)):
            raise ValueError(f"step weights must strictly increase, got {weights}")
        if weights[-1] > self.max_weight:
            raise ValueError(f"step weight {weights[-1]} exceeds maxWeight {self.max_weight}")
        return self

    @property
    def service_name(self) -> str:
        return self.service or self.target_ref
