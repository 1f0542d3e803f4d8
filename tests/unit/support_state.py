"""A valid ReleaseState for tests that need one and do not care about its details."""

from __future__ import annotations

from datetime import UTC, datetime

from canaryflow_contracts.events import PlannedStep, TargetRef, VersionSpec
from canaryflow_contracts.state import ReleaseState, ReleaseStatus


def sample_state(release_id: str = "rel-1") -> ReleaseState:
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    return ReleaseState(
        release_id=release_id,
        target=TargetRef(namespace="shop", name="web"),
        version=VersionSpec(image="registry.local/shop/web:v2"),
        stable_image="registry.local/shop/web:v1",
        policy="web",
        requested_by="tests",
        steps=[PlannedStep(index=0, weight=10, hold_seconds=5)],
        status=ReleaseStatus.APPLYING,
        phase_started_at=now,
        ready_deadline=now,
        created_at=now,
        updated_at=now,
    )
