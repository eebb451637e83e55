# Plinth — run `make help` for the list of targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST := $(BIN)/python -m pytest
# starts the local PostgreSQL, RabbitMQ (management plugin on) and Redis a tier needs when they
# are installed but stopped, or stops at once naming what is missing (deploy/local/testenv.py)
TESTENV := @$(BIN)/python -m deploy.local.testenv
# every package with its own migrations: the core services and any made by `make service`
SERVICES ?= $(sort $(patsubst %/migrations/env.py,%,$(wildcard */migrations/env.py)))
export PYTHONPATH := $(CURDIR)

.PHONY: help setup run test test-unit test-integration test-e2e test-fault test-security \
        lint format migrate shell tasks bench admin service broker-users clean

help:  ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): setup.cfg
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)  ## create the virtualenv and install everything

run: $(STAMP)  ## start the whole platform locally (Ctrl-C stops it)
	$(BIN)/python -m deploy.local.run

test: $(STAMP)  ## run the whole test suite (starts the local services it needs)
	$(TESTENV) postgresql rabbitmq redis chromium
	$(PYTEST) tests

test-unit: $(STAMP)  ## unit tests (no broker or database)
	$(PYTEST) tests/unit

test-integration: $(STAMP)  ## integration tests against RabbitMQ and PostgreSQL
	$(TESTENV) postgresql rabbitmq
	$(PYTEST) tests/integration

test-e2e: $(STAMP)  ## end-to-end tests through real processes
	$(TESTENV) postgresql rabbitmq redis chromium
	$(PYTEST) tests/e2e

test-fault: $(STAMP)  ## fault-injection tests
	$(TESTENV) postgresql rabbitmq
	$(PYTEST) tests/fault

test-security: $(STAMP)  ## security tests
	$(TESTENV) postgresql rabbitmq
	$(PYTEST) tests/security

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check .

format: $(STAMP)  ## ruff format and import sorting
	$(BIN)/ruff check --fix --select I .

migrate: $(STAMP)  ## apply every service's migrations (SERVICES="identity ..." to choose)
	$(BIN)/python -m shared.migrations $(SERVICES)

shell: $(STAMP)  ## nameko shell for one service: make shell SVC=identity
	@test -n "$(SVC)" || { echo "usage: make shell SVC=identity"; exit 2; }
	$(BIN)/nameko shell --config config/$(SVC).yaml

# `make bench rpc tasks`: the goals after `bench` name benchmarks, not targets
BENCHES := $(if $(filter bench,$(MAKECMDGOALS)),$(filter-out bench,$(MAKECMDGOALS)))

tasks: $(STAMP)  ## dead letters of one service: make tasks SVC=audit ARGS="dead list|show ID|replay ID|drop ID"
ifeq ($(BENCHES),)
	@test -n "$(SVC)" || { echo 'usage: make tasks SVC=audit ARGS="dead list"'; exit 2; }
	$(BIN)/python -m shared.tasks_cli --config config/$(SVC).yaml $(or $(ARGS),dead list)
endif

bench: $(STAMP)  ## benchmarks (all, or the named: make bench tasks); figures go to docs/benchmarks.md
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null; } \
	  || { echo "make bench needs wrk (apt-get install wrk)"; exit 2; }
	$(BIN)/python -m tests.bench $(BENCHES)

ifneq ($(BENCHES),)
$(filter-out tasks,$(BENCHES)):
	@:
endif

admin: $(STAMP)  ## create or promote an administrator: make admin EMAIL=you@example.com
	@test -n "$(EMAIL)" || { echo "usage: make admin EMAIL=you@example.com"; exit 2; }
	$(BIN)/python -m authz.admin --email "$(EMAIL)" --config config/authz.yaml

broker-users: $(STAMP)  ## each process's RabbitMQ user and permissions (ARGS=--check reports drift)
	$(BIN)/python -m deploy.broker_users $(ARGS)

service: $(STAMP)  ## generate a feature service: make service NAME=billing
	@test -n "$(NAME)" || { echo "usage: make service NAME=billing"; exit 2; }
	$(BIN)/python -m deploy.scaffold "$(NAME)"

clean:  ## remove local state (var/) and caches
	rm -rf var .pytest_cache .ruff_cache
