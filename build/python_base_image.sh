#!/usr/bin/env bash
# Builds a local stand-in for the `python:3.11-slim-bookworm` image that build/api.Dockerfile
# starts FROM, for machines that reach Debian's packages and PyPI but no image registry (CI
# here). Usage: bash build/python_base_image.sh [TAG]; prints the tag. Kept once built: remove
# it with `podman rmi TAG` (make clean does).
#
# 1. debootstrap: a minimal Debian 12 root from Debian's own packages, imported into podman.
# 2. Debian's python3.11 in a virtual environment at /opt/python, first on PATH, so `python`
#    and `pip install` work as in the official image (Debian's own Python refuses pip installs
#    outside a virtual environment).
# 3. This machine's CA bundle as the image's, and pip pointed at it: where HTTPS goes through
#    an inspecting proxy, the proxy's CA is in the host's bundle and nowhere else.
set -euo pipefail

TAG=${1:-localhost/kelpie-python-base:3.11-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
podman() { command podman --runtime=runc "$@"; }

if podman image exists "$TAG"; then
  echo "$TAG"; exit 0
fi
for tool in podman debootstrap; do
  command -v "$tool" >/dev/null || {
    echo "python-base-image: $tool is missing (bash build/container_tools.sh)" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "python-base-image: debootstrap bookworm from $MIRROR (about a minute)" >&2
debootstrap --variant=minbase bookworm "$work/root" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
rm -rf "$work"/root/var/cache/apt/archives/*.deb "$work"/root/var/lib/apt/lists/*
tar -C "$work/root" -c . | podman import - "$TAG-debian" >/dev/null

mkdir "$work/context"
cp /etc/ssl/certs/ca-certificates.crt "$work/context/ca-certificates.crt"
cat > "$work/context/Containerfile" <<CONTAINERFILE
FROM $TAG-debian
RUN apt-get update -q \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \\
      python3.11-venv ca-certificates \\
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \\
 && python3.11 -m venv /opt/python
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]
CONTAINERFILE
podman build -q --pull=never --network=host -t "$TAG" "$work/context" >/dev/null
podman rmi "$TAG-debian" >/dev/null
echo "$TAG"
