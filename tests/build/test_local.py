"""`make local` (examples/local.py): the API, SeaweedFS, the IMDS stand-in and an agent on
loopback, used by hand with the client exactly as the README and the script's own output say,
then stopped by Ctrl-C with nothing left running."""

import json
import shlex
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import botocore.session

from tests.support.net import free_port, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]


def read_env(path: Path) -> dict:
    env = {}
    for line in path.read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = shlex.split(value)[0]
    return env


def test_local_stack_runs_a_job_submitted_with_the_client(tmp_path):
    state = tmp_path / "dev"
    port = free_port()
    local = subprocess.Popen([sys.executable, "-m", "examples.local", "--port", str(port),
                              "--dir", str(state)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(local.stdout), daemon=True).start()
    try:
        wait_until(lambda: "[local] ready\n" in lines or local.poll() is not None, timeout=120)
        assert local.poll() is None, "".join(lines)
        text = "".join(lines)
        assert f"http://127.0.0.1:{port}" in text and "telemetry off" in text
        env = read_env(state / "env")
        assert env["KELPIE_API_URL"] == f"http://127.0.0.1:{port}"

        job = {"command": sys.executable,
               "arguments": ["-c", "import os; os.makedirs('out', exist_ok=True); "
                                   "open('out/result.txt', 'w').write('done by hand')"],
               "heartbeat_interval": 2,
               "sync": {"after": [{"bucket": "kelpie-local", "prefix": "by-hand/",
                                   "local_path": "out", "direction": "upload"}]}}
        client = [sys.executable, "-m", "agent", "jobs"]
        submit = subprocess.run([*client, "submit", "-"], input=json.dumps(job), env=env,
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert submit.returncode == 0, submit.stderr
        job_id = submit.stdout.strip()
        watch = subprocess.run([*client, "get", job_id, "--watch", "--interval", "0.5"],
                               env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=120)
        assert watch.returncode == 0, watch.stdout + watch.stderr + "".join(lines)
        s3 = botocore.session.get_session().create_client(
            "s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        got = s3.get_object(Bucket="kelpie-local", Key="by-hand/result.txt")["Body"].read()
        assert got == b"done by hand"
        # The sample job the script wrote is a valid job for this API.
        sample = subprocess.run([*client, "submit", str(state / "job.json")], env=env,
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert sample.returncode == 0, sample.stderr
    finally:
        local.send_signal(signal.SIGINT)
        code = local.wait(timeout=60)
    assert code == 0, "".join(lines)
    assert "[local] stopped\n" in lines
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
        raise AssertionError("the API still answers after Ctrl-C")
    except OSError:
        pass
