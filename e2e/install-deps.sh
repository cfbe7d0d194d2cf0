#!/usr/bin/env bash
# Installs what the demo and the test suite need on a Debian 12 machine, and nothing that is
# already there: Debian's RabbitMQ, PostgreSQL, container runtime and image tools, and uv.
# Safe to re-run. Needs root (or sudo) only when something is missing.
set -euo pipefail

packages=(
  make rabbitmq-server postgresql
  # uv is installed into a virtual environment where the system Python refuses pip (PEP 668)
  python3-venv
  containerd runc containernetworking-plugins podman buildah debootstrap
  iptables conntrack iproute2 socat
  # the node's pause image is a static C program compiled here
  gcc libc6-dev
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}" >&2
  as_root apt-get update -q
  # Debian's packages start their services where an init system runs; the suite starts its
  # own instances on free ports, so keep the packaged services from starting.
  printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
  as_root chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends "${missing[@]}"
  as_root rm -f /usr/sbin/policy-rc.d
fi

# podman's defaults assume systemd as PID 1 (cgroup manager) and the right to raise rlimits
# (CAP_SYS_RESOURCE, for nofile/nproc); containers and CI runners often have neither, and every
# `podman run` / `podman build` then fails. Written only where no containers.conf exists yet.
containers_conf=/etc/containers/containers.conf
if command -v podman >/dev/null 2>&1 && [ ! -e "$containers_conf" ]; then
  cap_eff=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
  containers_section=""
  engine_section=""
  if (( (16#$cap_eff >> 24 & 1) == 0 )); then
    containers_section='default_ulimits = []'
  fi
  if [ ! -d /run/systemd/system ]; then
    engine_section='cgroup_manager = "cgroupfs"'$'\n''events_logger = "file"'
  fi
  if [ -n "$containers_section$engine_section" ]; then
    echo "writing $containers_conf for a host without systemd / CAP_SYS_RESOURCE" >&2
    as_root mkdir -p /etc/containers
    printf '[containers]\n%s\n\n[engine]\n%s\n' "$containers_section" "$engine_section" \
      | as_root tee "$containers_conf" >/dev/null
  fi
fi

if ! command -v uv >/dev/null 2>&1; then
  echo "installing uv" >&2
  # Debian's Python is externally managed (PEP 668): pip installs into a virtual environment
  # of its own, and uv is linked onto the PATH.
  if ! python3 -m pip install --quiet uv 2>/dev/null; then
    venv=/opt/matchops/uv
    as_root python3 -m venv "$venv"
    as_root "$venv/bin/pip" install --quiet uv
    as_root ln -sf "$venv/bin/uv" /usr/local/bin/uv
  fi
fi
