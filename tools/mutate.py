"""Mutation testing of the pure cores: would the unit tests notice a wrong comparison?

Coverage says a line ran; a mutant (``>`` made ``>=``, a constant changed, a call dropped)
that the tests still pass says they never checked what the line decides. ``make mutate`` runs
mutmut on each pure module in turn, judged only by that module's unit tests, one module at a
time with one worker (the machine is shared), and prints the survivors and a count per module.

mutmut 3 names modules after their path and strips only a ``src/`` prefix, so each run happens
in a scratch folder (``.mutate/<module>``) where ``src`` is a link to ``services/``: the
mutants are then named ``canaryflow....`` like the modules the tests import.

Run ``python tools/mutate.py [module ...]`` (module as in MODULES, e.g. ``stats``). It exits
non-zero when more mutants survive than docs/contributing.md states (``SURVIVORS_STATED``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRATCH = REPO / ".mutate"


@dataclass(frozen=True)
class Module:
    source: str  # under services/
    tests: tuple[str, ...]  # under tests/unit/


MODULES: dict[str, Module] = {
    "machine": Module("canaryflow/planner/machine.py", ("planner",)),
    "stats": Module("canaryflow/metrics_watcher/stats.py", ("metrics_watcher",)),
    "decisions": Module("canaryflow/executor/decisions.py", ("executor",)),
    "restore": Module("canaryflow/rollback/restore.py", ("rollback",)),
    "triggers": Module("canaryflow/rollback/triggers.py", ("rollback",)),
    "authority": Module("canaryflow/runtime/authority.py", ("runtime/test_authority.py",)),
}

# The surviving mutants docs/contributing.md states ("Mutation testing"): a ceiling that may
# only go down; keep the two in step (tests/unit/test_mutation_ceiling.py checks they agree).
SURVIVORS_STATED: dict[str, int] = {
    "machine": 9,
    "stats": 25,
    "decisions": 0,
    "restore": 1,
    "triggers": 0,
    "authority": 0,
}


def _config(module: Module) -> str:
    tests = ", ".join(f'"tests/unit/{path}"' for path in module.tests)
    return (
        "[tool.mutmut]\n"
        'source_paths = ["src"]\n'
        f'only_mutate = ["src/{module.source}"]\n'
        f"pytest_add_cli_args_test_selection = [{tests}]\n"
        # The unit tests import nothing from the stack; keep pytest's own settings.
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]\n'
        "\n" + _pytest_settings()
    )


def _pytest_settings() -> str:
    """The repository's [tool.pytest.ini_options] (asyncio mode and the like), copied as is."""
    text = (REPO / "pyproject.toml").read_text()
    start = text.index("[tool.pytest.ini_options]")
    end = text.find("\n[", start + 1)
    return text[start : end if end != -1 else len(text)] + "\n"


def _prepare(name: str, module: Module) -> Path:
    folder = SCRATCH / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "src").symlink_to(REPO / "services")
    (folder / "tests").symlink_to(REPO / "tests")
    (folder / "pyproject.toml").write_text(_config(module))
    return folder


def _statuses(folder: Path) -> dict[str, str]:
    from mutmut.stats import status_by_exit_code

    statuses: dict[str, str] = {}
    for meta in (folder / "mutants").rglob("*.py.meta"):
        codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
        for key, code in codes.items():
            statuses[key] = str(status_by_exit_code[code])
    return statuses


def run(name: str) -> tuple[int, int, list[str]]:
    """Mutate one module; returns (mutants, killed, survivors' names)."""
    folder = _prepare(name, MODULES[name])
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    mutmut = Path(sys.executable).parent / "mutmut"
    subprocess.run(
        [str(mutmut), "run", "--max-children", "1"],
        cwd=folder,
        env=env,
        check=False,
        stdout=subprocess.DEVNULL,
    )
    statuses = _statuses(folder)
    if not statuses:
        raise SystemExit(f"{name}: mutmut produced no result (see {folder})")
    # A mutant that hangs the tests (timeout) is noticed too; one no test reaches is not.
    survivors = sorted(key for key, status in statuses.items() if status in _UNNOTICED)
    killed = len(statuses) - len(survivors)
    return len(statuses), killed, survivors


_UNNOTICED = frozenset({"survived", "no tests", "suspicious", "not checked"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("modules", nargs="*", help=f"some of {', '.join(MODULES)} (default: all)")
    args = parser.parse_args(argv)
    unknown = set(args.modules) - set(MODULES)
    if unknown:
        parser.error(f"unknown modules {sorted(unknown)}; known: {', '.join(MODULES)}")
    over = []
    for name in args.modules or list(MODULES):
        total, killed, survivors = run(name)
        print(f"{name}: {killed}/{total} killed, {len(survivors)} surviving", flush=True)
        for survivor in survivors:
            print(f"  survived: {survivor}  (show: cd .mutate/{name} && mutmut show {survivor})")
        if len(survivors) > SURVIVORS_STATED[name]:
            over.append(name)
    if over:
        print(
            f"more survivors than docs/contributing.md states in: {', '.join(over)}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
