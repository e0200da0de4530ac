"""Helpers for end-to-end tests: agent processes, jobs, buckets.

The agent command line comes from `agent_command()` alone: `python -m agent` by default, or the
frozen binary when KELPIE_AGENT_BINARY names one, so the same suite tests both.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.net import wait_until
from tests.support.processes import kill_group, stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN = str(REPO_ROOT / "examples" / "train.py")


def agent_command() -> list[str]:
    binary = os.environ.get("KELPIE_AGENT_BINARY")
    if binary:
        return [binary]
    return [sys.executable, "-m", "agent"]


class Agent:
    """One agent process with its own working directory, state file and log."""

    def __init__(self, work_dir: Path, env: dict[str, str]):
        self.work_dir = work_dir
        self.env = env
        self.log_path = work_dir.parent / f"{work_dir.name}.log"
        self.state_path = work_dir.parent / f"{work_dir.name}.state.json"
        self.process: subprocess.Popen | None = None

    def start(self) -> "Agent":
        self.work_dir.mkdir(parents=True, exist_ok=True)
        env = {**self.env, "KELPIE_WORK_DIR": str(self.work_dir),
               "KELPIE_STATE_FILE": str(self.state_path)}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                agent_command(), env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        return self

    def state(self) -> dict:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}

    def log_lines(self) -> list[dict]:
        lines = []
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return lines
        for raw in text.splitlines():
            if raw.startswith("{"):
                try:
                    lines.append(json.loads(raw))
                except ValueError:
                    pass
        return lines

    def logged(self, message_part: str) -> list[dict]:
        return [line for line in self.log_lines() if message_part in line.get("message", "")]

    def wait_logged(self, message_part: str, timeout: float = 30) -> list[dict]:
        """The lines logged so far with `message_part`, once there is one. The API can show a
        report's effect before the agent, back from that request, has logged it."""
        return wait_until(lambda: self.logged(message_part), timeout=timeout,
                          message=f"the agent never logged {message_part!r}")

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def child_pid(self) -> int | None:
        return self.state().get("child_pid")

    def signal(self, signum: int) -> None:
        """SIGTERM/SIGINT go to the agent's process, as `docker stop` sends them to PID 1 (a
        frozen binary's bootloader forwards them). SIGKILL/SIGSTOP/SIGCONT, which model the
        node itself vanishing or stalling, go to the agent's whole process group: a frozen
        binary is a wrapper process with the real agent as its child."""
        if not self.process or self.process.poll() is not None:
            return
        if signum in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCONT):
            os.killpg(self.process.pid, signum)
        else:
            self.process.send_signal(signum)

    def kill_hard(self) -> None:
        """SIGKILL the agent and its job's process group, as a vanishing node would."""
        child = self.child_pid()
        if self.process and self.process.poll() is None:
            self.signal(signal.SIGKILL)
            self.process.wait()
        if child:
            kill_group(child)

    def stop(self, timeout: float = 20) -> int | None:
        code = stop_process(self.process, timeout=timeout, escalate=self.kill_hard)
        child = self.child_pid()
        if child:
            kill_group(child)  # a job the agent left behind must not outlive the test
        return code


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def train_command(steps: int, step_seconds: float, *extra: str) -> dict:
    return {"command": sys.executable,
            "arguments": [TRAIN, "--steps", str(steps), "--step-seconds", str(step_seconds),
                          *extra]}


def sync_block(bucket: str, root: str, *, checkpoint_pattern: str | None = None) -> dict:
    """The usual sync shape: inputs and checkpoints down, checkpoints up while running,
    outputs up at the end; local paths relative to the agent's work dir."""
    return {
        "before": [
            {"bucket": bucket, "prefix": f"{root}/inputs/", "local_path": "inputs",
             "direction": "download"},
            {"bucket": bucket, "prefix": f"{root}/checkpoints/", "local_path": "checkpoints",
             "direction": "download"},
        ],
        "during": [
            {"bucket": bucket, "prefix": f"{root}/checkpoints/", "local_path": "checkpoints",
             "direction": "upload", "pattern": checkpoint_pattern},
        ],
        "after": [
            {"bucket": bucket, "prefix": f"{root}/outputs/", "local_path": "outputs",
             "direction": "upload"},
        ],
    }


class Jobs:
    """Submitting and watching jobs as one user of the API."""

    def __init__(self, api, key: str, container_group_id: str):
        self.api, self.key, self.group = api, key, container_group_id

    def submit(self, **job) -> dict:
        job.setdefault("container_group_id", self.group)
        status, body = self.api.request("POST", "/jobs", job, key=self.key)
        assert status in (200, 201, 202), (status, body)
        return body

    def get(self, job_id: str) -> dict:
        status, body = self.api.request("GET", f"/jobs/{job_id}", key=self.key)
        assert status == 200, (status, body)
        return body

    def cancel(self, job_id: str) -> dict:
        status, body = self.api.request("DELETE", f"/jobs/{job_id}", key=self.key)
        assert status in (200, 202), (status, body)
        return body

    def wait_status(self, job_id: str, *statuses: str, timeout: float = 60,
                    agents=()) -> dict:
        def reached():
            job = self.get(job_id)
            return job if job["status"] in statuses else None
        try:
            return wait_until(reached, timeout=timeout, interval=0.1)
        except TimeoutError:
            job = self.get(job_id)
            logs = "\n".join(f"--- {a.log_path.name}\n{a.output()[-4000:]}" for a in agents)
            raise AssertionError(f"job {job_id} is {job['status']}, not {statuses}\n"
                                 f"{json.dumps(job, indent=1)}\n{logs}") from None


def object_keys(s3, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def read_object(s3, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
