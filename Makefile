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

# CLUSTER_FLAGS= (empty) runs the control plane alone, without root.
CLUSTER_FLAGS ?= --node

.PHONY: cluster
cluster: sync toolchain ## run a local Kubernetes cluster with a node (root) until Ctrl-C (see docs/development.md)
	$(UV) run --locked python -m matchops_devenv cluster up $(CLUSTER_FLAGS)

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
	$(PYTEST) --durations=15

.PHONY: test-fast
test-fast: ## run the unit tests only (no broker, database or cluster)
	$(UV) run pytest -m "not integration"

# DEMO_FLAGS=--keep keeps the demo's cluster, broker and database running until Ctrl-C.
DEMO_FLAGS ?=

.PHONY: demo
demo: sync toolchain ## the whole pipeline on a local cluster: operator, scraper Job, autoscaled workers (root)
	$(UV) run --locked python -m matchops_devenv demo-cluster $(DEMO_FLAGS)

.PHONY: demo-worker
demo-worker: sync ## run the worker alone on a sample season against a local RabbitMQ and PostgreSQL
	$(UV) run --locked python -m matchops_devenv demo

.PHONY: e2e
e2e: sync toolchain ## the end-to-end scenarios on the local cluster with a node (root)
	$(PYTEST) tests/e2e

# kind: the same scenarios on a kind cluster, for machines with Docker (see docs/quickstart.md).
KIND ?= kind
KIND_CLUSTER ?= matchops-e2e

.PHONY: e2e-kind
e2e-kind: sync ## the end-to-end scenarios on a kind cluster (Docker, kind, kubectl, helm)
	KIND=$(KIND) KIND_CLUSTER=$(KIND_CLUSTER) IMG=$(IMG) e2e/kind/run.sh

.PHONY: faults
faults: sync toolchain ## the fault suite's short variants (kills, outages, poison, bad specs, security)
	$(PYTEST) tests/faults -m "not slow"

.PHONY: faults-report
faults-report: sync toolchain ## run every fault scenario, slow ones too, and write the table in docs/faults.md
	$(UV) run --locked python bench/faults.py --write docs/faults.md

.PHONY: bench
bench: sync bench-scaling ## measure worker throughput (messages/s) against a local RabbitMQ and PostgreSQL
	$(UV) run --locked python bench/worker_bench.py

.PHONY: bench-node
bench-node: sync toolchain ## time a cluster with a Ready node, its first pod and its removal (root)
	$(UV) run --locked python bench/node_startup.py

.PHONY: bench-scaling
bench-scaling: ## replay a bursty day through the autoscaler, KEDA's formula and fixed replicas
	$(UV) run --locked python bench/scaling.py

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

# Deployment: the Helm chart and the kustomize manifests carry copies of crds/ (neither tool
# reads files outside its own directory); tests/deploy fails when a copy is stale.
CRD_COPIES := charts/matchops/files/crds manifests/crd
TOOLS := $(or $(MATCHOPS_CACHE),$(CURDIR)/.cache)/bin
HELM ?= $(TOOLS)/helm
KUBECTL ?= $(shell command -v kubectl || echo $(TOOLS)/kubectl)
OVERLAY ?= base

.PHONY: manifests
manifests: ## copy the CRD from crds/ into the Helm chart and the kustomize manifests
	for dir in $(CRD_COPIES); do \
		rm -f $$dir/matchops.dev_*.yaml && cp crds/matchops.dev_*.yaml $$dir/; \
	done

.PHONY: helm-lint
helm-lint: ## helm lint --strict and helm template of the chart in both watch modes
	e2e/toolchain/build.sh helm
	$(HELM) lint --strict charts/matchops
	$(HELM) template matchops charts/matchops --namespace matchops > /dev/null
	$(HELM) template matchops charts/matchops --namespace matchops \
		--set watch.mode=cluster --set 'rbac.secretNamespaces={ingest}' > /dev/null

.PHONY: deploy
deploy: ## install the operator with kustomize into the current kube context (OVERLAY=base|overlays/namespaced|overlays/cluster-wide|overlays/local)
	$(KUBECTL) apply --server-side -k manifests/$(OVERLAY)
