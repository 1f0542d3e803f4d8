"""The workload conventions the executor and the rollback service share, as pure data.

What canaryflow writes on the Deployments it manages and reads back (labels, annotations,
names, the restore point) and how a rollout's readiness is read: no API call here, so the pure
decision modules can use them (the layers contract in pyproject.toml); ``kube`` does the calls.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from canaryflow_contracts.events import TargetRef

# Labels and annotations canaryflow puts on the objects it manages.
TRACK_LABEL = "canaryflow.io/track"  # stable | canary | baseline, on pods (Prometheus labels by it)


RELEASE_LABEL = "canaryflow.io/release-id"


MANAGED_BY = {"app.kubernetes.io/managed-by": "canaryflow"}


# On the stable Deployment while a release is in flight: what to restore on rollback.
STABLE_REPLICAS_ANNOTATION = "canaryflow.io/stable-replicas"


RESTORE_TEMPLATE_ANNOTATION = "canaryflow.io/restore-template"


RELEASE_ANNOTATION = "canaryflow.io/release-id"


def canary_name(target: TargetRef) -> str:
    return f"{target.name}-canary"


@dataclass(frozen=True)
class DeploymentReadiness:
    """What the API says about a Deployment's rollout, reduced to what we decide on."""

    exists: bool
    desired: int
    ready: int
    updated: int
    available: int
    settled: bool  # the controller has seen the latest spec

    @property
    def complete(self) -> bool:
        return (
            self.exists
            and self.settled
            and self.ready == self.desired
            and self.updated == self.desired
        )


def split_replicas(total: int, weight_percent: int) -> tuple[int, int]:
    """(stable, canary) replica counts giving the canary about ``weight_percent`` of traffic.

    The total stays the stable Deployment's original size, so the canary never costs more pods
    than the service already had; the canary gets at least one pod and stable keeps at least
    one until promotion.
    """
    if total < 2:
        raise ValueError(
            f"the replica-ratio strategy needs at least 2 replicas to split, the target has {total}"
        )
    canary = max(1, min(total - 1, round(total * weight_percent / 100)))
    return total - canary, canary


def readiness_of(deployment: dict[str, Any] | None) -> DeploymentReadiness:
    """``readiness`` for a Deployment read as JSON (or None when absent)."""
    if deployment is None:
        return DeploymentReadiness(False, 0, 0, 0, 0, True)
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    generation = (deployment.get("metadata") or {}).get("generation") or 0
    replicas = spec.get("replicas")
    return DeploymentReadiness(
        exists=True,
        desired=replicas if replicas is not None else 1,
        ready=status.get("readyReplicas") or 0,
        updated=status.get("updatedReplicas") or 0,
        available=status.get("availableReplicas") or 0,
        settled=(status.get("observedGeneration") or 0) >= generation,
    )


@dataclass(frozen=True)
class RestorePoint:
    """What the stable Deployment looked like before a release touched it.

    Kept on the stable Deployment itself (annotations), so the rollback service needs nothing
    but the cluster to restore it, even if every other service is down.
    """

    release_id: str
    replicas: int
    template: dict[str, Any]

    def annotations(self) -> dict[str, str]:
        return {
            RELEASE_ANNOTATION: self.release_id,
            STABLE_REPLICAS_ANNOTATION: str(self.replicas),
            RESTORE_TEMPLATE_ANNOTATION: json.dumps(self.template, sort_keys=True),
        }


# Set by the rollback service on stable (with its restore point) in the same compare-and-set
# write that restores it: from then on the executor writes nothing to stable for that release.
# Without it, an executor still putting a step in place could scale stable down after the
# rollback had checked it and before it cleared the restore point (make chaos, seed 11 run 6:
# an abort during step 0 left stable at 2 of 3 replicas, with nothing left to show why).
ROLLING_BACK_ANNOTATION = "canaryflow.io/rolling-back"

RESTORE_ANNOTATIONS = (
    RELEASE_ANNOTATION,
    STABLE_REPLICAS_ANNOTATION,
    RESTORE_TEMPLATE_ANNOTATION,
    ROLLING_BACK_ANNOTATION,
)


def rolling_back(deployment: dict[str, Any]) -> bool:
    """Whether the rollback service has taken stable over (``ROLLING_BACK_ANNOTATION``)."""
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    return ROLLING_BACK_ANNOTATION in annotations


class CorruptRestorePoint(ValueError):
    """The annotations are there but cannot be read back: a person must look."""


def restore_point_of(deployment: dict[str, Any]) -> RestorePoint | None:
    """The restore point recorded on a stable Deployment, or None when nothing is recorded."""
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    if STABLE_REPLICAS_ANNOTATION not in annotations:
        return None
    try:
        replicas = int(annotations[STABLE_REPLICAS_ANNOTATION])
        template = json.loads(annotations[RESTORE_TEMPLATE_ANNOTATION])
    except (KeyError, ValueError) as error:
        raise CorruptRestorePoint(f"unreadable restore annotations: {error}") from error
    if not isinstance(template, dict) or replicas < 0:
        raise CorruptRestorePoint("restore annotations hold no pod template or a negative size")
    return RestorePoint(annotations.get(RELEASE_ANNOTATION, ""), replicas, template)


def without_restore_point(deployment: dict[str, Any]) -> dict[str, Any] | None:
    """A copy of the Deployment with the restore annotations removed; None if it has none."""
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    if not any(key in annotations for key in RESTORE_ANNOTATIONS):
        return None
    body = copy.deepcopy(deployment)
    body["metadata"]["annotations"] = {
        key: value for key, value in annotations.items() if key not in RESTORE_ANNOTATIONS
    }
    return body


def release_of(deployment: dict[str, Any]) -> str | None:
    """The release id a canary Deployment was made for (its label), if any."""
    labels = (deployment.get("metadata") or {}).get("labels") or {}
    value = labels.get(RELEASE_LABEL)
    return str(value) if value else None


BASELINE_TRACK = "baseline"


def baseline_name(target: TargetRef) -> str:
    return f"{target.name}-baseline"
