# Conclave developer entry points. CI calls exactly these targets (see .ci/run).
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --warn-undefined-variables --no-builtin-rules

# uv is the only bootstrap requirement; if the machine lacks it we install a pinned copy into
# .tools/ with the system Python, so a fresh clone needs nothing but python3.
UV_VERSION := 0.13.8
UV ?= $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
PROTO_FILES := $(shell find proto -name '*.proto' | sort)
PROTO_OUT := libs/proto/src
PROTO_STAMP := $(PROTO_OUT)/conclave/.generated
PY_SOURCES := libs services tests

.PHONY: help
help: ## Show this help.
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(CURDIR)/.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

$(BIN)/python: pyproject.toml uv.lock $(wildcard libs/*/pyproject.toml services/*/pyproject.toml) | $(UV)
	$(UV) sync --locked --python 3.11
	@touch $@

.PHONY: venv
venv: $(BIN)/python ## Create/refresh the virtualenv from the lock file.

$(PROTO_STAMP): $(PROTO_FILES) $(BIN)/python
	@rm -rf $(PROTO_OUT)/conclave && mkdir -p $(PROTO_OUT)/conclave
	$(BIN)/python -m grpc_tools.protoc -Iproto \
	  --python_out=$(PROTO_OUT) --grpc_python_out=$(PROTO_OUT) \
	  --mypy_out=$(PROTO_OUT) --mypy_grpc_out=$(PROTO_OUT) $(PROTO_FILES)
	@find $(PROTO_OUT)/conclave -type d -exec touch {}/py.typed \;
	@touch $@

.PHONY: proto
proto: $(PROTO_STAMP) ## Generate Python code + typed stubs from proto/ into libs/proto.

.PHONY: lint
lint: $(PROTO_STAMP) ## ruff (lint + format check) and buf lint.
	$(BIN)/ruff check $(PY_SOURCES)
	$(BIN)/ruff format --check $(PY_SOURCES)
	$(BIN)/buf lint

.PHONY: fmt
fmt: venv ## Apply ruff formatting and safe fixes.
	$(BIN)/ruff check --fix $(PY_SOURCES)
	$(BIN)/ruff format $(PY_SOURCES)

.PHONY: typecheck
typecheck: $(PROTO_STAMP) ## mypy --strict over libs, services and tests.
	$(BIN)/mypy --strict $(wildcard libs/*/src/conclave_* services/*/src/conclave_*) tests

.PHONY: unit
unit: $(PROTO_STAMP) ## Unit and vector tests only (no servers).
	$(BIN)/pytest -q tests/unit tests/vectors

.PHONY: k8s-check
k8s-check: $(PROTO_STAMP) ## Render deploy/k8s overlays; validate schemas, policies, alerts, dashboard (offline).
	$(BIN)/pytest -q -p no:cacheprovider -m "not integration" tests/deploy

.PHONY: test
test: lint typecheck k8s-check ## Everything CI runs: lint, types, k8s manifests, unit + integration tests on real NATS + Postgres.
	$(BIN)/pytest -q

.PHONY: bench
bench: $(PROTO_STAMP) bench-fanout bench-purge ## All benchmarks (JSON lines on stdout): crypto, auth, media, fan-out, purge. Not part of `test`.
	$(BIN)/python -m conclave_crypto.bench
	$(BIN)/python -m conclave_devstack.bench.auth
	$(BIN)/python -m conclave_media.bench

.PHONY: bench-purge
bench-purge: $(PROTO_STAMP) ## Purge of 100,000 expired messages: items/s, lag, 2 replicas, vs raw nats-py deletes.
	$(BIN)/python -m conclave_messaging.bench_purge --concurrency 1,64 --erase-backlog 2000

.PHONY: bench-fanout
bench-fanout: $(PROTO_STAMP) ## Group fan-out (10/100/1,000 members) vs raw nats-py and one-copy-per-recipient.
	$(BIN)/python -m conclave_messaging.bench

.PHONY: run
run: $(PROTO_STAMP) ## Run the whole stack (embedded NATS + PostgreSQL + five services).
	exec $(BIN)/conclave-run

.PHONY: clean
clean: ## Remove generated code and the virtualenv (keeps ./.conclave data).
	rm -rf $(VENV) .tools $(PROTO_OUT)/conclave .mypy_cache .ruff_cache .pytest_cache
