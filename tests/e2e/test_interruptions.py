"""The hard cases: preemption, cancel, failures on several machines, API outage, node shutdown."""

import json
import signal
import sys
import time

from tests.e2e.harness import object_keys, pid_alive, read_object, sync_block, train_command
from tests.support.net import wait_until


def latest_checkpoint_step(s3, bucket: str, prefix: str) -> int:
    keys = [k for k in object_keys(s3, bucket, prefix) if k.endswith(".ckpt")]
    return max((int(k.rsplit("step-", 1)[1].split(".")[0]) for k in keys), default=0)


def test_preempted_job_resumes_on_another_machine(jobs, agents, s3, bucket):
    job = jobs.submit(**train_command(25, 0.15), sync=sync_block(bucket, "pre"),
                      heartbeat_interval=1)
    first = agents("machine-a")
    wait_until(lambda: latest_checkpoint_step(s3, bucket, "pre/checkpoints/") >= 4,
               timeout=60, message="no checkpoint reached the bucket")

    first.kill_hard()  # the node vanishes: agent and job killed, nothing reported
    at_kill = latest_checkpoint_step(s3, bucket, "pre/checkpoints/")
    assert jobs.get(job["id"])["status"] == "running"
    second = agents("machine-b")

    done = jobs.wait_status(job["id"], "completed", timeout=90, agents=[first, second])

    assert done["machine_id"] == "machine-b"
    assert done["num_failures"] == 0  # an interruption is not a failure
    result = json.loads(read_object(s3, bucket, "pre/outputs/result.json"))
    assert result["total"] == 25 * 26 // 2  # every step counted exactly once
    assert result["resumed_from"] is not None and result["resumed_from"] >= at_kill - 1 >= 3


def test_cancel_stops_the_command_and_agent_keeps_polling(jobs, agents, s3, bucket):
    job = jobs.submit(**train_command(200, 0.1), sync=sync_block(bucket, "can"),
                      heartbeat_interval=1)
    agent = agents("machine-a", KELPIE_KILL_GRACE_S="2")
    wait_until(lambda: latest_checkpoint_step(s3, bucket, "can/checkpoints/") >= 1, timeout=60)
    child = agent.child_pid()
    assert child and pid_alive(child)

    jobs.cancel(job["id"])

    wait_until(lambda: not pid_alive(child), timeout=20, message="command not stopped")
    wait_until(lambda: agent.state().get("status") == "idle", timeout=20)
    assert jobs.get(job["id"])["status"] == "canceled"
    assert agent.process.poll() is None  # the agent lives on, polling for the next job
    assert agent.logged("dropped the job without reporting")
    # The next job is picked up by the same agent.
    next_job = jobs.submit(command=sys.executable, arguments=["-c", "pass"],
                           heartbeat_interval=1, sync={"during": []})
    jobs.wait_status(next_job["id"], "completed", timeout=30, agents=[agent])


def test_failing_command_retried_elsewhere_then_failed(jobs, agents, bucket):
    job = jobs.submit(command=sys.executable, arguments=["-c", "import sys; sys.exit(3)"],
                      max_failures=2, heartbeat_interval=1, sync={"during": []})
    a = agents("machine-a", MAX_JOB_FAILURES="10")
    b = agents("machine-b", MAX_JOB_FAILURES="10")

    done = jobs.wait_status(job["id"], "failed", timeout=60, agents=[a, b])

    assert done["num_failures"] == 2
    # A failure bans the machine from the job, so the second attempt ran on the other one.
    for agent in (a, b):
        agent.wait_logged("reported failed", timeout=15)
    failed_lines = [line for agent in (a, b) for line in agent.logged("reported failed")]
    assert {line["exit_code"] for line in failed_lines} == {3}


def test_api_outage_does_not_lose_the_job(api, jobs, agents, s3, bucket):
    job = jobs.submit(**train_command(30, 0.15), sync=sync_block(bucket, "out"),
                      heartbeat_interval=1)
    agent = agents("machine-a", MAX_RETRIES="2")
    wait_until(lambda: latest_checkpoint_step(s3, bucket, "out/checkpoints/") >= 2, timeout=60)

    api.stop()
    try:
        wait_until(lambda: agent.logged("heartbeat failed"), timeout=20,
                   message="the agent did not notice the outage")
        step_before = latest_checkpoint_step(s3, bucket, "out/checkpoints/")
        # Checkpoints keep flowing to storage while the API is away.
        wait_until(lambda: latest_checkpoint_step(s3, bucket, "out/checkpoints/")
                   >= step_before + 3, timeout=20)
        time.sleep(2)  # the outage lasts a few seconds: an agreed length, not a wait for an event
    finally:
        api.start()

    done = jobs.wait_status(job["id"], "completed", timeout=60, agents=[agent])
    assert done["machine_id"] == "machine-a" and done["num_failures"] == 0
    result = json.loads(read_object(s3, bucket, "out/outputs/result.json"))
    assert result["total"] == 30 * 31 // 2 and result["resumed_from"] is None


def test_sigterm_to_agent_leaves_last_checkpoint_in_bucket(jobs, agents, s3, bucket):
    job = jobs.submit(**train_command(200, 0.2), sync=sync_block(bucket, "term"),
                      heartbeat_interval=1)
    agent = agents("machine-a")
    wait_until(lambda: latest_checkpoint_step(s3, bucket, "term/checkpoints/") >= 2, timeout=60)

    agent.signal(signal.SIGTERM)

    assert agent.process.wait(timeout=30) == 0
    # The command saved one more checkpoint on SIGTERM, and the agent uploaded it before exiting.
    keys = object_keys(s3, bucket, "term/checkpoints/")
    states = [json.loads(read_object(s3, bucket, key)) for key in keys]
    assert any(state.get("interrupted") for state in states), states
    assert "train: interrupted at step" in agent.output()
    assert agent.logged("left the job for another machine")
    after = jobs.get(job["id"])
    assert after["status"] == "running" and after["num_failures"] == 0  # nothing reported


def test_zombie_agent_drops_a_job_handed_to_another_machine(jobs, agents, s3, bucket):
    job = jobs.submit(**train_command(30, 0.15), sync=sync_block(bucket, "zom"),
                      heartbeat_interval=1)
    first = agents("machine-a")
    wait_until(lambda: latest_checkpoint_step(s3, bucket, "zom/checkpoints/") >= 2, timeout=60)
    child = first.child_pid()

    first.signal(signal.SIGSTOP)  # the node stalls: no heartbeats, but it is not gone
    try:
        second = agents("machine-b")
        wait_until(lambda: jobs.get(job["id"])["machine_id"] == "machine-b", timeout=30,
                   message="the stale job was not handed over")
    finally:
        first.signal(signal.SIGCONT)

    # Its next heartbeat tells machine-a the job is no longer its own: it stops its copy.
    wait_until(lambda: first.logged("dropped the job without reporting"), timeout=30)
    wait_until(lambda: not pid_alive(child), timeout=30)
    done = jobs.wait_status(job["id"], "completed", timeout=90, agents=[first, second])
    assert done["machine_id"] == "machine-b" and done["num_failures"] == 0
    assert not first.logged("reported")
    result = json.loads(read_object(s3, bucket, "zom/outputs/result.json"))
    assert result["total"] == 30 * 31 // 2
