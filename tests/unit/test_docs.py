"""The docs say what the code does: every snippet is checked, and the site builds in strict mode.

Why: a reader copies a snippet before reading the prose around it, so a policy that the API
server would refuse, an event the planner would dead-letter or a command that does not exist
is a bug in the product. Each fenced block in the README, CONTRIBUTING.md, bench/README.md and
docs/ names its language, and:
- YAML: a ReleasePolicy (or a fragment of one's ``spec``) is validated by ``ReleasePolicySpec``;
  Kubernetes objects by the Kubernetes client's models, the behaviour ConfigMap and the users'
  annotations by the data plane's own parsers; Alertmanager and Prometheus configuration by
  the routes and labels canaryflow serves and reads;
- JSON: an event by the catalogue's model for its ``type``; a log line by the logger's keys;
- shell: every line names a real make target, a real ``canaryflow`` command (parsed by the
  CLI's own parser), an importable module, a script that exists, or a known outside tool;
- Python: it compiles, and what it imports exists;
- mermaid: every event a diagram names is in the catalogue.
"""

from __future__ import annotations

import ast
import copy
import importlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from kubernetes import client

from canaryflow.cli.main import _parser as cli_parser
from canaryflow.dataplane.load import USERS_LABEL, wanted
from canaryflow.metrics_watcher.webhook import PATH as ALERTS_PATH
from canaryflow.runtime.behaviour import parse_behaviour
from canaryflow_contracts.events import CATALOGUE, parse_event
from canaryflow_contracts.policy import GROUP, KIND, VERSION, ReleasePolicySpec
from canaryflow_contracts.reference import catalogue_table, policy_reference

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = (
    REPO / "README.md",
    REPO / "CONTRIBUTING.md",
    REPO / "bench" / "README.md",
    *sorted((REPO / "docs").rglob("*.md")),
)
LANGUAGES = {"yaml", "json", "shell", "python", "mermaid", "promql", "text"}
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")
# A block that shows a file of the repository (pymdownx.snippets): the file is what is checked.
INCLUDE = re.compile(r'^--8<-- "(?P<path>[^"]+)"\n$')


@dataclass(frozen=True)
class Snippet:
    path: Path
    line: int
    lang: str
    body: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def _snippets_of(path: Path) -> list[Snippet]:
    found: list[Snippet] = []
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent = len(opening["indent"])
        end = index + 1
        while lines[end].strip() != "```":
            end += 1
        body = "\n".join(line[indent:] for line in lines[index + 1 : end]) + "\n"
        if (included := INCLUDE.match(body)) is not None:
            body = (REPO / included["path"]).read_text()
        found.append(Snippet(path, index + 1, opening["lang"], body))
        index = end + 1
    return found


SNIPPETS = [snippet for path in DOCUMENTS for snippet in _snippets_of(path)]


def _of(lang: str) -> list[Snippet]:
    return [snippet for snippet in SNIPPETS if snippet.lang == lang]


def test_every_fenced_block_names_a_language_the_tests_know() -> None:
    unnamed = [str(snippet) for snippet in SNIPPETS if snippet.lang not in LANGUAGES]
    assert unnamed == [], f"name the language ({sorted(LANGUAGES)}) of the blocks at {unnamed}"


def test_the_snippets_are_there_to_test() -> None:
    counts = {lang: len(_of(lang)) for lang in ("yaml", "json", "shell")}
    assert all(counts.values()), counts


# --- YAML -------------------------------------------------------------------------------

# A spec that a fragment (a few of a policy's fields) is merged into before validation.
BASE_SPEC: dict[str, Any] = {
    "targetRef": "web",
    "steps": [{"weight": 10, "holdSeconds": 60}],
    "analysis": {"compare": [{"name": "errors", "template": "errors"}]},
}
SPEC_FIELDS = set(ReleasePolicySpec.model_json_schema(by_alias=True)["properties"])
KUBERNETES_MODELS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "Service"): "V1Service",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("apps/v1", "Deployment"): "V1Deployment",
}


def _merged(base: dict[str, Any], fragment: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in fragment.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def _check_kubernetes_object(document: dict[str, Any]) -> None:
    key = (document["apiVersion"], document["kind"])
    assert key in KUBERNETES_MODELS, f"no model for {key}: add it to KUBERNETES_MODELS"
    # The client's models refuse a missing required field (a container without a name...).
    client.ApiClient().deserialize(json.dumps(document), KUBERNETES_MODELS[key], "application/json")
    metadata = document["metadata"]
    assert metadata["name"]
    if document["kind"] == "ConfigMap" and metadata["name"] == "canaryflow-simulator":
        for tag, raw in document["data"].items():
            _, problems = parse_behaviour(raw)
            assert problems == (), f"behaviour {tag!r}: {problems}"
    if metadata.get("labels", {}).get(USERS_LABEL) is not None:
        assert metadata["labels"][USERS_LABEL] == "true"
        as_json = json.dumps(document)
        service = client.ApiClient().deserialize(as_json, "V1Service", "application/json")
        _, annotation_problems = wanted(service)
        assert annotation_problems == [], annotation_problems


def check_yaml_document(document: Any) -> None:
    assert isinstance(document, dict), f"a YAML snippet is a mapping, not {document!r}"
    if document.get("kind") == KIND:
        assert document["apiVersion"] == f"{GROUP}/{VERSION}"
        assert document["metadata"]["name"]
        ReleasePolicySpec.model_validate(document["spec"])
    elif "apiVersion" in document and "kind" in document:
        _check_kubernetes_object(document)
    elif set(document) <= SPEC_FIELDS:
        ReleasePolicySpec.model_validate(_merged(BASE_SPEC, document))
    elif "receivers" in document:  # Alertmanager: its webhooks must reach the metrics-watcher
        urls = [
            hook["url"]
            for receiver in document["receivers"]
            for hook in receiver.get("webhook_configs", [])
        ]
        assert urls
        assert all(url.endswith(ALERTS_PATH) for url in urls), urls
    elif "scrape_configs" in document:  # Prometheus: the labels the dashboard selects on
        for job in document["scrape_configs"]:
            for static in job["static_configs"]:
                assert {"service", "canaryflow_prefix"} <= set(static["labels"]), static
    else:
        pytest.fail(f"unknown kind of YAML snippet (keys {sorted(document)}): teach this test")


@pytest.mark.parametrize("snippet", _of("yaml"), ids=str)
def test_yaml_snippets_are_what_canaryflow_and_kubernetes_accept(snippet: Snippet) -> None:
    documents = [document for document in yaml.safe_load_all(snippet.body) if document]
    assert documents
    for document in documents:
        check_yaml_document(document)


def test_a_fragment_that_breaks_the_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="strictly increase"):
        check_yaml_document(
            {"steps": [{"weight": 30, "holdSeconds": 1}, {"weight": 10, "holdSeconds": 1}]}
        )
    with pytest.raises(ValueError):
        check_yaml_document({"analysis": {"provider": {"type": "graphite", "address": "x"}}})
    with pytest.raises(ValueError, match="name"):  # a container needs a name
        check_yaml_document(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {"selector": {}, "template": {"spec": {"containers": [{"image": "x"}]}}},
            }
        )


# --- JSON -------------------------------------------------------------------------------

LOG_KEYS = {"time", "level", "service", "logger", "msg"}


@pytest.mark.parametrize("snippet", _of("json"), ids=str)
def test_json_snippets_are_events_of_the_catalogue_or_log_lines(snippet: Snippet) -> None:
    document = json.loads(snippet.body)
    if isinstance(document, dict) and "specversion" in document:
        envelope = parse_event(json.dumps(document))
        assert envelope.subject == document["subject"]
    elif isinstance(document, dict) and set(document) >= LOG_KEYS:
        assert document["level"] in {"debug", "info", "warning", "error", "critical"}
        if "release_id" in document and "subject" in document:
            assert document["subject"].endswith("." + document["release_id"])
    elif isinstance(document, list):  # a Prometheus file_sd file: the labels the dashboard uses
        for group in document:
            assert set(group) == {"targets", "labels"}, group
            assert {"service", "canaryflow_prefix"} <= set(group["labels"]), group
    else:
        pytest.fail("unknown kind of JSON snippet: teach this test")


# --- shell ------------------------------------------------------------------------------

MAKE_TARGETS = set(re.findall(r"^([\w.-]+):", (REPO / "Makefile").read_text(), flags=re.MULTILINE))
STACK_COMMANDS = set(
    re.findall(
        r'add_parser\(\s*"(\w+)"',
        (REPO / "deploy" / "local" / "canaryflow_stack" / "cli.py").read_text(),
    )
)
PYTHONS = {"python", "python3", ".venv/bin/python"}
PYPROJECT = (REPO / "pyproject.toml").read_text()
# Other people's tools the docs may show, by the name a shell finds them under.
OUTSIDE_TOOLS = {"nats", "curl", "docker", "source", ".", "export", "kill", "cd", "grep"}
OUTSIDE_TOOLS |= {".venv/bin/pip"}
OPERATORS = {"&&", "||", ";", "|", "&"}
REDIRECT = re.compile(r"^\d?>>?(?P<target>\S*)$")


def shell_commands(body: str) -> list[list[str]]:
    """Each simple command of a snippet, as argv, without assignments and redirections."""
    commands: list[list[str]] = []
    for line in body.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        current: list[str] = []
        skip_next = False
        for word in [*words, ";"]:
            if skip_next:
                skip_next = False
            elif word in OPERATORS:
                if current:
                    commands.append(current)
                current = []
            elif (redirect := REDIRECT.match(word)) is not None:
                skip_next = not redirect["target"]
            elif not current and re.match(r"^[A-Z_][A-Z0-9_]*=", word):
                continue
            else:
                current.append(word)
    return commands


def _check_python(argv: list[str]) -> None:
    if argv[0] != "-m":
        assert (REPO / argv[0]).is_file(), f"no script {argv[0]}"
        return
    module, rest = argv[1], argv[2:]
    if module in {"venv", "pytest"}:
        return
    assert importlib.util.find_spec(module) is not None, f"no module {module}"
    if module == "canaryflow_stack":
        assert rest[0] in STACK_COMMANDS, f"no stack command {rest[0]!r}"
        if rest[0] == "exec":
            check_command(rest[rest.index("--") + 1 :])


def check_command(argv: list[str]) -> None:
    program, args = argv[0], argv[1:]
    if program == "make":
        targets = [arg for arg in args if not arg.startswith("-") and "=" not in arg]
        assert set(targets) <= MAKE_TARGETS, f"no make target {set(targets) - MAKE_TARGETS}"
    elif program in {"canaryflow", ".venv/bin/canaryflow"}:
        # `pause|resume|abort|promote <release>` shows several commands with one argument list.
        for command in args[0].split("|"):
            try:
                cli_parser().parse_args([command, *args[1:]])
            except SystemExit:
                pytest.fail(f"the CLI refuses {shlex.join(argv)!r}")
    elif program in PYTHONS:
        _check_python(args)
    elif program == "helm":  # the chart it installs is the repository's
        charts = [arg for arg in args if arg.startswith("deploy/")]
        assert args[0] in {"install", "upgrade", "template", "lint"}, args
        assert charts and all((REPO / c / "Chart.yaml").is_file() for c in charts), charts
    elif program == "kubectl":  # a file it applies from the repository exists
        files = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "-f"]
        assert all((REPO / name).is_file() for name in files if "/" in name), files
    elif program.startswith(".venv/bin/") and program not in OUTSIDE_TOOLS:
        tool = program.removeprefix(".venv/bin/")
        assert re.search(rf'"{tool}[=<>\[]', PYPROJECT), f"{tool} is no dependency"
    else:
        assert program in OUTSIDE_TOOLS, f"unknown command {program!r}: teach this test"


@pytest.mark.parametrize("snippet", _of("shell"), ids=str)
def test_shell_snippets_name_real_targets_commands_and_modules(snippet: Snippet) -> None:
    commands = shell_commands(snippet.body)
    assert commands
    for argv in commands:
        check_command(argv)


@pytest.mark.parametrize(
    "line",
    [
        "make deploy",
        "canaryflow relase -n shop -d web --image x",
        "canaryflow release -n shop --image x",
        "python -m canaryflow.nothing",
        "python -m canaryflow_stack exec -- python -m canaryflow.nothing",
        "rm -rf /",
        "kubectl apply -f deploy/crds/nothing.json",
        "helm install canaryflow deploy/helm/nothing",
        ".venv/bin/black .",
    ],
)
def test_a_wrong_shell_line_is_caught(line: str) -> None:
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        for argv in shell_commands(line):
            check_command(argv)


def test_shell_lines_are_split_into_commands() -> None:
    assert shell_commands("A=1 .venv/bin/python -m x 2> x.log &  # comment\nmake a b") == [
        [".venv/bin/python", "-m", "x"],
        ["make", "a", "b"],
    ]


# --- Python and mermaid -----------------------------------------------------------------


@pytest.mark.parametrize("snippet", _of("python"), ids=str)
def test_python_snippets_compile_and_import_what_exists(snippet: Snippet) -> None:
    tree = ast.parse(snippet.body)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)


EVENT_NAMES = {entry.event.__name__ for entry in CATALOGUE}


@pytest.mark.parametrize("snippet", _of("mermaid"), ids=str)
def test_diagrams_name_only_events_of_the_catalogue(snippet: Snippet) -> None:
    messages = re.findall(r"->>[^:]*:(.*)$", snippet.body, flags=re.MULTILINE)
    named = {word for message in messages for word in re.findall(r"\b[A-Z][a-z]+[A-Z]\w*", message)}
    assert named, "a diagram of the event flow names events"
    assert named - EVENT_NAMES == set()


# --- generated pages and the build ------------------------------------------------------


def _hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generated", REPO / "docs/hooks/generated.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_policy_reference_has_every_field_of_every_object() -> None:
    text = policy_reference()
    schema = ReleasePolicySpec.model_json_schema(by_alias=True)
    definitions = schema.pop("$defs")
    for name, definition in [("spec", schema), *definitions.items()]:
        assert f"{{#policy-{name.lower()}}}" in text, name
        for field in definition.get("properties", {}):
            assert f"| `{field}` |" in text, f"{name}.{field}"


def test_the_catalogue_table_has_every_event_once() -> None:
    rows = catalogue_table().splitlines()[2:]
    assert [row.split("`")[1] for row in rows] == [e.event.__name__ for e in CATALOGUE]


def test_a_page_asking_for_an_unknown_table_fails_the_build() -> None:
    hook = _hook()
    assert "targetRef" in hook.expand("<!-- generated: policy reference -->")
    with pytest.raises(ValueError, match="unknown generated block"):
        hook.expand("<!-- generated: policy refrence -->")


def test_the_site_builds_in_strict_mode(tmp_path: Path) -> None:
    site = tmp_path / "site"
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert "targetRef" in (site / "policy" / "index.html").read_text()
    assert "io.canaryflow.release.requested.v1" in (site / "concepts" / "index.html").read_text()
    assert "bench/results/judgement.txt" in (site / "benchmarks" / "index.html").read_text()


def test_the_readme_s_two_commands_are_the_ones_ci_and_people_run() -> None:
    (first, *_) = [s for s in SNIPPETS if s.path.name == "README.md" and s.lang == "shell"]
    assert shell_commands(first.body) == [["make", "demo"], ["make", "test"]]
    assert "make test" in (REPO / ".ci" / "run").read_text().splitlines()
    assert len((REPO / "README.md").read_text().splitlines()) <= 200, "keep the README short"
