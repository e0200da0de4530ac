#!/usr/bin/env bash
# The frozen agent under test: builds dist/kelpie (or keeps an up-to-date one), then runs the
# end-to-end suite with the binary in place of `python -m agent`, and the empty-root checks.
# Extra arguments go to pytest (e.g. -x, -k).
set -euo pipefail
cd "$(dirname "$0")/.."

bash build/build_agent.sh
KELPIE_AGENT_BINARY="$PWD/dist/kelpie" exec .venv/bin/python -m pytest tests/e2e tests/build "$@"
