"""MkDocs hook: writes the tables that come from code into the pages when the site is built.

A page asks for one with a marker line, ``<!-- generated: NAME -->``; an unknown name fails
the build, so a typo cannot leave a page silently empty. The tables themselves are written by
``canaryflow_contracts.reference`` (policy fields, event catalogue) and by ``make bench``
(``bench/README.md``, ``bench/results/*.txt``), never by hand in ``docs/``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from canaryflow_contracts.identities import identities_table
from canaryflow_contracts.reference import catalogue_table, policy_reference

REPO = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!-- generated: (.+?) -->$", re.MULTILINE)


def bench_readme() -> str:
    """bench/README.md without its title (the page has its own)."""
    text = (REPO / "bench" / "README.md").read_text()
    return re.sub(r"\A# .*\n+", "", text)


def bench_results() -> str:
    """Each file ``make bench`` wrote into bench/results/, as it is."""
    sections = []
    for path in sorted((REPO / "bench" / "results").glob("*.txt")):
        body = path.read_text().rstrip()
        sections.append(f"### `bench/results/{path.name}`\n\n```text\n{body}\n```\n")
    return "\n".join(sections)


GENERATED: dict[str, Callable[[], str]] = {
    "policy reference": policy_reference,
    "event catalogue": catalogue_table,
    "nats identities": identities_table,
    "bench/README.md": bench_readme,
    "bench results": bench_results,
}


def expand(markdown: str) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATED:
            raise ValueError(f"unknown generated block {name!r}; known: {sorted(GENERATED)}")
        return GENERATED[name]().rstrip()

    return MARKER.sub(one, markdown)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return expand(markdown)
