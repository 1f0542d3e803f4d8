"""The live baseline: the stable version on fresh pods, as many as the canary, while it is judged.

Comparing a canary's fresh pods with stable pods that have run for days mixes the new version
with everything else that differs (warm caches, long-lived connections, pod age), so the
executor runs ``<name>-baseline`` beside the canary and the metrics-watcher compares the two.
Both ends of a release (promotion in the executor, rollback in the rollback service) remove
it, so its name and removal live here, shared like the canary's.
"""

from __future__ import annotations

from datetime import datetime

from kubernetes import client

from canaryflow.runtime import conventions, kube
from canaryflow.runtime.conventions import baseline_name
from canaryflow_contracts.events import TargetRef


async def remove_baseline(
    api: client.ApiClient,
    target: TargetRef,
    release_id: str,
    *,
    deadline: datetime,
    now: kube.Clock = kube.utc_now,
) -> bool:
    """Delete the target's baseline unless another release owns it; wait until it is gone."""
    baseline = await kube.call(kube.read_deployment, api, target.namespace, baseline_name(target))
    if baseline is None:
        return True
    owner = conventions.release_of(baseline)
    if owner not in (None, release_id):
        return True  # another release's baseline: a stale trigger must not touch it
    return await kube.remove_deployment(api, baseline, deadline=deadline, now=now)
