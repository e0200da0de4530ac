"""Checkpoint guarantees through the whole agent (the torture suite, tests/torture, attacks them
at scale): a job lost during its download stops the download before its directories are
cleaned; a command killed mid-save leaves the previous checkpoint in the bucket."""

import os
import sys

from tests.e2e.harness import object_keys, read_object
from tests.support.net import wait_until


def test_a_job_lost_during_its_download_stops_writing_before_the_clean(jobs, agents, s3,
                                                                       bucket):
    for i in range(1500):
        s3.put_object(Bucket=bucket, Key=f"lost/in/f-{i:05d}", Body=b"x" * 1000)
    job = jobs.submit(command=sys.executable, arguments=["-c", "pass"], heartbeat_interval=1,
                      sync={"before": [{"bucket": bucket, "prefix": "lost/in/",
                                        "local_path": "inputs-lost", "direction": "download"}]})
    # One file at a time, so the download is still going when the cancel arrives.
    agent = agents("machine-a", KELPIE_TRANSFER_CONCURRENCY="1")
    inputs = agent.work_dir / "inputs-lost"
    wait_until(lambda: inputs.is_dir() and len(os.listdir(inputs)) >= 20, timeout=60,
               interval=0.01, message="the download never started")

    jobs.cancel(job["id"])

    wait_until(lambda: agent.logged("dropped the job without reporting"), timeout=30)
    wait_until(lambda: agent.state().get("status") == "idle", timeout=30)
    assert os.listdir(inputs) == []
    # Run another job to completion: a download thread still going would have written more.
    after = jobs.submit(command=sys.executable, arguments=["-c", "pass"], heartbeat_interval=1,
                        sync={"during": []})
    jobs.wait_status(after["id"], "completed", timeout=60, agents=[agent])
    assert os.listdir(inputs) == []
    assert not agent.logged("download failed")


def test_an_oom_killed_in_place_save_keeps_the_previous_checkpoint(jobs, agents, s3, bucket,
                                                                    tmp_path):
    """The command saves last.pt in place, then is SIGKILLed (as by the OOM killer) half-way
    through its next save: the agent skips the torn file, reports the failure, and the bucket
    keeps the whole first save."""
    go = tmp_path / "go"
    script = ("import os, pathlib, signal, time\n"
              "c = pathlib.Path(os.environ['CHECKPOINT_DIR'])\n"
              "(c / 'last.pt').write_bytes(b'good' * 500000)\n"
              "while not os.path.exists(os.environ['GO']): time.sleep(0.01)\n"
              "f = open(c / 'last.pt', 'wb'); f.write(b'torn' * 100000); f.flush()\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    job = jobs.submit(command=sys.executable, arguments=["-c", script], heartbeat_interval=1,
                      max_failures=1, environment={"GO": str(go)},
                      sync={"during": [{"bucket": bucket, "prefix": "oom/",
                                        "local_path": "checkpoints", "direction": "upload"}]})
    agent = agents("machine-a")
    wait_until(lambda: object_keys(s3, bucket, "oom/") == ["oom/last.pt"], timeout=60)
    go.touch()

    jobs.wait_status(job["id"], "failed", timeout=60, agents=[agent])

    assert read_object(s3, bucket, "oom/last.pt") == b"good" * 500000
    assert agent.logged("skipped last.pt: written by a dying writer")
