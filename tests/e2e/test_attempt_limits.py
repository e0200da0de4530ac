"""The agent enforces a job's `timeout_s`: an attempt that runs past it is stopped like a
cancel (SIGTERM to its process group, grace, SIGKILL) and reported failed, `timed out`."""

import sys

from tests.e2e.harness import pid_alive, sync_block, wait_until

# Ignores SIGTERM, so only the SIGKILL after the grace ends it; it records each signal.
STUBBORN = """
import os, signal, sys, time
marks = sys.argv[1]
def on_term(signum, frame):
    with open(marks, "a") as f:
        f.write("TERM\\n")
signal.signal(signal.SIGTERM, on_term)
with open(marks + ".pid", "w") as f:
    f.write(str(os.getpid()))
while True:
    time.sleep(0.05)
"""


def test_an_attempt_past_timeout_s_is_stopped_and_failed_as_timed_out(jobs, agents, bucket,
                                                                     tmp_path):
    marks = tmp_path / "signals.txt"
    job = jobs.submit(command=sys.executable, arguments=["-c", STUBBORN, str(marks)],
                      sync=sync_block(bucket, "timeout"), heartbeat_interval=1,
                      timeout_s=2, max_failures=1)
    agent = agents("machine-a", KELPIE_KILL_GRACE_S="1")

    done = jobs.wait_status(job["id"], "failed", timeout=60, agents=[agent])

    child = int((tmp_path / "signals.txt.pid").read_text())
    assert not pid_alive(child)
    # SIGTERM first; it was ignored, so the SIGKILL after the grace ended it.
    assert marks.read_text().splitlines()[0] == "TERM"
    assert agent.logged("the job ran past its timeout")
    _, history = jobs.api.request("GET", f"/jobs/{job['id']}/events", key=jobs.key)
    failures = [e for e in history["events"] if e["status"] == "failed"]
    assert failures and "timed out" in str(failures[-1]), history
    assert done["num_failures"] == 1
    # The agent is still there for the next job.
    assert agent.process.poll() is None
    wait_until(lambda: agent.state().get("status") == "idle", timeout=20)
