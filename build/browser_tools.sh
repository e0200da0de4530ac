#!/usr/bin/env bash
# Installs Debian's chromium for the dashboard's browser test (tests/e2e/test_dashboard.py),
# when it is missing. Playwright drives this browser (executable_path=/usr/bin/chromium) and
# never downloads one of its own. Needs root for apt; without it, says what is missing, exits 1.
set -euo pipefail

if command -v chromium >/dev/null; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "browser-tools: need chromium (apt), run as root or install it" >&2
  exit 1
fi
echo "browser-tools: installing chromium" >&2
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium
