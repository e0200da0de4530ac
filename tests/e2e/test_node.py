"""The agent's life on its node: giving the node back, exiting between jobs, the state file."""

import sys

from tests.e2e.harness import object_keys, train_command
from tests.support.net import wait_until


def test_idle_agent_gives_the_node_back(agents, imds):
    # An idle agent looks at its idle time between polls: a long poll of 1 s, not the 20 s
    # default, so that the first look comes after 1 s.
    agent = agents("machine-idle", MAX_TIME_WITH_NO_WORK_S="1", KELPIE_POLL_WAIT_S="1")
    assert agent.process.wait(timeout=30) == 0
    assert imds.reallocations == ["no work"]
    assert imds.deletion_costs()[:1] == [0]


def test_too_many_failures_reallocate_the_node(jobs, agents, imds):
    job = jobs.submit(command=sys.executable, arguments=["-c", "raise SystemExit(5)"],
                      max_failures=3, heartbeat_interval=1, sync={"during": []})
    agent = agents("machine-bad", MAX_JOB_FAILURES="1")
    assert agent.process.wait(timeout=30) == 0
    assert imds.reallocations == ["1 failed jobs on this node"]
    after = jobs.get(job["id"])
    assert after["status"] == "pending" and after["num_failures"] == 1


def test_recreate_between_jobs_exits_after_one(jobs, agents):
    first = jobs.submit(command=sys.executable, arguments=["-c", "pass"], heartbeat_interval=1,
                        sync={"during": []})
    second = jobs.submit(command=sys.executable, arguments=["-c", "pass"], heartbeat_interval=1,
                         sync={"during": []})
    agent = agents("machine-fresh", KELPIE_RECREATE_BETWEEN_JOBS="true")
    assert agent.process.wait(timeout=30) == 0
    statuses = sorted(jobs.get(j["id"])["status"] for j in (first, second))
    assert statuses == ["completed", "pending"]


def test_state_file_and_deletion_cost_while_running(jobs, agents, imds, s3, bucket):
    job = jobs.submit(**train_command(12, 0.25), heartbeat_interval=1, sync={
        "during": [{"bucket": bucket, "prefix": "state/", "local_path": "checkpoints",
                    "direction": "upload"}]})
    agent = agents("machine-state")
    state = wait_until(lambda: (lambda s: s if s.get("status") == "running" else None)(
        agent.state()), timeout=30)
    assert state["job_id"] == job["id"] and state["job"]["id"] == job["id"]
    assert state["child_pid"] and state["machine_id"] == "machine-state"
    assert isinstance(state["uploads"], dict) and isinstance(state["downloads"], dict)
    wait_until(lambda: len(set(imds.deletion_costs()) - {0}) >= 2, timeout=30,
               message="deletion cost did not rise with heartbeats")
    jobs.wait_status(job["id"], "completed", timeout=60, agents=[agent])
    wait_until(lambda: agent.state().get("status") == "idle", timeout=10)
    costs = imds.deletion_costs()
    running = costs[costs.index(1):costs.index(999999999)]
    assert running == sorted(running) and len(running) >= 2  # rising while it ran
    assert costs[-1] == 0
    assert object_keys(s3, bucket, "state/")
    assert agent.state()["job_id"] is None and agent.state()["exit_code"] == 0
