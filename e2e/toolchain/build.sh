#!/usr/bin/env bash
# Builds the test cluster's programs from the pinned Go modules beside this script into
# $MATCHOPS_CACHE/bin (default: .cache/bin in the repository). A program is rebuilt only
# when its module's go.mod / go.sum or this script change; with the binaries present and
# current this takes well under a second. Programs found in $KUBEBUILDER_ASSETS (the envtest
# convention) are used from there and not built.
#
#   e2e/toolchain/build.sh [program ...]   (default: every program)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${MATCHOPS_CACHE:-$repo/.cache}
bin=$cache/bin
mkdir -p "$bin"

kube_version=v1.37.2
kube_minor=${kube_version#v1.}; kube_minor=${kube_minor%%.*}

module_of() {
  case $1 in
    kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy|kubectl) echo kubernetes ;;
    etcd) echo etcd ;;
    helm) echo helm ;;
    *) echo "unknown program: $1" >&2; return 1 ;;
  esac
}

package_of() {
  case $1 in
    etcd) echo . ;;
    helm) echo helm.sh/helm/v3/cmd/helm ;;
    *) echo "k8s.io/kubernetes/cmd/$1" ;;
  esac
}

stamp_of() {
  cat "$here/$1/go.mod" "$here/$1/go.sum" "$here/build.sh" | sha256sum | cut -c1-16
}

ldflags_of() {
  local flags="-s -w"
  if [ "$1" = kubernetes ]; then
    local v
    for v in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      flags+=" -X $v.gitVersion=$kube_version -X $v.gitMajor=1 -X $v.gitMinor=$kube_minor"
      flags+=" -X $v.gitTreeState=clean"
    done
  fi
  echo "$flags"
}

programs=("$@")
[ ${#programs[@]} -gt 0 ] || programs=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl helm)

declare -A todo=()
for p in "${programs[@]}"; do
  m=$(module_of "$p")
  if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/$p" ]; then
    continue
  fi
  if [ -x "$bin/$p" ] && [ "$(cat "$bin/.$p.stamp" 2>/dev/null)" = "$(stamp_of "$m")" ]; then
    continue
  fi
  todo[$m]+=" $p"
done

for m in "${!todo[@]}"; do
  read -r -a names <<<"${todo[$m]}"
  packages=()
  for p in "${names[@]}"; do packages+=("$(package_of "$p")"); done
  echo "building ${names[*]} from e2e/toolchain/$m (first build takes minutes)" >&2
  start=$SECONDS
  out=$bin
  # `go build -o DIR` names a single main package after its module directory; name it instead.
  [ ${#packages[@]} -eq 1 ] && out=$bin/${names[0]}
  (cd "$here/$m" && go build -trimpath -ldflags "$(ldflags_of "$m")" -o "$out" "${packages[@]}")
  for p in "${names[@]}"; do stamp_of "$m" >"$bin/.$p.stamp"; done
  echo "built ${names[*]} in $((SECONDS - start))s" >&2
done
