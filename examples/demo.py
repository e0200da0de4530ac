"""`make demo`: Kelpie surviving a node loss, start to finish, on this machine alone.

Starts SeaweedFS (S3 storage), the Kelpie API on SQLite and a worker agent; uploads inputs;
submits examples/train.py, a job that checkpoints every step; kills the agent and its job
mid-run, as a vanishing node would; starts a second agent on "another machine", which takes the
job over once its heartbeat goes stale, resumes from the last checkpoint and completes it; lists
the outputs in the bucket; then stops everything it started. Everything listens on 127.0.0.1.

Set KELPIE_AGENT_BINARY to run a built `kelpie` binary instead of `python -m agent`.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.client_cli import render
from tests.support.api_process import ApiProcess
from tests.support.imds import FakeImds
from tests.support.net import wait_until
from tests.support.seaweed import SeaweedFS

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / ".demo"
BUCKET = "kelpie-demo"
STEPS, STEP_SECONDS = 20, 0.5
GROUP = "demo-group"


def say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def agent_command() -> list[str]:
    binary = os.environ.get("KELPIE_AGENT_BINARY")
    return [binary] if binary else [sys.executable, "-m", "agent"]


class DemoAgent:
    def __init__(self, name: str, env: dict):
        self.name = name
        self.work_dir = DEMO_DIR / name
        self.work_dir.mkdir(parents=True)
        self.log_path = DEMO_DIR / f"{name}.log"
        self.state_path = DEMO_DIR / f"{name}.state.json"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                agent_command(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**env, "SALAD_MACHINE_ID": name, "KELPIE_WORK_DIR": str(self.work_dir),
                     "KELPIE_STATE_FILE": str(self.state_path)})

    def child_pid(self) -> int | None:
        try:
            return json.loads(self.state_path.read_text()).get("child_pid")
        except (OSError, ValueError):
            return None

    def kill_hard(self) -> None:
        child = self.child_pid()
        # The whole group: a frozen binary is a wrapper with the real agent as its child.
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        if child:
            try:
                os.killpg(child, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill_hard()


def latest_step(s3) -> int:
    answer = s3.list_objects_v2(Bucket=BUCKET, Prefix="demo/checkpoints/")
    steps = [int(o["Key"].rsplit("step-", 1)[1].split(".")[0])
             for o in answer.get("Contents", []) if o["Key"].endswith(".ckpt")]
    return max(steps, default=0)


def main() -> int:
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    DEMO_DIR.mkdir()
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    started = []
    try:
        say("starting SeaweedFS (S3 storage on 127.0.0.1) ...")
        store = SeaweedFS(data_dir=DEMO_DIR / "seaweed", buckets=(BUCKET,))
        (DEMO_DIR / "seaweed").mkdir()
        started.append(store.start())
        say(f"  S3 endpoint {store.endpoint}")
        say("starting the Kelpie API on SQLite ...")
        api = ApiProcess(f"sqlite:///{DEMO_DIR / 'kelpie.db'}", log_path=DEMO_DIR / "api.log")
        started.append(api.start())
        say(f"  API {api.url}")
        imds = FakeImds().start()  # stands in for Salad's metadata service
        started.append(imds)
        key = api.create_user("demo")
        say(f"  dashboard {api.url}/ui (sign in with key {key}; open while the demo runs)")

        s3 = store.client()
        s3.put_object(Bucket=BUCKET, Key="demo/inputs/corpus.txt", Body=b"the quick brown fox\n")
        s3.put_object(Bucket=BUCKET, Key="demo/inputs/labels.csv", Body=b"id,label\n1,fox\n")
        say("uploaded inputs: s3://kelpie-demo/demo/inputs/{corpus.txt,labels.csv}")

        job_spec = {
            "command": sys.executable,
            "arguments": [str(REPO / "examples" / "train.py"), "--steps", str(STEPS),
                          "--step-seconds", str(STEP_SECONDS), "--input-dir", "inputs",
                          "--checkpoint-dir", "checkpoints", "--output-dir", "outputs"],
            "container_group_id": GROUP, "heartbeat_interval": 2,
            "sync": {
                "before": [
                    {"bucket": BUCKET, "prefix": "demo/inputs/", "local_path": "inputs",
                     "direction": "download"},
                    {"bucket": BUCKET, "prefix": "demo/checkpoints/", "local_path": "checkpoints",
                     "direction": "download"}],
                "during": [{"bucket": BUCKET, "prefix": "demo/checkpoints/",
                            "local_path": "checkpoints", "direction": "upload"}],
                "after": [{"bucket": BUCKET, "prefix": "demo/outputs/", "local_path": "outputs",
                           "direction": "upload"}]},
        }
        status, job = api.request("POST", "/jobs", job_spec, key=key)
        assert status == 202, (status, job)
        say(f"submitted job {job['id']}: train.py, {STEPS} steps, a checkpoint after each")

        env = {**os.environ, **store.env, "KELPIE_API_URL": api.url, "KELPIE_API_KEY": key,
               "KELPIE_IMDS_URL": imds.url, "SALAD_CONTAINER_GROUP_ID": GROUP,
               "HEARTBEAT_INTERVAL_S": "0.5", "PYTHONUNBUFFERED": "1"}
        first = DemoAgent("machine-a", env)
        started.append(first)
        say("started agent on machine-a; waiting for a few checkpoints to reach the bucket ...")
        wait_until(lambda: latest_step(s3) >= 6, timeout=120, interval=0.2)
        say(f"  checkpoint step {latest_step(s3)} is in the bucket")

        first.kill_hard()
        lost_at = latest_step(s3)
        say(f"machine-a VANISHED (agent and job SIGKILLed) at checkpoint step {lost_at}")

        second = DemoAgent("machine-b", env)
        started.append(second)
        say("started agent on machine-b; it takes the job once machine-a's heartbeat is stale")

        def job_status():
            return api.request("GET", f"/jobs/{job['id']}", key=key)[1]

        wait_until(lambda: job_status()["machine_id"] == "machine-b", timeout=60, interval=0.2)
        say("  machine-b claimed the job")
        done = wait_until(lambda: (lambda j: j if j["status"] in ("completed", "failed")
                                   else None)(job_status()), timeout=120, interval=0.2)
        say(f"job {done['status']} on {done['machine_id']}")
        if done["status"] != "completed":
            return 1

        result = json.loads(s3.get_object(Bucket=BUCKET, Key="demo/outputs/result.json")
                            ["Body"].read())
        say(f"resumed from checkpoint step {result['resumed_from']} (not from zero); total "
            f"{result['total']} == {STEPS * (STEPS + 1) // 2}: every step counted exactly once")
        say("objects in s3://kelpie-demo/demo/:")
        for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix="demo/").get("Contents", []):
            print(f"    {obj['Size']:>8}  {obj['Key']}")
        print_history(api.request("GET", f"/jobs/{job['id']}/events", key=key)[1]["events"])
        say(f"logs: {DEMO_DIR}/machine-a.log, machine-b.log, api.log")
        return 0
    finally:
        say("stopping everything the demo started ...")
        for thing in reversed(started):
            try:
                thing.stop()
            except Exception as error:  # noqa: BLE001 - keep stopping the rest
                say(f"  could not stop {thing}: {error}")


def print_history(events: list[dict]) -> None:
    """The job's timeline as `kelpie jobs get ID` shows it; the heartbeat_lost line is the
    story: machine-a went silent and machine-b took the job over."""
    say("the job's history (GET /jobs/:id/events, as `kelpie jobs get ID` prints it):")
    for event in events:
        marker = ">>" if event["kind"] == "heartbeat_lost" else "  "
        print(f"  {marker} {render.event_line(event)}")


def run() -> int:
    try:
        code = main()
    except Exception as error:  # noqa: BLE001 - one clear line, then the traceback
        say(f"FAILED: {error}")
        raise
    say("done: the job completed exactly once, across a lost node" if code == 0
        else f"FAILED (exit {code}); see the logs in {DEMO_DIR}")
    return code


if __name__ == "__main__":
    sys.exit(run())
