"""Which ReleasePolicy governs a Deployment (pure: ``kube.read_policies`` reads them).

The planner reads it to plan a release; the executor reads it again before every write,
because a policy is what makes a target canaryflow's to change: a target no policy governs
is never written, whatever a command on the bus says. One reading, one choice of policy, so
both services always agree on which policy (if any) governs a target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from canaryflow_contracts.policy import ReleasePolicySpec


@dataclass(frozen=True)
class PolicyObject:
    """A ReleasePolicy as stored, before its spec is parsed (it may be invalid)."""

    name: str
    spec: dict[str, Any]


@dataclass(frozen=True)
class Governing:
    """The policy that governs a target, or every reason none does."""

    name: str
    spec: ReleasePolicySpec | None
    problems: list[str]


def governing(namespace: str, deployment: str, policies: list[PolicyObject]) -> Governing:
    """The one valid policy whose targetRef is ``deployment``; pure."""
    candidates = [p for p in policies if p.spec.get("targetRef") == deployment]
    if not candidates:
        return Governing(
            "",
            None,
            [
                f"no ReleasePolicy in namespace {namespace} has targetRef {deployment!r}: "
                "a Deployment without a policy is not released"
            ],
        )
    if len(candidates) > 1:
        names = ", ".join(sorted(p.name for p in candidates))
        return Governing(
            "", None, [f"several ReleasePolicies target {deployment!r} ({names}); keep one"]
        )
    policy = candidates[0]
    try:
        return Governing(policy.name, ReleasePolicySpec.model_validate(policy.spec), [])
    except ValidationError as error:
        problems = "; ".join(error_text(e) for e in error.errors())
        return Governing(
            policy.name, None, [f"ReleasePolicy {namespace}/{policy.name} is invalid: {problems}"]
        )


def error_text(error: Any) -> str:
    """One pydantic error as a reason a person can act on, naming its field."""
    location = ".".join(str(part) for part in error.get("loc", ())) or "spec"
    if error.get("type") == "string_pattern_mismatch":
        # The pattern itself (a long regular expression) helps nobody reading a rejection.
        what = "a well-formed image reference" if location.endswith("image") else "well formed"
        return f"{location}: {error.get('input')!r} is not {what}"
    return f"{location}: {error.get('msg', 'invalid')}"
