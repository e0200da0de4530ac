"""`make local`: Kelpie on this machine, off Salad, to try by hand: SeaweedFS (S3 storage), the
API on SQLite, a stand-in for Salad's instance metadata service and one agent, all on
127.0.0.1, until Ctrl-C stops them.

It writes `.dev/env` (the variables the client and S3 tools need: `. .dev/env`) and
`.dev/job.json` (a job that runs examples/train.py against the local bucket), and prints what
to type next. SeaweedFS runs with its telemetry off; KELPIE_IMDS_URL points the agent at the
loopback stand-in, so nothing ever goes to 169.254.169.254 or leaves the machine.

    python -m examples.local [--port 8787] [--dir .dev]

Set KELPIE_AGENT_BINARY to run a built `kelpie` instead of `python -m agent`.
"""

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from tests.support.api_process import ApiProcess
from tests.support.imds import FakeImds
from tests.support.net import free_port
from tests.support.seaweed import SeaweedFS

REPO = Path(__file__).resolve().parents[1]
BUCKET = "kelpie-local"
MACHINE = "local-agent"


def say(message: str) -> None:
    print(f"[local] {message}", flush=True)


def sample_job() -> dict:
    """examples/train.py: 10 steps, a checkpoint after each, resumed from the newest one."""
    return {
        "command": sys.executable,
        "arguments": [str(REPO / "examples" / "train.py"), "--steps", "10", "--step-seconds",
                      "1", "--input-dir", "inputs", "--checkpoint-dir", "checkpoints",
                      "--output-dir", "outputs"],
        "heartbeat_interval": 5,
        "sync": {
            "before": [
                {"bucket": BUCKET, "prefix": "local/inputs/", "local_path": "inputs",
                 "direction": "download"},
                {"bucket": BUCKET, "prefix": "local/checkpoints/", "local_path": "checkpoints",
                 "direction": "download"}],
            "during": [{"bucket": BUCKET, "prefix": "local/checkpoints/",
                        "local_path": "checkpoints", "direction": "upload"}],
            "after": [{"bucket": BUCKET, "prefix": "local/outputs/", "local_path": "outputs",
                       "direction": "upload"}]},
    }


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def agent_command() -> list[str]:
    binary = os.environ.get("KELPIE_AGENT_BINARY")
    return [binary] if binary else [sys.executable, "-m", "agent"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make local", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8787, help="the API's port (default 8787)")
    parser.add_argument("--dir", type=Path, default=REPO / ".dev",
                        help="where state and logs go (default .dev/, emptied first)")
    args = parser.parse_args(argv)
    state = args.dir.resolve()
    shutil.rmtree(state, ignore_errors=True)
    (state / "seaweed").mkdir(parents=True)
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    started = []
    try:
        store = SeaweedFS(data_dir=state / "seaweed", buckets=(BUCKET,),
                          log_path=state / "seaweed.log")
        started.append(store.start())
        if not port_is_free(args.port):
            say(f"port {args.port} is in use (another `make run` or `make local`?); "
                f"try: .venv/bin/python -m examples.local --port {free_port()}")
            return 1
        api = ApiProcess(f"sqlite:///{state / 'kelpie.db'}", port=args.port,
                         log_path=state / "api.log")
        try:
            api.start()
        except (RuntimeError, TimeoutError) as error:
            api.stop()  # it may still be starting: never leave it behind
            say(f"the API did not start ({error}); see {state / 'api.log'}")
            return 1
        started.append(api)
        imds = FakeImds().start()
        started.append(imds)
        key = api.create_user("local")
        store.client().put_object(Bucket=BUCKET, Key="local/inputs/corpus.txt",
                                  Body=b"the quick brown fox\n")

        client_env = {"KELPIE_API_URL": api.url, "KELPIE_API_KEY": key,
                      "KELPIE_ADMIN_KEY": api.admin_key, **store.env}
        (state / "env").write_text("".join(f"export {name}={shlex.quote(value)}\n"
                                           for name, value in client_env.items()))
        (state / "job.json").write_text(json.dumps(sample_job(), indent=2) + "\n")

        agent_env = {**os.environ, **store.env, "KELPIE_API_URL": api.url,
                     "KELPIE_API_KEY": key, "KELPIE_IMDS_URL": imds.url,
                     "SALAD_MACHINE_ID": MACHINE, "HEARTBEAT_INTERVAL_S": "1",
                     "KELPIE_WORK_DIR": str(state / "agent"),
                     "KELPIE_STATE_FILE": str(state / "agent-state.json"),
                     # Legacy jobs' directories under the work directory, not at this
                     # machine's root (/input, /checkpoint, /output are for containers).
                     "INPUT_DIR": "input", "CHECKPOINT_DIR": "checkpoint", "OUTPUT_DIR": "output",
                     "PYTHONUNBUFFERED": "1"}
        (state / "agent").mkdir()
        with open(state / "agent.log", "wb") as log:
            agent = subprocess.Popen(agent_command(), cwd=REPO, env=agent_env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        started.append(_Agent(agent))

        relative = os.path.relpath(state, os.getcwd())
        say("Kelpie is running on 127.0.0.1 (Ctrl-C stops all of it):")
        print(f"  API            {api.url}   (Swagger UI: {api.url}/docs)")
        print(f"  S3             {store.endpoint}   bucket {BUCKET} "
              "(SeaweedFS, telemetry off)")
        print(f"  IMDS stand-in  {imds.url}")
        print(f"  agent          machine {MACHINE}, log {relative}/agent.log")
        print("\nIn another shell:")
        print(f"  . {relative}/env        # KELPIE_API_URL, KELPIE_API_KEY, the S3 settings")
        print(f"  .venv/bin/python -m agent jobs submit {relative}/job.json")
        print("  .venv/bin/python -m agent jobs get <id printed above> --watch")
        print("  .venv/bin/python -m agent jobs list")
        print("  (or dist/kelpie jobs ..., after make build-agent)", flush=True)
        say("ready")
        while not stop.wait(1):
            if agent.poll() is not None:
                say(f"the agent exited with {agent.returncode}; see {relative}/agent.log")
                return 1
        return 0
    finally:
        say("stopping ...")
        for thing in reversed(started):
            try:
                thing.stop()
            except Exception as error:  # noqa: BLE001 - keep stopping the rest
                say(f"  could not stop {thing}: {error}")
        say("stopped")


class _Agent:
    def __init__(self, process: subprocess.Popen):
        self.process = process

    def stop(self) -> None:
        if self.process.poll() is None:
            # The agent's whole group: a frozen binary is a wrapper with the agent as its child.
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


if __name__ == "__main__":
    sys.exit(main())
