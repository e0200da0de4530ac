"""A job cannot freeze the agent or make it destroy what is not the job's: real API, real
SeaweedFS, real agent processes.

- `^(a+)+$` against a long file name froze the agent (Python's re held the GIL): no heartbeats,
  the lease expired and the job moved on to freeze the next machine.
- A `local_path` naming data baked into the image was emptied before and after the job.
- A `local_path` leading through a symlink into a system directory was emptied too.
"""

import os
import secrets
import shutil
import stat
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import object_keys, read_object

LONG_NAME = "a" * 200 + "!"  # re.search(r"^(a+)+$", LONG_NAME): ~2^200 steps


def test_a_catastrophic_pattern_neither_freezes_the_agent_nor_stops_heartbeats(
        jobs, agents, s3, bucket):
    s3.put_object(Bucket=bucket, Key=f"redos/in/{LONG_NAME}", Body=b"skipped")
    s3.put_object(Bucket=bucket, Key="redos/in/aaaa", Body=b"wanted")
    # Writes the long name and a matching one, then keeps running so heartbeats must flow
    # while (and after) the agent judges the names.
    script = ("import pathlib, time, sys; c = pathlib.Path('ckpt'); c.mkdir(exist_ok=True);"
              f"(c / {LONG_NAME!r}).write_text('x'); (c / 'aaa').write_text('y');"
              "seen = sorted(p.name for p in pathlib.Path('in').iterdir());"
              "(c / 'aaaaa').write_text(' '.join(seen)); time.sleep(4)")
    job = jobs.submit(command=sys.executable, arguments=["-c", script], heartbeat_interval=1,
                      sync={
                          "before": [{"bucket": bucket, "prefix": "redos/in/", "local_path": "in",
                                      "direction": "download", "pattern": r"^(a+)+$"}],
                          "during": [{"bucket": bucket, "prefix": "redos/ckpt/",
                                      "local_path": "ckpt", "direction": "upload",
                                      "pattern": r"^(a+)+$"}]})
    agent = agents("machine-a")

    done = jobs.wait_status(job["id"], "completed", timeout=90, agents=[agent])

    assert done["num_heartbeats"] >= 2
    assert object_keys(s3, bucket, "redos/ckpt/") == ["redos/ckpt/aaa", "redos/ckpt/aaaaa"]
    assert read_object(s3, bucket, "redos/ckpt/aaaaa") == b"aaaa"  # only the match came down
    # The state file holds the job's environment: private to the agent's user.
    assert stat.S_IMODE(os.stat(agent.state_path).st_mode) == 0o600


def test_data_baked_into_the_image_survives_the_job(jobs, agents, s3, bucket, tmp_path):
    image_data = tmp_path / "image-data"
    (image_data / "weights").mkdir(parents=True)
    (image_data / "weights" / "base.bin").write_bytes(b"baked weights")
    (image_data / "vocab.txt").write_text("baked vocab")
    (image_data / "config.json").write_text("baked config")
    s3.put_object(Bucket=bucket, Key="baked/in/config.json", Body=b"downloaded config")
    s3.put_object(Bucket=bucket, Key="baked/in/extra/shard.bin", Body=b"downloaded shard")
    # The job needs the baked files and the downloaded ones side by side, and adds its own.
    script = ("import pathlib, sys; d = pathlib.Path(sys.argv[1]);"
              "assert (d / 'weights' / 'base.bin').read_bytes() == b'baked weights';"
              "assert (d / 'config.json').read_text() == 'downloaded config';"
              "assert (d / 'extra' / 'shard.bin').exists();"
              "(d / 'results').mkdir(); (d / 'results' / 'score.txt').write_text('0.93')")
    job = jobs.submit(command=sys.executable, arguments=["-c", script, str(image_data)],
                      heartbeat_interval=1, sync={
                          "before": [{"bucket": bucket, "prefix": "baked/in/",
                                      "local_path": str(image_data), "direction": "download"}],
                          "after": [{"bucket": bucket, "prefix": "baked/out/",
                                     "local_path": str(image_data), "direction": "upload",
                                     "pattern": "^results/"}]})
    agent = agents("machine-a")

    jobs.wait_status(job["id"], "completed", timeout=60, agents=[agent])

    assert read_object(s3, bucket, "baked/out/results/score.txt") == b"0.93"
    agent_idle = agent.wait_logged("kept what was there before")
    assert agent_idle and agent_idle[-1]["kept"] == 2, agent.output()[-3000:]
    # What was baked in stays (config.json was replaced by the download, so it goes with it);
    # what the download and the run added is gone.
    remaining = sorted(p.relative_to(image_data).as_posix() for p in image_data.rglob("*"))
    assert remaining == ["vocab.txt", "weights", "weights/base.bin"]
    assert (image_data / "weights" / "base.bin").read_bytes() == b"baked weights"


@pytest.fixture
def system_dir_canary():
    """A directory of our own inside /dev (one of the refused system trees), with a canary
    file: a symlink to it stands in for a symlink into /etc, harmlessly."""
    directory = Path("/dev/shm") / f"kelpie-e2e-{secrets.token_hex(4)}"
    directory.mkdir()
    (directory / "canary").write_text("still here")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_a_local_path_leading_into_a_system_directory_fails_the_attempt(
        jobs, agents, bucket, tmp_path, system_dir_canary):
    sneaky = tmp_path / "looks-harmless"
    os.symlink(system_dir_canary, sneaky)  # the API sees /tmp/..., the agent sees /dev/...
    job = jobs.submit(command=sys.executable, arguments=["-c", "pass"], heartbeat_interval=1,
                      max_failures=1, sync={
                          "during": [{"bucket": bucket, "prefix": "x/", "local_path": str(sneaky),
                                      "direction": "upload"}]})
    agent = agents("machine-a")

    jobs.wait_status(job["id"], "failed", timeout=60, agents=[agent])

    assert (system_dir_canary / "canary").read_text() == "still here"
    [reported] = agent.wait_logged("reported failed")
    assert "invalid job" in reported["reason"] and f"really {system_dir_canary}" in reported[
        "reason"] and "system" in reported["reason"]
