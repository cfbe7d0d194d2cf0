# matchops: common tasks. `make help` lists them.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
UV ?= uv
PYTEST := $(UV) run --locked pytest

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

.PHONY: deps
deps: ## install system packages (RabbitMQ, PostgreSQL, containerd, podman, uv) where missing
	e2e/install-deps.sh

.PHONY: sync
sync: deps ## install the Python environment from uv.lock
	$(UV) sync --locked

.PHONY: toolchain
toolchain: ## build etcd, Kubernetes and helm from the pinned Go modules into the cache
	e2e/toolchain/build.sh

.PHONY: cluster
cluster: sync toolchain ## run a local Kubernetes control plane until Ctrl-C (see docs/development.md)
	$(UV) run --locked python -m matchops_devenv cluster up

.PHONY: lint
lint: sync ## ruff check, ruff format --check, mypy
	$(UV) run --locked ruff check .
	$(UV) run --locked ruff format --check .
	$(UV) run --locked mypy

.PHONY: fmt
fmt: ## format the code
	$(UV) run ruff format .
	$(UV) run ruff check --fix .

.PHONY: test
test: sync toolchain ## run the whole test suite (unit and real-system tests)
	$(PYTEST)

.PHONY: test-fast
test-fast: ## run the unit tests only (no broker, database or cluster)
	$(UV) run pytest -m "not integration"

IMG ?= localhost/matchops:dev
CONTAINER_TOOL ?= docker

.PHONY: base-image
base-image: deps ## make the Debian base image from Debian packages (root, first time only)
	$(UV) run --locked python -m matchops_devenv images base

.PHONY: image
image: deps ## build the image with podman on the local Debian base (IMG=localhost/matchops:dev)
	$(UV) run --locked python -m matchops_devenv images project --tag $(IMG)

.PHONY: docker-build
docker-build: ## build the image from the public Python base (CONTAINER_TOOL=docker, IMG=...)
	$(CONTAINER_TOOL) build -t $(IMG) .
