"""The `kelpie` executable in an empty root: no libc, no loader, no Python, no CA certificates.

If it runs here it runs on any x86-64 Linux image: old or new glibc, musl, distroless, scratch.
Everything it talks to is on 127.0.0.1 (a chroot has no /etc/hosts, so addresses are literal);
KELPIE_IMDS_URL points at a loopback stand-in and AWS_EC2_METADATA_DISABLED keeps botocore away
from 169.254.169.254.
"""

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from agent import config as agent_config
from agent.version import __version__
from tests.build.tls import TlsWorkServer, make_test_pki
from tests.support.api_process import ApiProcess
from tests.support.imds import FakeImds
from tests.support.net import wait_until
from tests.support.processes import stop_process
from tests.support.seaweed import SeaweedFS

pytestmark = pytest.mark.slow

MiB = 1024 * 1024


def agent_env(api_url: str, api_key: str, imds: FakeImds, **extra: str) -> dict:
    """The agent's whole environment: only what a user's container would set."""
    return {
        "KELPIE_API_URL": api_url,
        "KELPIE_API_KEY": api_key,
        "SALAD_MACHINE_ID": "empty-root",
        "KELPIE_IMDS_URL": imds.url,
        "AWS_EC2_METADATA_DISABLED": "true",
        "HEARTBEAT_INTERVAL_S": "0.2",
        # What Docker sets for a user with no /etc/passwd entry, which is the case here.
        "HOME": "/",
        **extra,
    }


def log_tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def wait_for_job(api: ApiProcess, key: str, job_id: str, agent: subprocess.Popen,
                 log_path: Path, timeout: float = 120) -> dict:
    """The job once it is final; fails at once, with the agent's log, if the agent dies."""
    deadline = time.monotonic() + timeout
    while True:
        _, body = api.request("GET", f"/jobs/{job_id}", key=key)
        if body["status"] in ("completed", "failed", "canceled"):
            return body
        if body["num_failures"]:
            pytest.fail(f"the attempt failed:\n{log_tail(log_path)}")
        if agent.poll() is not None:
            pytest.fail(f"the agent exited with {agent.returncode}:\n{log_tail(log_path)}")
        if time.monotonic() > deadline:
            pytest.fail(f"job still {body['status']} after {timeout}s:\n{log_tail(log_path)}")
        time.sleep(0.2)


def stop_agent(process: subprocess.Popen, timeout: float = 30) -> int:
    """SIGTERM, as `docker stop` sends it, through both bootloaders to the agent; -9 when it
    had to be killed."""
    return stop_process(process, timeout=timeout)


def test_version_in_empty_root(empty_root):
    """An image FROM scratch has no /tmp: the executable makes the one every Linux system has
    (both unpack stages need it), and leaves nothing in it."""
    assert not (empty_root.path / "tmp").exists()
    result = empty_root.run("/kelpie", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == __version__
    tmp = (empty_root.path / "tmp").stat()
    assert stat.S_ISDIR(tmp.st_mode) and stat.S_IMODE(tmp.st_mode) == 0o1777
    assert empty_root.leftovers_in_tmp() == []


def test_tmpdir_is_honoured_and_then_no_tmp_is_made(empty_root):
    (empty_root.path / "scratch").mkdir()
    result = empty_root.run("/kelpie", "--version", env={"TMPDIR": "/scratch"})
    assert result.returncode == 0, result.stderr
    assert not (empty_root.path / "tmp").exists()
    assert empty_root.leftovers_in_tmp("scratch") == []


def test_no_tmp_and_no_right_to_make_one_is_one_clear_line(empty_root):
    """A user who may not write to / (USER nobody in an image with no /tmp) is told what to
    do, in one line."""
    result = empty_root.run("/kelpie", "--version", user="65534:65534")
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Failed to create temporary directory in /tmp" in result.stderr
    assert "set TMPDIR" in result.stderr


def test_help_lists_every_setting(empty_root):
    result = empty_root.run("/kelpie", "--help")
    assert result.returncode == 0, result.stderr
    for setting in agent_config.SETTINGS:
        for name in setting.names:
            assert name in result.stdout


def test_whole_job_in_empty_root(empty_root, tmp_path):
    """Download inputs, run a command, upload outputs, report completed: all from the root.

    The root has no program but kelpie, so the job's command is `/kelpie --version`, and the
    outputs are the downloaded inputs sent back under another prefix. One input is large
    enough to go down and up in parallel parts (threads in the frozen interpreter).
    """
    bucket = "kelpie-empty-root"
    inputs = {"a.txt": b"hello from the bucket\n", "deep/b.bin": os.urandom(6 * MiB)}
    with SeaweedFS(buckets=(bucket,)) as s3, FakeImds() as imds, \
            ApiProcess(f"sqlite:///{tmp_path}/kelpie.db", log_path=tmp_path / "api.log") as api:
        storage = s3.client()
        for name, data in inputs.items():
            storage.put_object(Bucket=bucket, Key=f"inputs/{name}", Body=data)
        key = api.create_user("empty-root")
        status, job = api.request("POST", "/jobs", {
            "command": "/kelpie",
            "arguments": ["--version"],
            "heartbeat_interval": 1,
            "sync": {
                "before": [{"bucket": bucket, "prefix": "inputs/", "local_path": "/data/",
                            "direction": "download"}],
                "during": [{"bucket": bucket, "prefix": "checkpoints/",
                            "local_path": "/checkpoints/", "direction": "upload"}],
                "after": [{"bucket": bucket, "prefix": "outputs/", "local_path": "/data/",
                           "direction": "upload"}],
            },
        }, key=key)
        assert status == 202, job

        env = agent_env(api.url, key, imds, **s3.env,
                        # the directory watcher through ctypes, not its polling fallback
                        FILE_WATCHER_MODE="inotify",
                        KELPIE_MULTIPART_THRESHOLD_MB="5", KELPIE_MULTIPART_CHUNK_MB="5")
        log_path = tmp_path / "agent.log"
        agent = empty_root.popen("/kelpie", env=env, log_path=log_path)
        try:
            final = wait_for_job(api, key, job["id"], agent, log_path)
            assert final["status"] == "completed", log_tail(log_path)
        finally:
            exit_code = stop_agent(agent)

        for name, data in inputs.items():
            got = storage.get_object(Bucket=bucket, Key=f"outputs/{name}")["Body"].read()
            assert got == data, name
        assert imds.calls, "the agent never reached the IMDS stand-in"

    assert exit_code == 0, log_tail(log_path)
    # The command's own output (`kelpie --version` run by the agent) streams through.
    assert __version__ in log_path.read_text().splitlines()
    assert empty_root.leftovers_in_tmp() == []


def test_https_uses_bundled_cas_and_ssl_cert_file(empty_root, tmp_path):
    """With no CA file anywhere in the root, certificates are still verified (against the
    bundle inside the executable, which does not know our test CA); SSL_CERT_FILE adds one."""
    ca, cert, key = make_test_pki(tmp_path)
    (empty_root.path / "ca.pem").write_bytes(ca.read_bytes())
    with TlsWorkServer(cert, key) as server, FakeImds() as imds:
        env = agent_env(server.url, "not-checked", imds)

        agent = empty_root.popen("/kelpie", env=env, log_path=tmp_path / "default.log")
        try:
            wait_until(lambda: server.handshake_errors, timeout=30,
                       message="the agent never tried to connect")
        finally:
            assert stop_agent(agent) == 0
        assert server.requests == []
        assert any("unknown ca" in error for error in server.handshake_errors), \
            server.handshake_errors

        env["SSL_CERT_FILE"] = "/ca.pem"
        agent = empty_root.popen("/kelpie", env=env, log_path=tmp_path / "override.log")
        try:
            try:
                wait_until(lambda: any(p.startswith("/work") for p in server.requests),
                           timeout=30)
            except TimeoutError:
                pytest.fail("no poll got through:\n" + log_tail(tmp_path / "override.log"))
        finally:
            assert stop_agent(agent) == 0



def test_client_commands_in_empty_root(empty_root, tmp_path):
    """`kelpie jobs ...` from the frozen executable: urllib3 and the client are in the bundle,
    and the exit codes come back through both unpack stages."""
    with ApiProcess(f"sqlite:///{tmp_path}/kelpie.db", log_path=tmp_path / "api.log") as api:
        key = api.create_user("empty-root-client")
        env = {"KELPIE_API_URL": api.url, "KELPIE_API_KEY": key}
        job = {"command": "/kelpie", "arguments": ["--version"],
               "sync": {"after": [{"bucket": "outputs", "prefix": "out/", "local_path": "/out/",
                                   "direction": "upload"}]}}
        result = empty_root.run("/kelpie", "jobs", "submit", "-", env=env, stdin=json.dumps(job))
        assert result.returncode == 0, result.stderr
        job_id = result.stdout.strip()

        result = empty_root.run("/kelpie", "jobs", "list", "--json", env=env)
        assert result.returncode == 0, result.stderr
        assert [j["id"] for j in json.loads(result.stdout)["jobs"]] == [job_id]

        result = empty_root.run("/kelpie", "jobs", "cancel", job_id, env=env)
        assert result.returncode == 0, result.stderr
        result = empty_root.run("/kelpie", "jobs", "get", job_id, "--watch", env=env)
        assert result.returncode == 5, result.stderr  # the watched job ended canceled
        result = empty_root.run("/kelpie", "jobs", "cancel", job_id, env=env)
        assert result.returncode == 1 and "409" in result.stderr
    result = empty_root.run("/kelpie", "jobs", "list", env=env)
    assert result.returncode == 3, result.stderr  # the API is gone
