#!/usr/bin/env bash
# Make localhost/streaminfer-base:bookworm (Debian minbase, python3, python3-venv) with
# debootstrap, for hosts without a container registry; kept once made.  Users with a
# registry build on python:3.11-slim instead: `--build-arg BASE=python:3.11-slim`.
set -euo pipefail
IMAGE=${1:-localhost/streaminfer-base:bookworm}
if podman image exists "$IMAGE"; then
  exit 0
fi
# The Debian mirror this host's apt already uses.
MIRROR=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
  awk '($1 == "URIs:" || $1 == "deb") && $2 ~ /^http/ && $2 !~ /security/ {print $2; exit}' || true)
ROOTFS=$(mktemp -d)
trap 'rm -rf "$ROOTFS"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv bookworm "$ROOTFS" "${MIRROR:-http://deb.debian.org/debian}"
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
tar -C "$ROOTFS" -c . | podman import - "$IMAGE"
