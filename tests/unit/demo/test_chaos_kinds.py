"""Which faults a campaign may inject depends on the stack: a node kill needs a NATS cluster."""

from __future__ import annotations

import pytest

from canaryflow.demo.chaos import KINDS, CampaignOptions, fitted_to


def test_the_default_mix_leaves_node_kills_out_on_a_single_node() -> None:
    fitted = fitted_to(CampaignOptions(seed=1), nats_nodes=1)

    assert "nats-node-kill" not in fitted.kinds
    assert set(fitted.kinds) == set(KINDS) - {"nats-node-kill"}


def test_a_cluster_keeps_node_kills_in_the_mix() -> None:
    assert "nats-node-kill" in fitted_to(CampaignOptions(seed=1), nats_nodes=3).kinds


@pytest.mark.parametrize(
    "options",
    [
        CampaignOptions(seed=1, kinds=("kill-one", "nats-node-kill")),
        CampaignOptions(seed=1, script=("nats-node-kill",)),
    ],
    ids=["kinds", "script"],
)
def test_a_node_kill_asked_for_by_name_on_a_single_node_is_refused(
    options: CampaignOptions,
) -> None:
    with pytest.raises(ValueError, match="CANARYFLOW_NATS_NODES=3"):
        fitted_to(options, nats_nodes=1)
