"""Kubernetes access and the workload conventions the executor and the rollback service share.

The ``kubernetes`` client is synchronous; every call goes through ``call`` so that it runs in a
worker thread and never blocks the event loop. Writes go through ``with_conflict_retry``: a 409
means someone wrote in between, so we re-read and re-apply our intent, which is idempotent.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from canaryflow_contracts.events import TargetRef

log = logging.getLogger(__name__)

T = TypeVar("T")

# Labels and annotations canaryflow puts on the objects it manages.
TRACK_LABEL = "canaryflow.io/track"  # stable | canary | baseline, on pods (simulator reads it)
RELEASE_LABEL = "canaryflow.io/release-id"
MANAGED_BY = {"app.kubernetes.io/managed-by": "canaryflow"}
# On the stable Deployment while a release is in flight: what to restore on rollback.
STABLE_REPLICAS_ANNOTATION = "canaryflow.io/stable-replicas"
RESTORE_TEMPLATE_ANNOTATION = "canaryflow.io/restore-template"
RELEASE_ANNOTATION = "canaryflow.io/release-id"

CONFLICT_RETRIES = 8


def canary_name(target: TargetRef) -> str:
    return f"{target.name}-canary"


def api_client(kubeconfig: str | None) -> client.ApiClient:
    """A client from the given kubeconfig, the default one, or the in-cluster account."""
    if kubeconfig:
        return cast(client.ApiClient, config.new_client_from_config(config_file=kubeconfig))
    try:
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException:
        return cast(client.ApiClient, config.new_client_from_config())


async def call(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))


async def with_conflict_retry(write: Callable[[], Any], what: str) -> Any:
    """Run ``write`` (which reads then writes) again on 409 Conflict, a bounded number of times."""
    for attempt in range(1, CONFLICT_RETRIES + 1):
        try:
            return await asyncio.to_thread(write)
        except ApiException as error:
            if error.status != 409 or attempt == CONFLICT_RETRIES:
                raise
            log.info("conflict writing %s (attempt %d), re-reading", what, attempt)
            await asyncio.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


def is_not_found(error: BaseException) -> bool:
    return isinstance(error, ApiException) and error.status == 404


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


def readiness(deployment: Any | None) -> DeploymentReadiness:
    """Read a V1Deployment (or None when absent) into a ``DeploymentReadiness``."""
    if deployment is None:
        return DeploymentReadiness(False, 0, 0, 0, 0, True)
    status = deployment.status
    generation = deployment.metadata.generation or 0
    observed = (status.observed_generation or 0) if status else 0
    return DeploymentReadiness(
        exists=True,
        desired=deployment.spec.replicas if deployment.spec.replicas is not None else 1,
        ready=(status.ready_replicas or 0) if status else 0,
        updated=(status.updated_replicas or 0) if status else 0,
        available=(status.available_replicas or 0) if status else 0,
        settled=observed >= generation,
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
