"""Swagger UI at /docs works offline: every file it loads comes from this server (the pinned
swagger-ui-bundle package), shown in a real chromium with every other address refused."""

import json
import re
import urllib.request

import pytest

from tests.support import browser as browsers
from tests.support.api_process import ApiProcess

sync_api = browsers.require_browser()


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    directory = tmp_path_factory.mktemp("docs")
    with ApiProcess(f"sqlite:///{directory / 'kelpie.db'}",
                    log_path=directory / "api.log") as server:
        yield server


def test_docs_page_names_only_local_files(api):
    with urllib.request.urlopen(api.url + "/docs") as response:
        page = response.read().decode()
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sources and all(source.startswith("/docs/") for source in sources), sources
    for source in sources:
        with urllib.request.urlopen(api.url + source) as response:
            assert response.status == 200 and len(response.read()) > 100, source
    # sanic-ext would fetch this page from a CDN on each request; ours is the package's copy.
    with urllib.request.urlopen(api.url + "/docs/oauth2-redirect.html") as response:
        assert b"oauth2" in response.read()


def test_swagger_ui_renders_offline(api):
    spec = json.load(urllib.request.urlopen(api.url + "/docs/openapi.json"))
    with browsers.launch(sync_api) as browser:
        page = browser.new_page()
        tried = browsers.loopback_only(page)
        page.goto(api.url + "/docs")
        sync_api.expect(page.locator(".swagger-ui .info .title")).to_contain_text(
            spec["info"]["title"])
        sync_api.expect(page.locator(".opblock-summary-path", has_text="/jobs/batch")).to_have_count(1)
        (browsers.ARTIFACTS / "docs").mkdir(parents=True, exist_ok=True)
        page.screenshot(path=browsers.ARTIFACTS / "docs" / "swagger.png")
        assert not tried, f"/docs tried to load from elsewhere: {tried}"
