#!/usr/bin/env bash
# Builds the local cluster's programs from the pinned Go modules beside this script into
# $MATCHOPS_CACHE/bin (default: .cache/bin in the repository).
#
#   e2e/toolchain/build.sh [program ...]   (default: every program)
#
# A program is rebuilt only when its recipe changes: its module's go.mod, go.sum and Go files,
# the package it comes from and the linker flags. With every binary current this takes a
# fraction of a second and needs no Go. Programs found in $KUBEBUILDER_ASSETS (the envtest
# convention for ready-made binaries) are used from there and not built.
#
# Concurrent runs (two test sessions, `make -j`) wait for each other instead of building the
# same thing twice, and binaries are replaced by rename, so a running cluster keeps its own.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${MATCHOPS_CACHE:-$repo/.cache}
bin=$cache/bin

all_programs=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl helm)

module_of() {
  case $1 in
    kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy|kubectl) echo kubernetes ;;
    etcd) echo etcd ;;
    helm) echo helm ;;
    *) echo "build.sh: unknown program '$1' (known: ${all_programs[*]})" >&2; return 1 ;;
  esac
}

package_of() {
  case $1 in
    etcd) echo . ;;
    helm) echo helm.sh/helm/v3/cmd/helm ;;
    *) echo "k8s.io/kubernetes/cmd/$1" ;;
  esac
}

# The version a module requires of `path`, read from its go.mod (the single place it is pinned).
required_version() {
  awk -v path="$2" '($1 == "require" && $2 == path) { print $3; exit } ($1 == path) { print $2; exit }' \
    "$here/$1/go.mod"
}

ldflags_of() {
  local flags="-s -w"
  case $1 in
    kubernetes)
      # What Kubernetes' release build stamps, so `kubectl version` and /version tell the
      # release instead of v0.0.0.
      local kube minor v
      kube=$(required_version kubernetes k8s.io/kubernetes)
      minor=${kube#v1.}; minor=${minor%%.*}
      for v in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $v.gitVersion=$kube -X $v.gitMajor=1 -X $v.gitMinor=$minor"
        flags+=" -X $v.gitTreeState=clean"
      done
      ;;
    helm)
      # As helm's Makefile does: its version, and the Kubernetes version `helm template` and
      # `helm lint` assume without a cluster (the client-go minor, else 1.20).
      local helm client minor v
      helm=$(required_version helm helm.sh/helm/v3)
      client=$(required_version helm k8s.io/client-go)
      minor=${client#v0.}; minor=${minor%%.*}
      flags+=" -X helm.sh/helm/v3/internal/version.version=$helm"
      flags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
      for v in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        flags+=" -X $v.k8sVersionMajor=1 -X $v.k8sVersionMinor=$minor"
      done
      ;;
  esac
  echo "$flags"
}

stamp_of() {
  local program=$1 module
  module=$(module_of "$program")
  {
    cat "$here/$module/go.mod" "$here/$module/go.sum" "$here/$module"/*.go
    package_of "$program"
    ldflags_of "$module"
  } | sha256sum | cut -c1-16
}

current() {
  [ -x "$bin/$1" ] && [ "$(cat "$bin/.$1.stamp" 2>/dev/null)" = "$(stamp_of "$1")" ]
}

# The programs that need building: not in $KUBEBUILDER_ASSETS and missing or stale here.
wanted() {
  local p
  for p in "$@"; do
    if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/$p" ]; then continue; fi
    current "$p" || echo "$p"
  done
}

programs=("$@")
[ ${#programs[@]} -gt 0 ] || programs=("${all_programs[@]}")
for p in "${programs[@]}"; do module_of "$p" >/dev/null; done

mapfile -t todo < <(wanted "${programs[@]}")
[ ${#todo[@]} -gt 0 ] || exit 0

command -v go >/dev/null || {
  echo "build.sh: Go is not installed; it is needed to build ${todo[*]} (see docs/development.md)" >&2
  exit 1
}

mkdir -p "$bin"
exec 9>"$bin/.lock"
flock 9
# Another run may have built them while this one waited for the lock.
mapfile -t todo < <(wanted "${todo[@]}")
[ ${#todo[@]} -gt 0 ] || exit 0

staging=$(mktemp -d "$bin/.build.XXXXXX")
trap 'rm -rf "$staging"' EXIT

for module in kubernetes etcd helm; do
  names=() packages=()
  for p in "${todo[@]}"; do
    [ "$(module_of "$p")" = "$module" ] || continue
    names+=("$p")
    packages+=("$(package_of "$p")")
  done
  [ ${#names[@]} -gt 0 ] || continue
  echo "build.sh: building ${names[*]} from e2e/toolchain/$module (minutes the first time)" >&2
  start=$SECONDS
  out=$staging/
  # `go build -o DIR` names a single main package after its module directory; name it instead.
  [ ${#packages[@]} -eq 1 ] && out=$staging/${names[0]}
  (cd "$here/$module" && go build -trimpath -buildvcs=false -ldflags "$(ldflags_of "$module")" \
    -o "$out" "${packages[@]}")
  for p in "${names[@]}"; do
    mv -f "$staging/$p" "$bin/$p"
    stamp_of "$p" >"$bin/.$p.stamp"
  done
  echo "build.sh: built ${names[*]} in $((SECONDS - start))s" >&2
done
