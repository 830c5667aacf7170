# The one place every command lives: README, CI and humans call these targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PEER_VENV := .peer-venv
BIN := $(VENV)/bin
PEER_VERSION := 4.19.0

.PHONY: dev peers demo test test-unit test-integration test-e2e lint format typecheck check bench clean dockerd base-image fault soak

$(BIN)/compute-endpoint: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,kubernetes]'
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
	$(BIN)/python -m devstack.demo --peer-python $(PEER_VENV)/bin/python

## test: unit, integration (real RabbitMQ) and e2e (official SDK and endpoint) tests
## (the appliance tests need dockerd and the images: `make test-appliance`)
test: dev peers uv-cache
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -q -ra --durations=40 tests --ignore=tests/appliance

## uv-cache: fill uv's cache (and build the worker wheel) so the per-user environment tests run offline
.PHONY: uv-cache
uv-cache: dev
	tools/warm-uv-cache

test-unit: dev peers
	$(BIN)/pytest -q tests/unit

test-integration: dev uv-cache
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -q -ra tests/integration

test-e2e: dev peers uv-cache
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -q -ra tests/e2e

SHELL_SCRIPTS := entrypoint appliance/bin/rabbitmq-run appliance/bin/run-endpoint \
	appliance/bin/run-webservice appliance/broker/rabbitmq-diagnostics .ci/run \
	tools/install-prereqs tools/dockerd-up tools/base-image tools/slurm-up tools/slurm-down \
	tools/warm-uv-cache appliance/prometheus/run-prometheus

# Python the linters and the formatter check (ruff's rules, C901's complexity bound included,
# live in pyproject.toml).
PY_DIRS := endpoint webservice tests bench appliance devstack

## lint: ruff (with the complexity bound), ruff format and shellcheck
lint: dev
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)
	@if command -v shellcheck >/dev/null; then shellcheck $(SHELL_SCRIPTS); \
	else echo "shellcheck not installed: shell scripts not checked (.ci/run installs it)"; fi

format: dev
	$(BIN)/ruff check --fix $(PY_DIRS)
	$(BIN)/ruff format $(PY_DIRS)

## typecheck: mypy --strict (pyproject.toml) on the product, devstack, bench and the tests
typecheck: dev
	$(BIN)/mypy
	$(BIN)/mypy appliance/bin/*.py

## check: lint, typecheck, test and the appliance tests (these need dockerd: .ci/run starts it)
check: lint typecheck test test-appliance

## bench: ours vs the official endpoint, same service and broker, one run
bench: dev peers
	PATH=$(CURDIR)/$(BIN):$$PATH PYTHONPATH=$(CURDIR) $(BIN)/python bench/endpoint_bench.py --peer-python $(PEER_VENV)/bin/python

## fault: the reliability cases (tests/fault): faults injected into real processes, counts printed
fault: dev
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -q -s -ra tests/fault

## soak: 50,000 tasks over 10 minutes with a broker restart and an endpoint kill; counts and RSS
soak: dev
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m bench.soak

clean:
	rm -rf $(VENV) $(PEER_VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info

## dockerd: start a Docker daemon (no bridge, no iptables; containers use --network host)
dockerd:
	tools/dockerd-up

## base-image: build debian:bookworm-slim locally with debootstrap (idempotent; no registry needed)
base-image: dockerd
	tools/base-image

# ---- the appliance (README "The image", "Compose", "Apptainer") --------------------------------
.PHONY: images broker-image compose-up compose-down sif test-appliance ca-certs

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
REVISION ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
SOURCE_URL ?= $(shell git config --get remote.origin.url 2>/dev/null || echo unknown)
BASE_IMAGE ?= debian:bookworm-slim
BROKER_CI_IMAGE ?= compute-endpoint-broker:ci
PROMETHEUS_IMAGE ?= compute-endpoint-prometheus:latest
# A PEM file of extra CA certificates pip inside the build must trust (a TLS-intercepting proxy).
EXTRA_CA_CERTS ?=
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
DOCKER_BUILD = DOCKER_BUILDKIT=0 docker build --network host --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	--build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) --build-arg SOURCE=$(SOURCE_URL)

ca-certs:
	@if [ -n "$(EXTRA_CA_CERTS)" ]; then cp "$(EXTRA_CA_CERTS)" appliance/certs/extra-ca.crt; fi

## images: compute-endpoint, compute-endpoint-worker, compute-endpoint-all-in-one (VERSION + latest)
images: base-image ca-certs
	$(DOCKER_BUILD) --target worker -t compute-endpoint-worker:$(VERSION) \
		-t compute-endpoint-worker:latest .
	$(DOCKER_BUILD) --target all-in-one -t compute-endpoint-all-in-one:$(VERSION) \
		-t compute-endpoint-all-in-one:latest .
	$(DOCKER_BUILD) --target endpoint -t compute-endpoint:$(VERSION) -t compute-endpoint:latest .
	@docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' \
		| grep -E '^compute-endpoint(-worker|-all-in-one)?:$(VERSION) '

## broker-image: RabbitMQ from Debian's rabbitmq-server, for CI without a registry (BROKER_IMAGE)
broker-image: base-image
	DOCKER_BUILDKIT=0 docker build --network host --build-arg BASE_IMAGE=$(BASE_IMAGE) \
		-f appliance/broker/Dockerfile -t $(BROKER_CI_IMAGE) .

## prometheus-image: Prometheus from Debian's package on the local base (compose profile `metrics`)
.PHONY: prometheus-image
prometheus-image: base-image
	DOCKER_BUILDKIT=0 docker build --network host --build-arg BASE_IMAGE=$(BASE_IMAGE) \
		-f appliance/prometheus/Dockerfile -t $(PROMETHEUS_IMAGE) .

## compose-up: broker + web service + endpoint on the host's loopback (BROKER_IMAGE, ports: env)
compose-up: images
	$(COMPOSE) -f compose.yaml up -d

## compose-down: stop and remove the stack; its named volumes (the state) stay
compose-down:
	$(COMPOSE) -f compose.yaml down

## sif: build compute-endpoint.sif from apptainer.def (needs apptainer or singularity)
sif:
	@tool=$$(command -v apptainer || command -v singularity) || \
		{ echo "sif: apptainer (or singularity) is not installed" >&2; exit 1; }; \
	$$tool build compute-endpoint.sif apptainer.def

## worker-wheel: dist/compute_endpoint_worker-VERSION-py3-none-any.whl, all a worker_init environment needs
.PHONY: worker-wheel
worker-wheel: dev
	$(BIN)/pip wheel -q --no-deps -w dist ./worker-package
	@ls -l dist/compute_endpoint_worker-$(VERSION)-py3-none-any.whl

## test-appliance: images and compose under a real dockerd, functions run by the official SDK
test-appliance: dev peers images broker-image prometheus-image
	PATH=$(CURDIR)/$(BIN):$$PATH BROKER_IMAGE=$(BROKER_CI_IMAGE) PROMETHEUS_IMAGE=$(PROMETHEUS_IMAGE) \
		$(BIN)/pytest -q -ra -s tests/appliance

.PHONY: bench-manager bench-faults
## bench-manager: first task with a new user_endpoint_config → its result, our manager vs the official
bench-manager: dev peers
	PATH=$(CURDIR)/$(BIN):$$PATH PYTHONPATH=$(CURDIR) $(BIN)/python bench/manager_bench.py --peer-python $(PEER_VENV)/bin/python

## bench-faults: kill -9 of the task-holding process mid-flight, ours vs the official; lost counts
bench-faults: dev peers
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m bench.fault_compare --peer-python $(PEER_VENV)/bin/python

## bench-worker: one worker's microseconds per task (execute_task), memo on vs off
.PHONY: bench-worker
bench-worker: dev peers
	PYTHONPATH=$(CURDIR) $(BIN)/python bench/worker_bench.py --peer-python $(PEER_VENV)/bin/python

## bench-startup: GlobusComputeEngine start() to first result, status() cost, shutdown(wait=False)
.PHONY: bench-startup
bench-startup: dev
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python bench/startup.py

## bench-routing: soft routing vs random (funcX) vs Belady: 500 Zipf tasks over 12 docker images
.PHONY: bench-routing
bench-routing: dev dockerd
	$(BIN)/python bench/routing_bench.py

## bench-drain: a deep queue (20,000 no-ops) waiting before start, ours vs the official: tasks/s, CPU, RSS
.PHONY: bench-drain
bench-drain: dev peers
	PATH=$(CURDIR)/$(BIN):$$PATH PYTHONPATH=$(CURDIR) $(BIN)/python bench/drain_bench.py --peer-python $(PEER_VENV)/bin/python $(BENCH_ARGS)

## bench-scale: cost as the work grows (100k tasks, 1,000 task groups, 50 user endpoints, 1 GiB of 10 MB args)
.PHONY: bench-scale
bench-scale: dev peers
	PATH=$(CURDIR)/$(BIN):$$PATH PYTHONPATH=$(CURDIR) $(BIN)/python bench/scale_bench.py --peer-python $(PEER_VENV)/bin/python $(BENCH_ARGS)

## bench-hpc: on the Slurm of slurm-up, ours vs the official: first result, throughput, scale-out/in
.PHONY: bench-hpc
bench-hpc: dev peers slurm-up
	PATH=$(CURDIR)/$(BIN):$$PATH PYTHONPATH=$(CURDIR) $(BIN)/python bench/hpc_bench.py --peer-python $(PEER_VENV)/bin/python

# ---- HPC: a real Slurm on this machine (issue 14; ../shared/hpc.md) ---------------------------
.PHONY: slurm-up slurm-down test-hpc
## slurm-up: Debian's Slurm as plain daemons: munged, slurmctld, nodes c1 and c2 on 127.0.0.1 (idempotent)
slurm-up:
	tools/slurm-up

## slurm-down: stop the slurmd nodes, slurmctld and munged that slurm-up started
slurm-down:
	tools/slurm-down

## test-hpc: the official SDK -> our service -> our endpoint with SlurmProvider, tasks in real Slurm jobs
test-hpc: dev peers slurm-up
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -q -ra tests/hpc
