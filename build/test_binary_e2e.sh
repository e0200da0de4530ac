#!/usr/bin/env bash
# The frozen agent under test: builds dist/kelpie (or keeps an up-to-date one), then runs the
# end-to-end suite with the binary in place of `python -m agent`. (tests/build, the empty-root
# and container checks, always runs the binary and is part of `make test`, so it is not run a
# second time here.) Extra arguments go to pytest (e.g. -x, -k).
set -euo pipefail
cd "$(dirname "$0")/.."

bash build/build_agent.sh
KELPIE_AGENT_BINARY="$PWD/dist/kelpie" exec .venv/bin/python -m pytest tests/e2e "$@"
