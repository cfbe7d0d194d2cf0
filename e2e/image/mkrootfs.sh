#!/usr/bin/env bash
# Makes the root file system of the local Debian base image as a tarball: debootstrap's
# minbase variant of Debian 12 with Python 3.11 and what the Dockerfile's stages use (venv
# with ensurepip to install uv, CA certificates, time zones), brought up to date from the
# security suite, then cleaned of apt lists, caches, logs and docs (copyright files stay).
# Needs root. Called by `python -m matchops_devenv.images base`, which decides when to run it.
#
#   e2e/image/mkrootfs.sh OUTPUT.tar MIRROR SECURITY_MIRROR DEB_CACHE_DIR
set -euo pipefail

suite=bookworm
packages=python3,python3-venv,ca-certificates,tzdata

[ $# -eq 4 ] || { echo "usage: $0 OUTPUT.tar MIRROR SECURITY_MIRROR DEB_CACHE_DIR" >&2; exit 2; }
output=$1 mirror=$2 security_mirror=$3 deb_cache=$4

work=$(mktemp -d "$(dirname "$output")/rootfs.XXXXXX")
root=$work/rootfs
mounts_under() { awk -v p="$1/" 'index($2, p) == 1 {print $2}' /proc/self/mounts | sort -r; }
cleanup() {
  # An interrupted run may leave debootstrap's or our own mounts (even a bind of the host's
  # /dev) inside the tree: unmount them, and never delete through one that stays.
  local m
  for m in $(mounts_under "$root"); do umount -l "$m" || true; done
  if [ -n "$(mounts_under "$root")" ]; then
    echo "mkrootfs: mounts remain under $root; not removing $work" >&2
    return
  fi
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$deb_cache"
debootstrap --variant=minbase --include="$packages" --cache-dir="$deb_cache" \
  "$suite" "$root" "$mirror"

cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security_mirror
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
rm -f "$root/etc/apt/sources.list"

# Images derived from this base stay small too: no recommends, no docs but copyright files.
cat >"$root/etc/apt/apt.conf.d/90matchops" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF
cat >"$root/etc/dpkg/dpkg.cfg.d/90matchops" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF

cp /etc/resolv.conf "$root/etc/resolv.conf"
mount -t proc proc "$root/proc"
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
chroot "$root" apt-get update -q
DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get upgrade -y -q
chroot "$root" apt-get clean
umount "$root/proc"

find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
rm -rf "$root"/usr/share/{man,info,lintian}/* \
  "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
  "$root"/var/lib/dpkg/*-old "$root"/var/cache/ldconfig/aux-cache \
  "$root/usr/sbin/policy-rc.d" "$root/etc/resolv.conf" "$root/etc/hostname"
find "$root/var/log" -type f -delete
# The runtime writes these per container; an image carries none of its own.
: >"$root/etc/machine-id"

tar --numeric-owner --xattrs -C "$root" -cf "$output.tmp" .
mv "$output.tmp" "$output"
