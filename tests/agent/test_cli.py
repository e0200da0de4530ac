"""`kelpie jobs ...`, the client in the agent's executable, run as a real process against the real
API on loopback (SQLite: the client sees only HTTP, and tests/api covers both databases).

Each test checks what a person reads and what a script relies on: the output, `--json`, and
the exit code (0 ok, 1 refused, 2 usage, 3 unreachable, 4 watched job failed, 5 canceled).
"""

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from agent import config as agent_config
from tests.support.api_process import ApiProcess
from tests.support.loopback_http import LoopbackServer
from tests.support.net import free_port, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cli-api")
    with ApiProcess(f"sqlite:///{directory}/kelpie.db", log_path=directory / "api.log") as server:
        yield server


@pytest.fixture
def key(api, request):
    return api.create_user("cli-" + request.node.name[:40] + "-" + uuid.uuid4().hex[:6])


def client_env(url: str, key: str | None = None, **extra) -> dict:
    # Only what the client reads, so nothing from the test's own environment leaks in.
    env = {"PATH": "/usr/bin:/bin", "KELPIE_API_URL": url, **extra}
    if key is not None:
        env["KELPIE_API_KEY"] = key
    return env


def kelpie(*args: str, env: dict, stdin: str | None = None, timeout: float = 60):
    return subprocess.run([sys.executable, "-m", "agent", "jobs", *args], cwd=REPO_ROOT,
                          env=env, input=stdin, capture_output=True, text=True, timeout=timeout)


def job_spec(**overrides) -> dict:
    return {"command": "python", "arguments": ["train.py", "--epochs", "3"],
            "container_group_id": "cli-group",
            "sync": {"after": [{"bucket": "cli-bucket", "prefix": "outputs/",
                                "local_path": "outputs/", "direction": "upload"}]},
            **overrides}


def work_as(api: ApiProcess, key: str, machine: str, group: str = "cli-group") -> dict:
    """Claim the next job as a worker on `machine` would (the worker protocol, by hand)."""
    status, body = api.request("GET", f"/work?machine_id={machine}&container_group_id={group}",
                               key=key)
    assert status == 200 and body, (status, body)
    return body[0]


def report(api: ApiProcess, key: str, job_id: str, outcome: str, machine: str, **extra):
    status, body = api.request("POST", f"/jobs/{job_id}/{outcome}",
                               {"machine_id": machine, "container_group_id": "cli-group",
                                **extra}, key=key)
    assert status in (200, 202), (status, body)


def count_jobs(api: ApiProcess, key: str) -> int:
    return api.request("GET", "/jobs", key=key)[1]["_count"]


# --- submit ---------------------------------------------------------------------------------

def test_submit_a_file_prints_the_id_and_the_job_exists(api, key, tmp_path):
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job_spec()))
    result = kelpie("submit", str(path), env=client_env(api.url, key))
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert str(uuid.UUID(job_id)) == job_id
    assert "submitted 1 job" in result.stderr
    status, job = api.request("GET", f"/jobs/{job_id}", key=key)
    assert status == 200 and job["arguments"] == ["train.py", "--epochs", "3"]


def test_submit_from_stdin_as_json(api, key):
    result = kelpie("submit", "-", "--json", env=client_env(api.url, key),
                    stdin=json.dumps(job_spec()))
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["status"] == "pending" and job["container_group_id"] == "cli-group"


def test_a_list_is_submitted_as_one_batch(api, key, tmp_path):
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps([job_spec(arguments=[str(n)]) for n in range(3)]))
    result = kelpie("submit", str(path), env=client_env(api.url, key))
    assert result.returncode == 0, result.stderr
    ids = result.stdout.split()
    assert len(ids) == 3 and len(set(ids)) == 3
    assert count_jobs(api, key) == 3


def test_a_bad_job_is_refused_with_the_field_named_and_nothing_is_created(api, key):
    result = kelpie("submit", "-", "--json", env=client_env(api.url, key),
                    stdin=json.dumps(job_spec(max_failures="many")))
    assert result.returncode == 1
    assert "max_failures" in result.stderr and "400" in result.stderr
    assert json.loads(result.stdout)["field"] == "max_failures"  # the API's error, for scripts
    # A batch with one bad job is refused whole.
    batch = [job_spec(), job_spec(command="")]
    result = kelpie("submit", "-", env=client_env(api.url, key), stdin=json.dumps(batch))
    assert result.returncode == 1
    assert "[1]" in result.stderr
    assert count_jobs(api, key) == 0


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[]", "empty list"),
    ('"a string"', "must hold a job"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_unusable_job_files_are_usage_errors_and_nothing_is_sent(api, key, tmp_path, content,
                                                                 message):
    path = tmp_path / "job.json"
    path.write_text(content)
    result = kelpie("submit", str(path), env=client_env(api.url, key))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert count_jobs(api, key) == 0


def test_a_missing_file_is_a_usage_error(api, key, tmp_path):
    result = kelpie("submit", str(tmp_path / "nope.json"), env=client_env(api.url, key))
    assert result.returncode == 2
    assert "cannot read" in result.stderr


# --- list -----------------------------------------------------------------------------------

def test_list_filters_pages_and_prints_a_table(api, key):
    for group in ("g-a", "g-a", "g-b"):
        assert api.request("POST", "/jobs", job_spec(container_group_id=group), key=key)[0] == 202
    env = client_env(api.url, key)

    result = kelpie("list", env=env)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["ID", "STATUS", "GROUP", "FAILURES", "MACHINE", "HEARTBEAT",
                              "CREATED", "COMMAND"]
    assert len(rows) == 3 and all(" pending " in row for row in rows)

    result = kelpie("list", "--group", "g-a", "--json", env=env)
    answer = json.loads(result.stdout)
    assert answer["_count"] == 2
    assert {job["container_group_id"] for job in answer["jobs"]} == {"g-a"}

    result = kelpie("list", "--page-size", "2", "--page", "1", env=env)
    assert len(result.stdout.splitlines()) == 3  # header + 2
    assert "jobs 1-2 of 3; next page: --page 2" in result.stderr
    result = kelpie("list", "--page-size", "2", "--page", "2", "--json", env=env)
    assert len(json.loads(result.stdout)["jobs"]) == 1

    result = kelpie("list", "--status", "running", "--json", env=env)
    assert json.loads(result.stdout) == {"_count": 0, "jobs": []}


@pytest.mark.parametrize("args", [["--status", "lost"], ["--page", "0"], ["--page-size", "x"],
                                  ["--bogus"]])
def test_bad_list_arguments_are_usage_errors(api, key, args):
    result = kelpie("list", *args, env=client_env(api.url, key))
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_control_characters_from_the_api_never_reach_the_terminal(api, key):
    hostile = "python\x1b[2J\x1b]0;owned\x07"
    assert api.request("POST", "/jobs", job_spec(command=hostile), key=key)[0] == 202
    result = kelpie("list", env=client_env(api.url, key))
    assert result.returncode == 0
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "python?[2J" in result.stdout


# --- get, events, cancel --------------------------------------------------------------------

def test_get_shows_the_job_and_its_timeline(api, key):
    job = api.request("POST", "/jobs", job_spec(max_failures=2), key=key)[1]
    work_as(api, key, "machine-a")
    report(api, key, job["id"], "failed", "machine-a", exit_code=137, reason="out of memory")
    work_as(api, key, "machine-b")
    report(api, key, job["id"], "completed", "machine-b")
    env = client_env(api.url, key)

    result = kelpie("get", job["id"], env=env)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "status" in text and "completed" in text
    timeline = text.split("timeline:", 1)[1]
    kinds = [line.split()[2] for line in timeline.splitlines()
             if line.startswith("  ") and line.strip()]
    assert kinds == ["created", "assigned", "attempt_failed", "requeued", "assigned",
                     "completed"]
    assert "exit code 137" in timeline and "out of memory" in timeline
    assert "attempt 1 on machine-a:" in timeline and "attempt 2 on machine-b:" in timeline

    result = kelpie("get", job["id"], "--json", env=env)
    assert json.loads(result.stdout)["id"] == job["id"]

    result = kelpie("events", job["id"], env=env)
    assert result.returncode == 0
    header, *rows = result.stdout.splitlines()
    assert header.split()[:4] == ["AT", "EVENT", "STATUS", "MACHINE"]
    assert [row.split()[1] for row in rows] == ["created", "assigned", "attempt_failed",
                                                "requeued", "assigned", "completed"]
    result = kelpie("events", job["id"], "--json", env=env)
    assert len(json.loads(result.stdout)["events"]) == 6


def test_unknown_and_malformed_ids(api, key):
    env = client_env(api.url, key)
    for command in ("get", "events", "cancel"):
        result = kelpie(command, str(uuid.uuid4()), env=env)
        assert result.returncode == 1, (command, result.stderr)
        assert "404" in result.stderr
        result = kelpie(command, "../users", env=env)
        assert result.returncode == 2, (command, result.stderr)
        assert "not a job id" in result.stderr


def test_another_users_job_is_not_found(api, key):
    job = api.request("POST", "/jobs", job_spec(), key=key)[1]
    other = api.create_user("cli-other-" + uuid.uuid4().hex[:6])
    for command in ("get", "cancel"):
        result = kelpie(command, job["id"], env=client_env(api.url, other))
        assert result.returncode == 1 and "404" in result.stderr
    assert api.request("GET", f"/jobs/{job['id']}", key=key)[1]["status"] == "pending"


def test_cancel_then_cancel_again(api, key):
    job = api.request("POST", "/jobs", job_spec(), key=key)[1]
    env = client_env(api.url, key)
    result = kelpie("cancel", job["id"], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"canceled {job['id']}"
    assert api.request("GET", f"/jobs/{job['id']}", key=key)[1]["status"] == "canceled"
    result = kelpie("cancel", job["id"], "--json", env=env)
    assert result.returncode == 1
    assert "409" in result.stderr
    assert json.loads(result.stdout)["error"]


# --- get --watch ----------------------------------------------------------------------------

class Watch:
    """`kelpie jobs get ID --watch` running in the background, its output collected as it comes
    (by threads, so a test can wait for a line while the watch is still running)."""

    def __init__(self, job_id: str, env: dict, *extra: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agent", "jobs", "get", job_id, "--watch", "--interval",
             "0.2", *extra], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, bufsize=1)
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._readers = [threading.Thread(target=self._collect, args=(stream, into), daemon=True)
                         for stream, into in ((self.process.stdout, self.lines),
                                              (self.process.stderr, self.errors))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _collect(stream, into: list) -> None:
        for line in stream:
            into.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.errors)

    def read_until(self, fragment: str, timeout: float = 30, stream: str = "stdout") -> None:
        """Waits until a line holds `fragment`: the watch shows it while still running."""
        lines = self.lines if stream == "stdout" else self.errors

        def seen():
            if any(fragment in line for line in list(lines)):
                return True
            if self.process.poll() is not None:
                raise AssertionError(f"watch ended before {fragment!r}: {self.lines}")
            return False
        wait_until(seen, timeout=timeout, message=f"{fragment!r} not shown: {self.lines}")

    def finish(self, timeout: float = 30) -> int:
        code = self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=timeout)
        return code


def test_watch_follows_a_job_live_until_it_completes(api, key):
    job = api.request("POST", "/jobs", job_spec(heartbeat_interval=1), key=key)[1]
    watch = Watch(job["id"], client_env(api.url, key))
    try:
        watch.read_until("created")
        work_as(api, key, "machine-a")
        watch.read_until("assigned")  # shown while the job runs, not only at the end
        # machine-a vanishes: once its lease runs out, machine-b takes the job over.
        wait_until(lambda: api.request(
            "GET", "/work?machine_id=machine-b&container_group_id=cli-group", key=key)[1],
            timeout=30, interval=0.2)
        watch.read_until("heartbeat_lost")
        report(api, key, job["id"], "completed", "machine-b")
        assert watch.finish() == 0, watch.stderr
    finally:
        watch.process.kill()
    text = "".join(watch.lines)
    assert f"job {job['id']} completed" in text
    assert "no heartbeat from machine-a; handed to machine-b" in text
    kinds = [line.split()[2] for line in watch.lines if line[:2].isdigit()]
    assert kinds == ["created", "assigned", "heartbeat_lost", "assigned", "completed"]


def test_watch_exits_4_when_the_job_fails_and_prints_json_lines(api, key):
    job = api.request("POST", "/jobs", job_spec(max_failures=1), key=key)[1]
    watch = Watch(job["id"], client_env(api.url, key), "--json")
    try:
        watch.read_until('"created"')
        work_as(api, key, "machine-a")
        report(api, key, job["id"], "failed", "machine-a", exit_code=3, reason="bad data")
        assert watch.finish() == 4, watch.stderr
    finally:
        watch.process.kill()
    records = [json.loads(line) for line in watch.lines]
    assert records[-1]["job"]["status"] == "failed"
    kinds = [record["event"]["kind"] for record in records[:-1]]
    assert kinds == ["created", "assigned", "attempt_failed", "failed"]


def test_watch_exits_5_when_the_job_is_canceled(api, key):
    job = api.request("POST", "/jobs", job_spec(), key=key)[1]
    watch = Watch(job["id"], client_env(api.url, key))
    try:
        watch.read_until("created")
        assert api.request("DELETE", f"/jobs/{job['id']}", key=key)[0] == 202
        assert watch.finish() == 5, watch.stderr
    finally:
        watch.process.kill()
    assert f"job {job['id']} canceled" in "".join(watch.lines)


def test_watch_of_a_finished_job_returns_at_once(api, key):
    job = api.request("POST", "/jobs", job_spec(), key=key)[1]
    api.request("DELETE", f"/jobs/{job['id']}", key=key)
    result = kelpie("get", job["id"], "--watch", env=client_env(api.url, key))
    assert result.returncode == 5
    assert "canceled" in result.stdout.splitlines()[-1]


def test_watch_rides_out_an_api_outage(tmp_path):
    """A watched job may run for days: the API going away and coming back only delays the view."""
    api = ApiProcess(f"sqlite:///{tmp_path}/kelpie.db", log_path=tmp_path / "api.log")
    with api:
        key = api.create_user("cli-outage")
        job = api.request("POST", "/jobs", job_spec(), key=key)[1]
        watch = Watch(job["id"], client_env(api.url, key))
        try:
            watch.read_until("created")
            # The API dies (a graceful stop would wait for the watch's keep-alive connection).
            os.killpg(api.process.pid, signal.SIGKILL)
            api.process.wait()
            watch.read_until("unreachable", stream="stderr")
            api.start()
            work_as(api, key, "machine-a")
            report(api, key, job["id"], "completed", "machine-a")
            assert watch.finish() == 0, watch.stderr
        finally:
            watch.process.kill()
    assert "reachable again" in watch.stderr


# --- configuration, credentials, reachability ------------------------------------------------

def test_a_wrong_key_is_refused(api):
    result = kelpie("list", env=client_env(api.url, "not-a-key"))
    assert result.returncode == 1
    assert "403" in result.stderr or "401" in result.stderr


def test_missing_configuration_is_a_usage_error():
    result = kelpie("list", env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "KELPIE_API_URL is required" in result.stderr
    result = kelpie("list", env=client_env("http://127.0.0.1:9"))
    assert result.returncode == 2
    assert "KELPIE_API_KEY" in result.stderr
    result = kelpie("list", env=client_env("http://127.0.0.1:9", SALAD_API_KEY="s"))
    assert result.returncode == 2
    assert "SALAD_ORGANIZATION and SALAD_PROJECT" in result.stderr


def test_an_unreachable_api_exits_3():
    result = kelpie("list", env=client_env(f"http://127.0.0.1:{free_port()}", "key"))
    assert result.returncode == 3
    assert "Connection refused" in result.stderr
    assert "Traceback" not in result.stderr


class Recorder(LoopbackServer):
    """Answers like the API would and records each request."""

    def __init__(self, status: int = 200, payload=None):
        super().__init__()
        self.requests = []
        self.status = status
        self.payload = {"_count": 0, "jobs": []} if payload is None else payload

    def respond(self, request):
        self.requests.append(request)
        return self.status, self.payload


def test_salad_credentials_are_sent_as_salad_headers():
    with Recorder() as api:
        result = kelpie("list", env=client_env(api.url, SALAD_API_KEY="salad-key",
                                               SALAD_ORGANIZATION="acme",
                                               SALAD_PROJECT="training"))
    assert result.returncode == 0, result.stderr
    [request] = api.requests
    assert request.headers["Salad-Api-Key"] == "salad-key"
    assert request.headers["Salad-Organization"] == "acme"
    assert request.headers["Salad-Project"] == "training"
    assert "X-Kelpie-Key" not in request.headers


def test_reads_are_retried_through_5xx_but_a_submission_is_not_sent_twice():
    with Recorder(status=503, payload={"error": "unavailable", "message": "busy"}) as api:
        result = kelpie("list", env=client_env(api.url, "key"))
        assert result.returncode == 3
        assert len(api.requests) == 3
        api.requests.clear()
        result = kelpie("submit", "-", env=client_env(api.url, "key"),
                        stdin=json.dumps(job_spec()))
        assert result.returncode == 3
        assert len(api.requests) == 1  # it may have been applied: never sent a second time


def test_version_and_the_agent_never_load_the_client():
    probe = ("import sys\nfrom agent.__main__ import main\nmain(['--version'])\n"
             "print(sorted(m for m in sys.modules if m.startswith(('urllib3', "
             "'agent.client_cli'))))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


def test_help_lists_the_commands_settings_and_exit_codes():
    result = kelpie("--help", env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0
    for word in ("submit", "list", "get", "cancel", "events", "exit codes"):
        assert word in result.stdout
    for setting in agent_config.CLIENT_SETTINGS:
        for name in setting.names:
            assert name in result.stdout
    agent_help = subprocess.run([sys.executable, "-m", "agent", "--help"], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=60)
    assert "kelpie jobs get ID [--watch]" in agent_help.stdout
