#!/usr/bin/env bash
# Installs what the demo and the test suite need on a Debian 12 machine, and nothing that is
# already there: Debian's RabbitMQ, PostgreSQL, container runtime and image tools, and uv.
# Safe to re-run. Needs root (or sudo) only when something is missing.
set -euo pipefail

packages=(
  rabbitmq-server postgresql
  containerd runc containernetworking-plugins podman buildah debootstrap
  iptables conntrack iproute2 socat
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

if ! command -v uv >/dev/null 2>&1; then
  echo "installing uv" >&2
  python3 -m pip install --quiet uv
fi
