#!/usr/bin/env bash
# Release build: dist/kelpie and dist/kelpie.sha256, built fresh and checked in an empty root
# before anything is published. Publishing (uploading those two files under exactly those names)
# is left to the caller: .github/workflows/release.yml, or a person with `gh release upload`.
#
#   bash build/release.sh [TAG]      TAG defaults to $GITHUB_REF_NAME; when given, the binary's
#                                    --version must equal it (a leading "v" is ignored).
set -euo pipefail
cd "$(dirname "$0")/.."

tag=${1:-${GITHUB_REF_NAME:-}}

# A release never reuses a binary left over from development.
KELPIE_FORCE_BUILD=1 bash build/build_agent.sh

version=$(dist/kelpie --version)
if [ -n "$tag" ] && [ "${tag#v}" != "$version" ]; then
  echo "release: tag $tag does not match the version in agent/version.py ($version)" >&2
  exit 1
fi
(cd dist && sha256sum -c --quiet kelpie.sha256)

# The executable's own checks from tests/build: in an empty root (no /tmp) --version, --help, a
# whole job against the API and SeaweedFS on loopback, TLS trust, the client; and what went into
# the bundle. They need the dev environment for the API and SeaweedFS. (The rest of tests/build,
# containers and the make targets, is CI's.)
make install
KELPIE_AGENT_BINARY="$PWD/dist/kelpie" .venv/bin/python -m pytest tests/build/test_binary.py \
  tests/build/test_bundle.py -q -p no:cacheprovider

echo "release: dist/kelpie $version ready to publish"
cat dist/kelpie.sha256
