"""The surviving-mutant counts `make mutate` enforces are the ones the docs state."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_make_mutate_enforces_the_counts_the_docs_state() -> None:
    spec = importlib.util.spec_from_file_location("mutate", REPO / "tools" / "mutate.py")
    assert spec is not None and spec.loader is not None
    mutate = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mutate  # its dataclasses look themselves up there
    spec.loader.exec_module(mutate)
    rows = re.findall(
        r"^\| `[\w/]+\.py` \(`(\w+)`\) \| \d+ \| (\d+) \|$",
        REPO.joinpath("docs", "contributing.md").read_text(),
        flags=re.MULTILINE,
    )
    assert {name: int(count) for name, count in rows} == mutate.SURVIVORS_STATED
    assert set(mutate.SURVIVORS_STATED) == set(mutate.MODULES)
