"""A broken node must not burn the jobs it touches: storage it cannot use (wrong credentials,
unreachable) is the node's failure, never charged to the job, and the node stops taking work."""

import sys
from urllib.parse import urlparse

import pytest

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
