"""What a newcomer meets in the first hour: start-up errors in one line, one user per name from
create-user, the URLs printed at start, Sanic's lines once, a 404 that names the path, a body
nested too deeply called that, and a completed event with its exit code."""

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.api.jobdefs import sync_job
from tests.support import postgres
from tests.support.api_process import REPO_ROOT, ApiProcess


def run_api(*args, database_url: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run([sys.executable, "-m", "api", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("kelpie: ")]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# --- The command line -------------------------------------------------------------------------

def test_create_user_twice_with_one_name_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path}/kelpie.db"
    first = run_api("create-user", "alice", database_url=url)
    assert first.returncode == 0 and "API key" in first.stdout, first.stderr
    second = run_api("create-user", "alice", database_url=url)
    one_line_error(second, "alice", "already exists")
    assert "API key" not in second.stdout
    assert run_api("create-user", "bob", database_url=url).returncode == 0


def test_post_users_refuses_a_taken_name(api):
    assert api.request("POST", "/users", {"name": "first-hour-taken"})[0] == 201
    status, body = api.request("POST", "/users", {"name": "first-hour-taken"})
    assert status == 400 and body["field"] == "name", body


def test_missing_sqlite_directory_is_one_line(tmp_path):
    result = run_api("serve", "--port", "0", database_url=f"sqlite:///{tmp_path}/no/such/k.db")
    one_line_error(result, "cannot use the database", "unable to open database file")


def test_missing_postgresql_database_is_one_line():
    result = run_api("migrate", database_url=f"{postgres.HOST_URL}/kelpie_no_such_database")
    one_line_error(result, "cannot use the database", "does not exist")


def test_port_in_use_is_one_line(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_api("serve", "--host", "127.0.0.1", "--port", str(port),
                         database_url=f"sqlite:///{tmp_path}/kelpie.db")
    one_line_error(result, f"port {port}", "already in use")
    # Refused before anything started.
    assert "Starting worker" not in result.stdout + result.stderr


def test_serve_prints_its_urls_and_sanic_lines_once(tmp_path):
    log_path = tmp_path / "api.log"
    server = ApiProcess(f"sqlite:///{tmp_path}/kelpie.db", log_path=log_path)
    server.start()
    server.stop()
    log = log_path.read_text()
    base = server.url
    assert f"Kelpie API on {base}  ·  API docs {base}/docs  ·  dashboard {base}/ui" in log, log
    for sanic_line in ("Received signal SIGTERM", "Server Stopped"):
        assert log.count(sanic_line) == 1, log


# --- The HTTP API -----------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", "/nope/deeper", "/jobs/not-a-uuid"])
def test_unknown_path_is_named_in_the_404(api, path):
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(api.url + path)
    assert error.value.code == 404
    body = error.value.read().decode()
    assert f"no route GET {path}:" in body and "/docs" in body, body


def test_a_very_deep_body_is_too_deeply_nested(api, user_key):
    deep = "[" * 100_000 + "]" * 100_000
    for path in ("/jobs", "/jobs/batch"):
        request = urllib.request.Request(api.url + path, data=deep.encode(), method="POST",
                                         headers={"X-Kelpie-Key": user_key,
                                                  "Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(request)
        assert error.value.code == 400
        body = error.value.read().decode()
        assert "too deeply nested" in body and '"field":"body"' in body, body
    # Broken JSON is still called that.
    request = urllib.request.Request(api.url + "/jobs", data=b'{"command": ', method="POST",
                                     headers={"X-Kelpie-Key": user_key})
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request)
    assert "is not valid JSON" in error.value.read().decode()


def test_completed_event_carries_the_exit_code(api, user_key):
    job = api.request("POST", "/jobs", sync_job(container_group_id="exit"), key=user_key)[1]
    [claimed] = api.request("GET", "/work?machine_id=m-exit&container_group_id=exit",
                            key=user_key)[1]
    assert claimed["id"] == job["id"]
    report = {"machine_id": "m-exit", "container_group_id": "exit"}
    # A completion that names a non-zero exit contradicts itself: refused, nothing changes.
    status, body = api.request("POST", f"/jobs/{job['id']}/completed",
                               {**report, "exit_code": 3}, key=user_key)
    assert status == 400 and body["field"] == "exit_code", body
    assert api.request("GET", f"/jobs/{job['id']}", key=user_key)[1]["status"] == "running"
    # The original worker sends no exit code at all.
    assert api.request("POST", f"/jobs/{job['id']}/completed", report, key=user_key)[0] == 200
    events = api.request("GET", f"/jobs/{job['id']}/events", key=user_key)[1]["events"]
    assert events[-1]["kind"] == "completed" and events[-1]["exit_code"] == 0
