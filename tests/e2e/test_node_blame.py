"""A broken node must not burn the jobs it touches: storage it cannot use (wrong credentials,
unreachable) is the node's failure, never charged to the job, and the node stops taking work.
The same for its disk: full (ENOSPC, from a real tmpfs of 1 MB) or refusing the agent (EACCES,
from chmod 0500 on the work directory, with the agent run without CAP_DAC_OVERRIDE)."""

import errno
import os
import shutil
import subprocess
import sys
from urllib.parse import urlparse

import pytest

from tests.e2e import harness
from tests.e2e.harness import sync_block
from tests.support.net import wait_until
from tests.support.tcp_relay import TcpRelay

EXIT_NODE_UNUSABLE = 3


def _good_job(jobs, bucket: str, root: str) -> dict:
    return jobs.submit(command=sys.executable, arguments=["-c", "print('fine')"],
                       sync=sync_block(bucket, root), heartbeat_interval=1, max_failures=1)


@pytest.mark.parametrize("broken", [
    {"AWS_SECRET_ACCESS_KEY": "not-the-secret"},
    {"AWS_ACCESS_KEY_ID": "nobody-we-know"},
])
def test_an_agent_with_wrong_storage_credentials_refuses_to_start(jobs, agents, bucket, s3,
                                                                   broken):
    job = _good_job(jobs, bucket, "refused")
    bad = agents("machine-bad", MAX_RETRIES="2", **broken)

    assert bad.process.wait(timeout=60) == EXIT_NODE_UNUSABLE
    lines = [line for line in bad.output().splitlines() if line.startswith("kelpie: ")]
    assert len(lines) == 1 and "cannot start" in lines[0] and "credentials" in lines[0], \
        bad.output()[-2000:]
    # It never claimed: the job waits, uncharged, and a good node runs it.
    assert jobs.get(job["id"])["status"] == "pending"
    good = agents("machine-good")
    done = jobs.wait_status(job["id"], "completed", timeout=60, agents=[bad, good])
    assert done["num_failures"] == 0


def test_storage_lost_after_start_is_the_nodes_failure_not_the_jobs(jobs, agents, bucket,
                                                                     seaweed, imds):
    endpoint = urlparse(seaweed.endpoint)
    relay = TcpRelay(endpoint.hostname, endpoint.port)
    bad = agents("machine-cut", MAX_JOB_FAILURES="1", MAX_RETRIES="2",
                 AWS_ENDPOINT_URL=relay.url, AWS_ENDPOINT_URL_S3=relay.url)
    # Past its start-up check (which the relay lets through), then the storage goes away.
    wait_until(lambda: bad.state().get("status") == "idle", timeout=30)
    relay.cut()
    job = _good_job(jobs, bucket, "cut")

    assert bad.process.wait(timeout=90) == EXIT_NODE_UNUSABLE
    assert imds.reallocations == ["1 node failures on this node"]
    assert "kelpie: giving up: 1 node failures on this node" in bad.output()
    after = jobs.get(job["id"])
    assert after["status"] == "pending" and after["num_failures"] == 0, after
    _, history = jobs.api.request("GET", f"/jobs/{job['id']}/events", key=jobs.key)
    assert "storage unreachable" in str(history), history
    good = agents("machine-good")
    done = jobs.wait_status(job["id"], "completed", timeout=60, agents=[bad, good])
    assert done["num_failures"] == 0


# --- The disk: full (ENOSPC) and refusing us (EACCES) --------------------------------------------

def _history(jobs, job_id: str) -> str:
    status, body = jobs.api.request("GET", f"/jobs/{job_id}/events", key=jobs.key)
    assert status == 200
    return str(body)


def _bans_of(jobs, machine_id: str) -> int:
    status, body = jobs.api.request("GET", "/fleet/machines", key=jobs.key)
    assert status == 200
    return sum(entry["bans"] for entry in body["machines"] if entry["machine_id"] == machine_id)


def _blamed_itself(jobs, agent, job: dict, machine_id: str, imds, reason: str) -> None:
    """The agent reported a node failure and gave up (MAX_JOB_FAILURES=1): the job is back to
    pending, uncharged, the machine banned from it, and another node completes it."""
    assert agent.process.wait(timeout=90) == EXIT_NODE_UNUSABLE, agent.output()[-3000:]
    assert imds.reallocations == ["1 node failures on this node"]
    after = jobs.get(job["id"])
    assert after["status"] == "pending" and after["num_failures"] == 0, after
    history = _history(jobs, job["id"])
    assert f"node failure: {reason}" in history, history
    assert _bans_of(jobs, machine_id) == 1


@pytest.fixture
def tiny_disk(tmp_path):
    """mount(path, size): a tmpfs of `size` at `path` (the agent's work directory), unmounted
    at the end. A real full filesystem, so the agent meets ENOSPC from the kernel."""
    mounted = []

    def mount(path, size: str):
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                               str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): "
                        f"{done.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def _put(s3, bucket: str, key: str, size: int) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=os.urandom(size))


def test_a_disk_full_while_downloading_is_the_nodes_failure(jobs, agents, bucket, s3, imds,
                                                             tmp_path, tiny_disk):
    # 1 MB of disk: the start-up probe (4 KB) passes, the job's 3 MB input does not fit.
    tiny_disk(tmp_path / "machine-full-0", "1m")
    _put(s3, bucket, "full/inputs/big.bin", 3 * 1024 * 1024)
    full = agents("machine-full", MAX_JOB_FAILURES="1", MAX_RETRIES="2")
    wait_until(lambda: full.state().get("status") == "idle", timeout=30)
    job = _good_job(jobs, bucket, "full")

    _blamed_itself(jobs, full, job, "machine-full", imds, "disk full")
    good = agents("machine-good")
    done = jobs.wait_status(job["id"], "completed", timeout=60, agents=[full, good])
    assert done["num_failures"] == 0 and done["machine_id"] == "machine-good"


def test_an_agent_on_a_full_disk_refuses_to_start(jobs, agents, bucket, tmp_path, tiny_disk):
    work_dir = tiny_disk(tmp_path / "machine-nospace-0", "64k")
    # Written until the kernel says ENOSPC.
    with open(work_dir / "filler", "wb", buffering=0) as filler, \
            pytest.raises(OSError) as raised:
        while True:
            filler.write(b"\0" * 4096)
    assert raised.value.errno == errno.ENOSPC
    job = _good_job(jobs, bucket, "nospace")
    bad = agents("machine-nospace")

    assert bad.process.wait(timeout=60) == EXIT_NODE_UNUSABLE
    lines = [line for line in bad.output().splitlines() if line.startswith("kelpie: ")]
    assert len(lines) == 1 and "cannot start" in lines[0] and "disk full" in lines[0], \
        bad.output()[-2000:]
    assert jobs.get(job["id"])["status"] == "pending"
    assert "machine-nospace" not in _history(jobs, job["id"])  # never claimed


# Into outputs/: a directory the agent made for the job and empties after it.
FILL_THE_DISK = ("with open('outputs/hog.bin', 'wb', buffering=0) as hog:\n"
                 "    while True:\n"
                 "        hog.write(b'x' * 65536)\n")


def test_a_job_that_fills_the_disk_itself_is_charged_not_the_node(jobs, agents, bucket, imds,
                                                                   tmp_path, tiny_disk):
    """The boundary of the rule: a command that exits non-zero is the job's failure even when
    it died of ENOSPC, because a job that fills every disk it lands on would otherwise be
    handed from node to node uncharged for ever (and ban every node on its way). No node
    failure is counted, and the node keeps working."""
    tiny_disk(tmp_path / "machine-hogged-0", "1m")
    node = agents("machine-hogged", MAX_JOB_FAILURES="3", MAX_RETRIES="2")
    wait_until(lambda: node.state().get("status") == "idle", timeout=30)
    job = jobs.submit(command=sys.executable, arguments=["-c", FILL_THE_DISK],
                      sync=sync_block(bucket, "hog"), heartbeat_interval=1, max_failures=1)

    failed = jobs.wait_status(job["id"], "failed", timeout=60, agents=[node])
    assert failed["num_failures"] == 1
    assert "command exited with 1" in _history(jobs, job["id"])
    # The agent cleaned the job's files away and takes the next job: the disk is usable again.
    fine = _good_job(jobs, bucket, "after-hog")
    assert jobs.wait_status(fine["id"], "completed", timeout=60, agents=[node])["num_failures"] == 0
    assert node.process.poll() is None and imds.reallocations == []
    assert all(line.get("kind") != "node" for line in node.log_lines())


@pytest.fixture
def without_root_override(monkeypatch):
    """Agents started from here on run without CAP_DAC_OVERRIDE: we run as root, whom a
    chmod 0500 does not stop; without that capability the kernel answers EACCES like it would
    to any other user."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    if os.geteuid() != 0:
        yield  # an ordinary user meets EACCES without help
        return
    command = harness.agent_command
    monkeypatch.setattr(harness, "agent_command", lambda: [
        "setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", *command()])
    yield


def test_an_agent_whose_work_dir_refuses_it_does_not_start(jobs, agents, bucket, tmp_path,
                                                           without_root_override):
    work_dir = tmp_path / "machine-locked-0"
    work_dir.mkdir()
    work_dir.chmod(0o500)
    job = _good_job(jobs, bucket, "locked")
    bad = agents("machine-locked")

    assert bad.process.wait(timeout=60) == EXIT_NODE_UNUSABLE, bad.output()[-2000:]
    lines = [line for line in bad.output().splitlines() if line.startswith("kelpie: ")]
    assert len(lines) == 1 and "cannot start" in lines[0] \
        and "work directory unusable" in lines[0] and "Permission denied" in lines[0], lines
    assert jobs.get(job["id"])["status"] == "pending"
    work_dir.chmod(0o755)


def test_a_work_dir_that_refuses_us_after_start_is_the_nodes_failure(
        jobs, agents, bucket, imds, tmp_path, without_root_override):
    locked = agents("machine-locked", MAX_JOB_FAILURES="1", MAX_RETRIES="2")
    wait_until(lambda: locked.state().get("status") == "idle", timeout=30)
    # Past its start-up check, the work directory stops taking files: the job's directories
    # cannot be made there.
    locked.work_dir.chmod(0o500)
    try:
        job = _good_job(jobs, bucket, "locked-later")
        _blamed_itself(jobs, locked, job, "machine-locked", imds, "work directory unusable")
    finally:
        locked.work_dir.chmod(0o755)
    assert "Permission denied" in _history(jobs, job["id"])
    good = agents("machine-good")
    done = jobs.wait_status(job["id"], "completed", timeout=60, agents=[locked, good])
    assert done["num_failures"] == 0 and done["machine_id"] == "machine-good"
