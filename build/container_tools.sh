#!/usr/bin/env bash
# Installs what the container tests (tests/build/test_containers.py) need, from Debian, when it is
# missing: podman and runc (the engine; on this kind of machine podman runs containers with
# runc), busybox-static (the one file the small "image with a shell" is built from, since no
# image registry is reachable) and debootstrap (the Debian root of the API image's base). Needs
# root for apt; without it, says what is missing and exits 1.
set -euo pipefail

packages=()
command -v podman >/dev/null || packages+=(podman)
command -v runc >/dev/null || packages+=(runc)
# The static build: a dynamically linked busybox could not run in an image with no C library.
dpkg -s busybox-static >/dev/null 2>&1 || packages+=(busybox-static)
# The Debian root of the API image's base (build/python_base_image.sh).
command -v debootstrap >/dev/null || packages+=(debootstrap)
if [ ${#packages[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "container-tools: need ${packages[*]} (apt), run as root or install them" >&2
  exit 1
fi
echo "container-tools: installing ${packages[*]}" >&2
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${packages[@]}"
