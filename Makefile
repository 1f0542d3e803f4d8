# canaryflow — one command for each job. `make demo` and `make test` set up everything they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STACK := $(PY) -m canaryflow_stack

.PHONY: venv lint fmt unit test stack-up stack-down stack-status demo bench chaos schemas clean

# The virtualenv is rebuilt whenever a pyproject changes.
$(VENV)/.installed: pyproject.toml contracts/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ./contracts -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check services contracts tests deploy/local
	$(VENV)/bin/ruff format --check services contracts tests deploy/local
	$(VENV)/bin/mypy services contracts/canaryflow_contracts deploy/local/canaryflow_stack tests
	$(VENV)/bin/lint-imports

fmt: venv
	$(VENV)/bin/ruff check --fix services contracts tests deploy/local
	$(VENV)/bin/ruff format services contracts tests deploy/local

unit: venv
	$(PY) -m pytest tests/unit -q

# The published contract (JSON Schemas, AsyncAPI, the ReleasePolicy CRD), from the models.
schemas: venv
	$(PY) -m canaryflow_contracts.generate

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

# The demo and the benches run inside the stack's network namespace (see README, "The local
# stack"); the tests enter it themselves (tests/conftest.py).
demo: venv
	$(STACK) up
	$(STACK) exec -- $(PY) -m canaryflow.demo

# Every benchmark script in bench/, one after another, each printing its own figures
# (bench/judgement.py: false-positive rate, power and time to detect of the analysis;
# bench/restarts.py: restore time with the rollback service killed at a failing verdict, and
# the delay a metrics-watcher kill adds to a step; bench/tracing_overhead.py: events per
# second per service with tracing on and off; bench/gateway_split.py: the gateway's share
# error per weight and stickiness, real users; bench/gateway_rollback.py: from a failing
# verdict to the last request that reached the canary through Traefik, p50/p99 over 20
# rollbacks, and the requests that failed at the gateway meanwhile).
BENCHES := $(sort $(wildcard bench/*.py))
bench: venv
	$(STACK) up
	@set -e; for script in $(BENCHES); do echo "== $$script"; $(STACK) exec -- $(PY) $$script; done

# The fault campaign (services/canaryflow/demo/chaos.py): releases under random SIGKILLs and
# outages of NATS, the API server and Prometheus, judged from the outside; prints its table.
# CHAOS_ARGS: e.g. `--seed 7 --runs 10 --faults 10`, or `--run-seed N` to replay one run.
CHAOS_ARGS ?=
chaos: venv
	$(STACK) up
	$(STACK) exec -- $(PY) -m canaryflow.demo.chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .stack .mypy_cache .ruff_cache .pytest_cache
