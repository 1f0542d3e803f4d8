"""The NATS permissions of each identity, derived from the catalogue (pure: no server).

The refusals by a real server are in tests/integration/test_nats_identities.py.
"""

from __future__ import annotations

import re

import pytest

from canaryflow_contracts import CATALOGUE, Subjects
from canaryflow_contracts.events import (
    AnalysisVerdict,
    ApplyPhase,
    DeadLetter,
    GroupRequested,
    PipelineRequested,
    ReleaseRequested,
    RollbackRequested,
)
from canaryflow_contracts.identities import (
    IDENTITIES,
    PUBLISHES,
    SERVICES,
    authorization,
    inbox_prefix,
    permissions,
)

SUBJECTS = Subjects("shop")
# Publisher texts of the catalogue that name no service but anyone of a kind.
_ANYONE = {
    "requester": ("any requester",),
    "operator": ("operator", "person", "any requester"),
}


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` one token, ``>`` one or more at the end."""
    want, have = pattern.split("."), subject.split(".")
    for index, token in enumerate(want):
        if token == ">":
            return len(have) > index
        if index >= len(have) or (token != "*" and token != have[index]):
            return False
    return len(want) == len(have)


def _may_publish(identity: str, subject: str, subjects: Subjects | None = SUBJECTS) -> bool:
    return any(_matches(p, subject) for p in permissions(identity, subjects).publish)


def test_each_identity_publishes_only_what_the_catalogue_says_it_publishes() -> None:
    publishers = {entry.event: entry.publisher for entry in CATALOGUE}
    for identity, events in PUBLISHES.items():
        for event in events:
            said = publishers[event]
            named = identity in said or any(kind in said for kind in _ANYONE.get(identity, ()))
            anyone = "any service" in said and identity in SERVICES
            assert named or anyone, f"{identity} publishes {event.__name__}; catalogue: {said!r}"


def test_every_event_a_service_or_person_publishes_has_an_identity_allowed_to() -> None:
    published = {event for events in PUBLISHES.values() for event in events}
    # Dead letters go to their own stream (every service may); hook answers and gates from
    # other systems need an identity of their own, which the installation adds.
    for entry in CATALOGUE:
        if entry.event is DeadLetter or "system" in entry.publisher:
            continue
        assert entry.event in published, f"no identity may publish {entry.event.__name__}"


def test_the_metrics_watcher_may_publish_a_verdict_and_not_an_apply_phase() -> None:
    assert _may_publish("metrics-watcher", SUBJECTS.of(AnalysisVerdict, "rel-1"))
    assert not _may_publish("metrics-watcher", SUBJECTS.of(ApplyPhase, "rel-1"))
    assert _may_publish("planner", SUBJECTS.of(ApplyPhase, "rel-1"))
    assert not _may_publish("planner", SUBJECTS.of(AnalysisVerdict, "rel-1"))


def test_a_requester_may_request_releases_and_groups_and_nothing_else() -> None:
    assert _may_publish("requester", SUBJECTS.of(ReleaseRequested, "rel-1"))
    assert _may_publish("requester", SUBJECTS.of(GroupRequested, "group-1"))
    assert _may_publish("requester", "shop.release.requested.anything.else")
    for entry in CATALOGUE:
        if entry.event not in (ReleaseRequested, GroupRequested, PipelineRequested):
            subject = SUBJECTS.of(entry.event, "rel-1")
            assert not _may_publish("requester", subject), subject
    # Nor write release state, nor acknowledge a service's messages, nor bind its consumer.
    for subject in (
        "$KV.SHOP_RELEASES.rel-1",
        "$JS.ACK.SHOP_EVENTS.executor_apply.1.2.3.4.5",
        "$JS.API.CONSUMER.CREATE.SHOP_EVENTS.executor_apply",
        "$JS.API.CONSUMER.DELETE.SHOP_EVENTS.executor_apply",
        "$JS.API.CONSUMER.MSG.NEXT.SHOP_EVENTS.executor_apply",
        "$JS.API.STREAM.DELETE.SHOP_EVENTS",
    ):
        assert not _may_publish("requester", subject), subject


def test_only_the_planner_writes_release_state_and_the_executor_only_its_ledger() -> None:
    state = "$KV.SHOP_RELEASES.rel-1"
    assert [i for i in IDENTITIES if _may_publish(i, state)] == ["planner"]
    assert _may_publish("executor", "$KV.SHOP_RELEASES.notified.abc123")
    assert _may_publish("executor", "$KV.SHOP_RELEASES.hook.abc123")
    progress = "$KV.SHOP_ANALYSES.analysis.rel-1.0.abcd1234"
    assert [i for i in IDENTITIES if _may_publish(i, progress)] == ["metrics-watcher"]


def test_written_for_any_prefix_no_one_but_the_planner_writes_a_release_key() -> None:
    """For any prefix every bucket is ``*``: the key's first token keeps the metrics-watcher's
    analyses and the executor's ledger away from release state."""
    for prefix in ("SHOP", "T_12AB"):
        state = f"$KV.{prefix}_RELEASES.release.rel-1"
        assert [i for i in IDENTITIES if _may_publish(i, state, None)] == ["planner"]
        progress = f"$KV.{prefix}_ANALYSES.analysis.rel-1.0.abcd1234"
        assert _may_publish("metrics-watcher", progress, None)


def test_no_identity_may_delete_or_purge_a_stream() -> None:
    for identity in IDENTITIES:
        for action in ("DELETE", "PURGE"):
            for subjects in (SUBJECTS, None):
                subject = f"$JS.API.STREAM.{action}.SHOP_EVENTS"
                assert not _may_publish(identity, subject, subjects), (identity, subject)


def test_each_identity_reads_only_its_own_inbox() -> None:
    for identity in IDENTITIES:
        allowed = permissions(identity, SUBJECTS).subscribe
        for other in IDENTITIES:
            inbox = f"{inbox_prefix(other)}.abc"
            assert any(_matches(p, inbox) for p in allowed) == (other == identity)
        assert not any(_matches(p, "_INBOX.abc") for p in allowed)


@pytest.mark.parametrize("identity", IDENTITIES)
def test_permissions_written_for_any_prefix_still_name_the_events(identity: str) -> None:
    """The local stack's form: every prefix's subjects, the same events per identity."""
    for entry in CATALOGUE:
        for prefix in ("shop", "t1234"):
            subject = Subjects(prefix).of(entry.event, "rel-1")
            assert _may_publish(identity, subject, None) == _may_publish(
                identity, SUBJECTS.of(entry.event, "rel-1")
            ), (identity, subject)


def test_live_events_for_any_prefix_do_not_reach_inboxes_or_jetstream() -> None:
    allowed = permissions("requester", None).subscribe
    assert any(_matches(p, "t9.rollback.requested.v1.rel-1") for p in allowed)
    for subject in ("_INBOX_planner.abc.def", "$KV.T9_RELEASES.rel-1", "$JS.EVENT.x.y"):
        assert not any(_matches(p, subject) for p in allowed), subject


def test_the_authorization_block_names_each_key_with_its_permissions() -> None:
    block = authorization({"planner": "UPLANNER", "requester": "UREQ"}, SUBJECTS, admin="UADM")
    users = block["users"]
    assert isinstance(users, list)
    assert users[0] == {
        "nkey": "UPLANNER",
        "permissions": permissions("planner", SUBJECTS).as_nats(),
    }
    assert users[2] == {"nkey": "UADM"}  # no permissions block: everything
    with pytest.raises(ValueError, match="no NATS identity 'nobody'"):
        permissions("nobody")


def test_rollback_requests_come_from_services_and_operators_only() -> None:
    may = {i for i in IDENTITIES if _may_publish(i, SUBJECTS.of(RollbackRequested, "rel-1"))}
    assert may == {"planner", "executor", "operator"}
    assert all(re.match(r"^[_A-Za-z]+$", inbox_prefix(i)) for i in IDENTITIES)


@pytest.mark.parametrize("subjects", [SUBJECTS, None], ids=["one prefix", "any prefix"])
def test_the_services_that_go_over_every_release_may_list_the_bucket(
    subjects: Subjects | None,
) -> None:
    """Listing keys is a server-named consumer of the bucket's stream, which nats-py then
    asks about; for any prefix the stream is ``*`` (``KV_*`` would be a literal name)."""
    for identity in ("planner", "rollback", "operator"):
        for subject in (
            "$JS.API.CONSUMER.CREATE.KV_SHOP_RELEASES",
            "$JS.API.CONSUMER.INFO.KV_SHOP_RELEASES.abc",
            "$JS.FC.KV_SHOP_RELEASES.abc.1",
            "$JS.API.STREAM.MSG.GET.KV_SHOP_RELEASES",
        ):
            assert _may_publish(identity, subject, subjects), (identity, subject)
    # (For any prefix the requester's consumer of "the events stream" is of any stream.)
    readers = ("executor", "metrics-watcher") + (("requester",) if subjects else ())
    for identity in readers:
        subject = "$JS.API.CONSUMER.CREATE.KV_SHOP_RELEASES"
        assert not _may_publish(identity, subject, subjects), (identity, subject)
