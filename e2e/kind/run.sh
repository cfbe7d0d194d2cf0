#!/usr/bin/env bash
# `make e2e-kind`: the end-to-end scenarios (tests/e2e) on a kind cluster, for machines with
# Docker. Creates the cluster unless it exists, builds the image from the public Python base,
# loads it into the cluster's node, and runs the tests with the cluster named by
# MATCHOPS_E2E_* (see e2e/matchops_devenv/targets.py). A cluster it created is deleted at the
# end unless KEEP=1. Extra arguments go to pytest.
#
# Needs docker, kind, and what `make sync` installs (RabbitMQ and PostgreSQL run on the host).
set -euo pipefail
cd "$(dirname "$0")/../.."

KIND=${KIND:-kind}
KIND_CLUSTER=${KIND_CLUSTER:-matchops-e2e}
IMG=${IMG:-localhost/matchops:dev}
KEEP=${KEEP:-}

for tool in docker "$KIND"; do
  command -v "$tool" >/dev/null || { echo "e2e-kind: $tool is not installed" >&2; exit 1; }
done

created=""
state=$(mktemp -d)
cleanup() {
  rm -rf "$state"
  if [ -n "$created" ] && [ -z "$KEEP" ]; then
    "$KIND" delete cluster --name "$KIND_CLUSTER"
  fi
}
trap cleanup EXIT

if ! "$KIND" get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
  image_flag=()
  [ -n "${KIND_NODE_IMAGE:-}" ] && image_flag=(--image "$KIND_NODE_IMAGE")
  "$KIND" create cluster --name "$KIND_CLUSTER" --config e2e/kind/kind-config.yaml \
    "${image_flag[@]}" --wait 120s
  created=1
fi

docker build --tag "$IMG" .
"$KIND" load docker-image "$IMG" --name "$KIND_CLUSTER"
"$KIND" get kubeconfig --name "$KIND_CLUSTER" >"$state/kubeconfig"

# Pods reach the host at the IPv4 gateway of the network kind puts its nodes on.
gateway=$(docker network inspect kind --format '{{range .IPAM.Config}}{{.Gateway}} {{end}}' \
  | tr ' ' '\n' | grep -v ':' | grep -m1 .) || {
  echo "e2e-kind: Docker's kind network has no IPv4 gateway" >&2
  exit 1
}

MATCHOPS_E2E_KUBECONFIG=$state/kubeconfig \
MATCHOPS_E2E_HOST_ADDRESS=$gateway \
MATCHOPS_E2E_IMAGE=$IMG \
  uv run --locked pytest tests/e2e "$@"
