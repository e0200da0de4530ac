"""Debian's chromium driven by Playwright, for the tests of the pages the API serves (/ui,
/docs). Playwright never downloads a browser here: build/browser_tools.sh installs chromium."""

import os
import shutil
from pathlib import Path

import pytest

from tests.support.api_process import REPO_ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Screenshots for a person to look at; gitignored.
ARTIFACTS = REPO_ROOT / "test-artifacts"


def require_browser():
    """Skip the calling test module when chromium or Playwright is missing, unless
    KELPIE_REQUIRE_BROWSER=1 (CI), where that is an error. Returns playwright.sync_api."""
    reason = None
    if not Path(CHROMIUM).exists():
        reason = "chromium is not installed (bash build/browser_tools.sh installs it)"
    else:
        try:
            from playwright import sync_api
        except ImportError:
            reason = "playwright is not installed (make install)"
    if reason:
        if os.environ.get("KELPIE_REQUIRE_BROWSER") == "1":
            raise RuntimeError(f"KELPIE_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason, allow_module_level=True)
    return sync_api


def launch(sync_api):
    """A context manager that yields a headless chromium (one per test module)."""

    class _Browser:
        def __enter__(self):
            self.playwright = sync_api.sync_playwright().start()
            self.browser = self.playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            return self.browser

        def __exit__(self, *exc):
            self.browser.close()
            self.playwright.stop()

    return _Browser()


def loopback_only(page) -> list[str]:
    """Refuse every request the page makes beyond loopback (as if offline); the returned list
    collects the URLs that were tried, for the test to assert it stays empty."""
    tried = []

    def guard(route):
        url = route.request.url
        if url.startswith(("http://127.0.0.1", "data:", "blob:")):
            route.continue_()
        else:
            tried.append(url)
            route.abort()

    page.route("**/*", guard)
    return tried
