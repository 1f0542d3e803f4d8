# canaryflow — one command for each job. `make demo` and `make test` set up everything they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STACK := $(PY) -m canaryflow_stack

.PHONY: venv lint fmt unit test docs stack-up stack-down stack-status demo bench chaos schemas mutate clean

# The virtualenv is rebuilt whenever a pyproject changes.
$(VENV)/.installed: pyproject.toml contracts/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ./contracts -e '.[dev]'
	touch $@

# The official AsyncAPI parser (npm), which the contract tests run through node.
ASYNCAPI_TOOLS := tools/asyncapi/node_modules/.installed
$(ASYNCAPI_TOOLS): tools/asyncapi/package.json tools/asyncapi/package-lock.json
	npm ci --prefix tools/asyncapi --no-audit --no-fund --loglevel=error
	touch $@

# The web view's charting library (uPlot, npm), which `python -m canaryflow.ui` serves itself.
UI_ASSETS := tools/ui/node_modules/.installed
$(UI_ASSETS): tools/ui/package.json tools/ui/package-lock.json
	npm ci --prefix tools/ui --no-audit --no-fund --loglevel=error
	touch $@

# Debian's chromium, for the web view's browser tests (tests/e2e/test_ui.py, driven by
# Playwright's Python package): a test tool's own browser download cannot be used here.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

venv: $(VENV)/.installed $(ASYNCAPI_TOOLS) $(UI_ASSETS) $(CHROMIUM)

lint: venv
	$(VENV)/bin/ruff check services contracts tests deploy/local docs/hooks bench
	$(VENV)/bin/ruff format --check services contracts tests deploy/local docs/hooks bench
	$(VENV)/bin/mypy services contracts/canaryflow_contracts deploy/local/canaryflow_stack tests docs/hooks
	$(VENV)/bin/lint-imports

fmt: venv
	$(VENV)/bin/ruff check --fix services contracts tests deploy/local docs/hooks bench
	$(VENV)/bin/ruff format services contracts tests deploy/local docs/hooks bench

unit: venv
	$(PY) -m pytest tests/unit -q

# The documentation site (mkdocs.yml, docs/) into site/, in strict mode: a broken link or a
# missing page fails. `make test` builds it too (tests/unit/test_docs.py).
docs: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

stack-up: venv
	$(STACK) up

stack-down: venv
	$(STACK) down

stack-status: venv
	$(STACK) status

# Lint, then every test: unit, integration and end-to-end on the real stack (started if needed).
test: lint
	$(STACK) up
	$(PY) -m pytest -q -ra

# The demo and the benches run inside the stack's network namespace (docs/local-stack.md); the
# tests enter it themselves (tests/conftest.py).
demo: venv
	$(STACK) up
	$(STACK) exec -- $(PY) -m canaryflow.demo

# Every benchmark script in bench/, one after another, each printing its own figures into
# bench/results/<script>.txt as well (bench/README.md says what each measures: judgement.py,
# restarts.py, tracing_overhead.py, otlp_encoding.py, gateway_split.py, gateway_rollback.py,
# jetstream_publish.py, scale.py).
BENCHES := $(sort $(wildcard bench/*.py))
bench: venv
	$(STACK) up
	@set -eo pipefail; mkdir -p bench/results; for script in $(BENCHES); do \
		echo "== $$script"; \
		{ echo "# $$script: make bench, $$(date -u +%Y-%m-%dT%H:%MZ), $$(nproc) CPUs"; \
		  $(STACK) exec -- $(PY) $$script; } | tee bench/results/$$(basename $$script .py).txt; \
	done

# The fault campaign (services/canaryflow/demo/chaos.py): releases under random SIGKILLs and
# outages of NATS, the API server and Prometheus, judged from the outside; prints its table.
# CHAOS_ARGS: e.g. `--seed 7 --runs 10 --faults 10`, or `--run-seed N` to replay one run.
CHAOS_ARGS ?=
chaos: venv
	$(STACK) up
	$(STACK) exec -- $(PY) -m canaryflow.demo.chaos $(CHAOS_ARGS)

# The published contract (JSON Schemas, AsyncAPI document, CRD) regenerated from the code.
schemas: venv
	$(PY) -m canaryflow_contracts.generate

# Mutation testing of the pure cores, one module at a time (slow: minutes per module); prints
# each module's survivors and fails when more survive than docs/contributing.md states.
mutate: venv
	$(PY) tools/mutate.py

clean:
	rm -rf $(VENV) site .stack .mypy_cache .ruff_cache .pytest_cache .mutate tools/asyncapi/node_modules tools/ui/node_modules
