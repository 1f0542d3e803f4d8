"""The CLI turns its arguments into the public request and commands, or says what is wrong."""

from __future__ import annotations

import pytest

from canaryflow.cli import main as cli
from canaryflow_contracts.events import ConfigMapChange


def test_config_arguments_are_grouped_by_config_map() -> None:
    changes = cli._config_changes(["web-config:LAYOUT=compact", "web-config:ITEMS=", "flags:x=1"])
    assert changes == [
        ConfigMapChange(name="web-config", data={"LAYOUT": "compact", "ITEMS": ""}),
        ConfigMapChange(name="flags", data={"x": "1"}),
    ]


@pytest.mark.parametrize("item", ["LAYOUT=compact", "web-config:LAYOUT", ":K=V", "cm:=v"])
def test_a_malformed_config_argument_is_refused_with_its_shape(item: str) -> None:
    with pytest.raises(cli.CliError, match="CONFIGMAP:KEY=VALUE"):
        cli._config_changes([item])
