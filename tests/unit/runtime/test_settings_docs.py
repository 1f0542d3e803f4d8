"""The docs' table of environment variables is the settings model's, and stays so.

The table is generated from ``canaryflow.runtime.settings.ENVIRONMENT`` and the ``Settings``
defaults; these tests fail when someone changes a default, adds a variable or edits the table
by hand without regenerating it (``python -m canaryflow.runtime.settings docs/operations.md``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from canaryflow.runtime import settings as settings_module
from canaryflow.runtime.settings import ENVIRONMENT, Settings, markdown_table, with_table

REPO = Path(__file__).resolve().parents[3]
# The page whose "Settings" section holds the table (the README only points at it).
PAGE = REPO / "docs" / "operations.md"
SERVICES = REPO / "services" / "canaryflow"
# The four services and what they share (the CLI, demo and data plane have their own flags).
SERVICE_CODE = ("runtime", "planner", "executor", "metrics_watcher", "rollback")


def _service_sources() -> str:
    return "\n".join(
        path.read_text() for part in SERVICE_CODE for path in (SERVICES / part).rglob("*.py")
    )


def test_the_docs_table_is_the_generated_one() -> None:
    page = PAGE.read_text()
    assert markdown_table() in page, (
        "docs/operations.md's settings table differs from the settings model: run "
        "`.venv/bin/python -m canaryflow.runtime.settings docs/operations.md`"
    )
    assert with_table(page) == page


def test_every_variable_a_service_reads_is_in_the_table() -> None:
    read = set(re.findall(r'"(CANARYFLOW_[A-Z_]+)"', _service_sources()))
    documented = {variable.name for variable in ENVIRONMENT}
    assert read - documented == set(), "add them to settings.ENVIRONMENT"


def test_documented_defaults_outside_the_model_are_the_code_s() -> None:
    source = _service_sources()
    for variable in ENVIRONMENT:
        if variable.field is not None:
            continue
        found = re.findall(rf'environ\.get\("{variable.name}", "([^"]*)"\)', source)
        assert found, f"{variable.name} is not read with a default anywhere"
        assert {value or "(none)" for value in found} == {variable.default}, variable.name


@pytest.mark.parametrize(
    "variable", [v for v in ENVIRONMENT if v.field is not None], ids=lambda v: v.name
)
def test_each_variable_sets_its_field(
    variable: settings_module.Variable, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = {"nats_url": "nats://elsewhere:4222", "prefix": "other", "kubeconfig": "/k"}
    value = given.get(variable.field or "", "7")
    monkeypatch.setenv(variable.name, value)
    read = getattr(Settings.from_env("planner"), variable.field or "")
    assert str(read).removesuffix(".0") == value
    monkeypatch.delenv(variable.name)
    default = getattr(Settings.from_env("planner"), variable.field or "")
    assert str(default) != value


def test_a_variable_that_is_not_a_number_is_named_in_the_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CANARYFLOW_WORKERS", "many")
    with pytest.raises(ValueError, match="CANARYFLOW_WORKERS='many' is not a number"):
        Settings.from_env("planner")
