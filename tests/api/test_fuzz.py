"""schemathesis generates requests from our OpenAPI document: no input may produce a 5xx."""

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def fuzz_api(database_url, api_server):
    # Its own server and database: the fuzzer also calls the administrator's destructive routes.
    # Long polls capped at a tenth of a second: every generated `wait` would otherwise hold its
    # request for up to the documented 30 s, which is most of the run and tests nothing more.
    return api_server(database_url, env={"KELPIE_MAX_POLL_WAIT_S": "0.1"})


def test_no_generated_input_causes_a_server_error(fuzz_api, tmp_path):
    schemathesis = Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [str(schemathesis), "run", f"{fuzz_api.url}/docs/openapi.json",
         "--checks", "not_a_server_error",
         "--max-examples", os.environ.get("KELPIE_FUZZ_EXAMPLES", "30"),
         "--header", f"X-Kelpie-Key: {fuzz_api.admin_key}",
         "--request-timeout", "20", "--seed", "1", "--generation-deterministic",
         "--suppress-health-check", "all"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1"},
    )
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    # The run really exercised the API.
    assert "passed" in result.stdout.lower(), report
