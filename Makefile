# The one place every command lives: README, CI and humans call these targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PEER_VENV := .peer-venv
BIN := $(VENV)/bin
PEER_VERSION := 4.19.0

.PHONY: dev peers demo test test-unit test-integration test-e2e lint format typecheck check bench clean dockerd base-image fault

$(BIN)/compute-endpoint: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

## dev: create .venv with the project installed (compute-endpoint, compute-webservice)
dev: $(BIN)/compute-endpoint

$(PEER_VENV)/bin/globus-compute-endpoint:
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install -q globus-compute-sdk==$(PEER_VERSION) globus-compute-endpoint==$(PEER_VERSION)

## peers: the official SDK and endpoint, test peers only, in their own venv
peers: $(PEER_VENV)/bin/globus-compute-endpoint

## demo: the main job: private broker + web service + our endpoint, run add(40, b=2) with the official SDK
demo: dev peers
	$(BIN)/python -m webservice.demo --peer-python $(PEER_VENV)/bin/python

## test: unit, integration (real RabbitMQ) and e2e (official SDK and endpoint) tests
test: dev peers
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -q -ra tests

test-unit: dev peers
	$(BIN)/pytest -q tests/unit

test-integration: dev
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -q -ra tests/integration

test-e2e: dev peers
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -q -ra tests/e2e

lint: dev
	$(BIN)/ruff check endpoint webservice tests bench
	$(BIN)/ruff format --check endpoint webservice tests bench

format: dev
	$(BIN)/ruff check --fix endpoint webservice tests bench
	$(BIN)/ruff format endpoint webservice tests bench

typecheck: dev
	$(BIN)/mypy

check: lint typecheck test

## bench: ours vs the official endpoint, same service and broker, one run
bench: dev peers
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python bench/endpoint_bench.py --peer-python $(PEER_VENV)/bin/python

## fault: the reliability cases (tests/fault): faults injected into real processes, counts printed
fault: dev
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -q -s -ra tests/fault

clean:
	rm -rf $(VENV) $(PEER_VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info

## dockerd: start a Docker daemon (no bridge, no iptables; containers use --network host)
dockerd:
	tools/dockerd-up

## base-image: build debian:bookworm-slim locally with debootstrap (idempotent; no registry needed)
base-image: dockerd
	tools/base-image
