"""What a rollback has to do to a target, decided from what the API shows: no I/O here.

The stable Deployment carries its own restore point (size and pod template from before the
release), so the decision needs nothing but the two Deployments. It is recomputed on every
attempt, which is what makes a replayed rollback find the work done and change nothing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from canaryflow.runtime.conventions import (
    ROLLING_BACK_ANNOTATION,
    release_of,
    restore_point_of,
    rolling_back,
)

Body = dict[str, Any]


@dataclass(frozen=True)
class RestorePlan:
    stable_body: Body | None
    """Written first (compare-and-set on its resourceVersion); None when stable is right."""
    full_size: int
    """Stable must be complete at this size before the canary is removed."""
    wait_for_stable: bool
    remove_canary: bool
    clear_restore_point: bool
    note: str
    canary_present: bool = False

    restores_stable: bool = False
    """Stable's template or size differed from its restore point."""

    @property
    def changes_something(self) -> bool:
        """Whether this attempt finds work to do (a replay after a full restore does not)."""
        return self.restores_stable or (self.remove_canary and self.canary_present)


def _size(deployment: Body) -> int:
    replicas = (deployment.get("spec") or {}).get("replicas")
    return int(replicas) if replicas is not None else 1


def plan_restore(
    release_id: str, stable: Body | None, canary: Body | None, baseline: Body | None = None
) -> RestorePlan:
    """The steps that return ``release_id``'s target to its recorded state.

    The canary and the live baseline go together (``remove_canary`` covers both): a
    baseline is never left behind, even when the canary is already gone.

    - No stable Deployment: only this release's canary can be removed.
    - A restore point of another release: a stale trigger; that release owns the target now.
    - No restore point: nothing was changed on stable; only the canary is removed.
    - Our restore point: put back its pod template (if it differs) and its size, and mark
      stable as the rollback's (``ROLLING_BACK_ANNOTATION``) in the same write, so that an
      executor still putting a step in place writes nothing to it after this read; wait for
      stable to be complete, then remove the canary and the restore point.
    Raises ``CorruptRestorePoint`` when the annotations cannot be read back.
    """
    ours = any(
        body is not None and release_of(body) in (None, release_id) for body in (canary, baseline)
    )
    if stable is None:
        return RestorePlan(
            None, 0, False, ours, False, "the target Deployment does not exist", ours
        )
    point = restore_point_of(stable)
    if point is not None and point.release_id not in ("", release_id):
        return RestorePlan(
            None,
            _size(stable),
            False,
            False,
            False,
            f"the target now carries release {point.release_id}'s restore point; left alone",
        )
    if point is None:
        note = "nothing recorded on stable; " + ("its canary removed" if ours else "no canary")
        return RestorePlan(None, _size(stable), False, ours, False, note, ours)
    template_differs = stable["spec"].get("template") != point.template
    size_differs = _size(stable) != point.replicas
    body: Body | None = None
    if template_differs or size_differs or not rolling_back(stable):
        body = copy.deepcopy(stable)
        body.pop("status", None)
        body["spec"]["template"] = copy.deepcopy(point.template)
        body["spec"]["replicas"] = point.replicas
        annotations = body["metadata"].setdefault("annotations", {})
        annotations[ROLLING_BACK_ANNOTATION] = release_id
    changes = [
        what
        for what, changed in (("pod template", template_differs), ("size", size_differs))
        if changed
    ]
    note = f"restored stable's {' and '.join(changes)}" if changes else "stable already restored"
    return RestorePlan(
        body, point.replicas, True, True, True, note, ours, template_differs or size_differs
    )
