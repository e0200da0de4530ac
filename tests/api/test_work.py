"""The worker protocol and the job state machine (ARCHITECTURE.md)."""

import uuid

import pytest

from tests.api.jobdefs import sync_job
from tests.support.net import wait_until


def submit(api, key, **overrides):
    status, job = api.request("POST", "/jobs", sync_job(**overrides), key=key)
    assert status == 202
    return job


def claim(api, key, machine, group):
    status, work = api.request("GET", f"/work?machine_id={machine}&container_group_id={group}",
                               key=key)
    assert status == 200
    assert len(work) <= 1
    return work[0] if work else None


def report(api, key, job_id, what, machine, group=None, **extra):
    return api.request("POST", f"/jobs/{job_id}/{what}",
                       {"machine_id": machine, "container_group_id": group, **extra}, key=key)


def test_claim_assigns_oldest_pending_job_of_the_group(api, user_key):
    first = submit(api, user_key, container_group_id="g1")
    second = submit(api, user_key, container_group_id="g1")
    submit(api, user_key, container_group_id="other")

    job = claim(api, user_key, "m1", "g1")
    assert job["id"] == first["id"]
    assert job["status"] == "running" and job["machine_id"] == "m1"
    assert job["started"] and job["heartbeat"]
    assert claim(api, user_key, "m2", "g1")["id"] == second["id"]
    assert claim(api, user_key, "m3", "g1") is None


def test_jobs_without_group_go_to_workers_without_group(api, user_key):
    job = submit(api, user_key, container_group_id=None)
    assert claim(api, user_key, "m1", "some-group") is None
    status, work = api.request("GET", "/work?machine_id=m1", key=user_key)
    assert status == 200 and work[0]["id"] == job["id"]


def test_machine_id_is_required(api, user_key):
    status, error = api.request("GET", "/work?container_group_id=g", key=user_key)
    assert status == 400 and error["field"] == "machine_id"
    status, error = api.request("POST", f"/jobs/{uuid.uuid4()}/heartbeat", {}, key=user_key)
    assert status == 400 and error["field"] == "machine_id"


def test_heartbeat_from_holder_counts_and_answers_running(api, user_key):
    submit(api, user_key, container_group_id="hb")
    job = claim(api, user_key, "m1", "hb")
    for _ in range(3):
        assert report(api, user_key, job["id"], "heartbeat", "m1", "hb") == (200, {"status": "running"})
    _, fetched = api.request("GET", f"/jobs/{job['id']}", key=user_key)
    assert fetched["num_heartbeats"] == 3
    assert fetched["heartbeat"] >= job["heartbeat"]


def test_heartbeat_from_another_machine_answers_canceled(api, user_key):
    submit(api, user_key, container_group_id="zombie")
    job = claim(api, user_key, "m1", "zombie")
    assert report(api, user_key, job["id"], "heartbeat", "m2", "zombie") == (200, {"status": "canceled"})
    _, fetched = api.request("GET", f"/jobs/{job['id']}", key=user_key)
    assert fetched["num_heartbeats"] == 0 and fetched["machine_id"] == "m1"


def test_cancel_reaches_the_worker_through_its_heartbeat(api, user_key):
    submit(api, user_key, container_group_id="cancel")
    job = claim(api, user_key, "m1", "cancel")
    api.request("DELETE", f"/jobs/{job['id']}", key=user_key)
    assert report(api, user_key, job["id"], "heartbeat", "m1", "cancel") == (200, {"status": "canceled"})
    # The worker's completion after the cancel is answered 200 and changes nothing.
    status, answer = report(api, user_key, job["id"], "completed", "m1", "cancel")
    assert (status, answer["status"], answer["recorded"]) == (200, "canceled", False)


def test_stale_job_is_handed_to_another_machine_first(api, user_key):
    stale = submit(api, user_key, container_group_id="stale", heartbeat_interval=1)
    waiting = submit(api, user_key, container_group_id="stale")
    assert claim(api, user_key, "m1", "stale")["id"] == stale["id"]
    # Nothing else is claimable by m1's peer until m1's lease (2 × 1 s) runs out — except the
    # pending job, which m2 takes now.
    assert claim(api, user_key, "m2", "stale")["id"] == waiting["id"]
    taken = wait_until(lambda: claim(api, user_key, "m3", "stale"), timeout=10, interval=0.2)
    assert taken["id"] == stale["id"] and taken["machine_id"] == "m3"
    # The old holder is now a zombie: told to stop; its reports are answered 2xx and change
    # nothing (the job stays m3's).
    assert report(api, user_key, stale["id"], "heartbeat", "m1", "stale")[1] == {"status": "canceled"}
    status, answer = report(api, user_key, stale["id"], "completed", "m1", "stale")
    assert (status, answer["status"], answer["recorded"]) == (200, "running", False)
    status, answer = report(api, user_key, stale["id"], "failed", "m1", "stale", exit_code=1)
    assert (status, answer["status"], answer["recorded"]) == (202, "running", False)
    _, events = api.request("GET", f"/jobs/{stale['id']}/events", key=user_key)
    kinds = [(e["kind"], e["machine_id"]) for e in events["events"]]
    assert kinds[-2:] == [("heartbeat_lost", "m1"), ("assigned", "m3")]
    # An interruption is not a failure; it is counted as one.
    _, fetched = api.request("GET", f"/jobs/{stale['id']}", key=user_key)
    assert fetched["num_failures"] == 0 and fetched["num_interruptions"] == 1
    assert fetched["machine_id"] == "m3" and fetched["status"] == "running"


def test_heartbeats_keep_the_lease(api, user_key):
    submit(api, user_key, container_group_id="lease", heartbeat_interval=1)
    job = claim(api, user_key, "m1", "lease")
    # Heartbeat every ~0.3 s for 3 s (longer than the 2 s lease): nobody else gets the job.
    import time
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert report(api, user_key, job["id"], "heartbeat", "m1", "lease")[1] == {"status": "running"}
        assert claim(api, user_key, "m2", "lease") is None
        time.sleep(0.3)


def test_failure_bans_the_machine_and_retries_elsewhere(api, user_key):
    job = submit(api, user_key, container_group_id="fail", max_failures=2)
    claim(api, user_key, "m1", "fail")
    status, _ = report(api, user_key, job["id"], "failed", "m1", "fail", exit_code=1)
    assert status == 202
    _, fetched = api.request("GET", f"/jobs/{job['id']}", key=user_key)
    assert fetched["status"] == "pending" and fetched["num_failures"] == 1
    assert fetched["machine_id"] is None
    # m1 is banned from it; m2 gets it at once, without waiting for a timeout.
    assert claim(api, user_key, "m1", "fail") is None
    assert claim(api, user_key, "m2", "fail")["id"] == job["id"]
    report(api, user_key, job["id"], "failed", "m2", "fail", exit_code=1, reason="again")
    _, fetched = api.request("GET", f"/jobs/{job['id']}", key=user_key)
    assert fetched["status"] == "failed" and fetched["num_failures"] == 2
    assert fetched["failed"] is not None
    assert claim(api, user_key, "m3", "fail") is None


def test_completion_is_final_and_idempotent_for_the_holder(api, user_key):
    job = submit(api, user_key, container_group_id="done")
    claim(api, user_key, "m1", "done")
    # Another machine's report: 200, nothing changed.
    assert report(api, user_key, job["id"], "completed", "m2", "done")[1]["recorded"] is False
    _, fetched = api.request("GET", f"/jobs/{job['id']}", key=user_key)
    assert fetched["status"] == "running" and fetched["machine_id"] == "m1"
    assert report(api, user_key, job["id"], "completed", "m1", "done")[1]["recorded"] is True
    _, first = api.request("GET", f"/jobs/{job['id']}", key=user_key)
    # A retry, and a late failure report: 2xx with the status, and nothing changed.
    assert report(api, user_key, job["id"], "completed", "m1", "done") == (
        200, {"message": f"nothing changed: job {job['id']} is completed",
              "status": "completed", "recorded": False})
    assert report(api, user_key, job["id"], "failed", "m1", "done", exit_code=3)[0] == 202
    _, fetched = api.request("GET", f"/jobs/{job['id']}", key=user_key)
    assert fetched == first
    assert fetched["status"] == "completed" and fetched["completed"] is not None
    assert report(api, user_key, job["id"], "heartbeat", "m1", "done")[1] == {"status": "completed"}
    assert api.request("DELETE", f"/jobs/{job['id']}", key=user_key)[0] == 409


def test_reports_for_pending_jobs_change_nothing(api, user_key):
    job = submit(api, user_key, container_group_id="early")
    assert report(api, user_key, job["id"], "completed", "m1", "early")[:1] == (200,)
    status, answer = report(api, user_key, job["id"], "failed", "m1", "early")
    assert (status, answer["status"], answer["recorded"]) == (202, "pending", False)
    assert report(api, user_key, job["id"], "heartbeat", "m1", "early")[1] == {"status": "canceled"}
    _, fetched = api.request("GET", f"/jobs/{job['id']}", key=user_key)
    assert fetched["status"] == "pending" and fetched["num_failures"] == 0
    assert claim(api, user_key, "m1", "early")["id"] == job["id"]  # and m1 is not banned


def test_repeated_failure_report_is_counted_once(api, user_key):
    """A worker whose 202 was lost sends /failed again: one failure, one ban, not two."""
    job = submit(api, user_key, container_group_id="refail", max_failures=3)
    claim(api, user_key, "m1", "refail")
    assert report(api, user_key, job["id"], "failed", "m1", "refail", exit_code=1)[1][
        "recorded"] is True
    status, answer = report(api, user_key, job["id"], "failed", "m1", "refail", exit_code=1)
    assert (status, answer["status"], answer["recorded"]) == (202, "pending", False)
    assert "not by" not in answer["message"]
    _, fetched = api.request("GET", f"/jobs/{job['id']}", key=user_key)
    assert fetched["num_failures"] == 1 and fetched["status"] == "pending"
    _, events = api.request("GET", f"/jobs/{job['id']}/events", key=user_key)
    assert [e["kind"] for e in events["events"]].count("attempt_failed") == 1


def test_node_failure_returns_the_job_uncharged_and_bans_the_machine(api, user_key):
    job = submit(api, user_key, container_group_id="node", max_failures=1)
    claim(api, user_key, "m1", "node")
    status, answer = report(api, user_key, job["id"], "failed", "m1", "node", kind="node",
                            exit_code=1, reason="storage refused the credentials")
    assert (status, answer["status"], answer["recorded"]) == (202, "pending", True)
    _, fetched = api.request("GET", f"/jobs/{job['id']}", key=user_key)
    # max_failures=1 and still pending: the node's failure was not charged to the job.
    assert fetched["status"] == "pending" and fetched["num_failures"] == 0
    assert claim(api, user_key, "m1", "node") is None  # banned from it
    assert claim(api, user_key, "m2", "node")["id"] == job["id"]
    _, events = api.request("GET", f"/jobs/{job['id']}/events", key=user_key)
    failed = [e for e in events["events"] if e["kind"] == "attempt_failed"]
    assert failed[0]["reason"] == "node failure: storage refused the credentials"
    assert failed[0]["machine_id"] == "m1"
    # The ban counts toward the machine's total, as any other ban does.
    _, fleet = api.request("GET", "/fleet/machines", key=user_key)
    [m1] = [m for m in fleet["machines"] if m["machine_id"] == "m1"
            and m["container_group_id"] == "node"]
    assert m1["bans"] == 1
    # And a job failure by the next machine is still charged.
    report(api, user_key, job["id"], "failed", "m2", "node", kind="job", exit_code=1)
    _, fetched = api.request("GET", f"/jobs/{job['id']}", key=user_key)
    assert fetched["status"] == "failed" and fetched["num_failures"] == 1


def test_a_node_failure_reason_says_node_failure_once(api, user_key):
    # Our agent's reasons already start with "node failure:" (agent/blame.py).
    job = submit(api, user_key, container_group_id="node-once")
    claim(api, user_key, "m1", "node-once")
    report(api, user_key, job["id"], "failed", "m1", "node-once", kind="node",
           reason="node failure: storage unreachable (refused)")
    _, events = api.request("GET", f"/jobs/{job['id']}/events", key=user_key)
    failed = [e for e in events["events"] if e["kind"] == "attempt_failed"]
    assert failed[0]["reason"] == "node failure: storage unreachable (refused)"


def test_failure_kind_must_be_job_or_node(api, user_key):
    job = submit(api, user_key, container_group_id="kind")
    claim(api, user_key, "m1", "kind")
    status, error = report(api, user_key, job["id"], "failed", "m1", "kind", kind="disk")
    assert status == 400 and error["field"] == "kind"
    _, fetched = api.request("GET", f"/jobs/{job['id']}", key=user_key)
    assert fetched["status"] == "running" and fetched["machine_id"] == "m1"


@pytest.mark.parametrize("body, field", [
    ({"machine_id": "m1", "exit_code": "1"}, "exit_code"),
    ({"machine_id": "m1", "exit_code": 2**40}, "exit_code"),
    ({"machine_id": "m1", "reason": 5}, "reason"),
    ({"machine_id": 7}, "machine_id"),
    ([], "body"),
])
def test_bad_failure_reports(api, user_key, body, field):
    job = submit(api, user_key, container_group_id="badreport")
    status, error = api.request("POST", f"/jobs/{job['id']}/failed", body, key=user_key)
    assert status == 400 and error["field"] == field


def test_a_batch_is_claimed_in_the_order_it_was_given(api, user_key):
    status, jobs = api.request("POST", "/jobs/batch",
                               [sync_job(container_group_id="fifo", arguments=[str(i)])
                                for i in range(20)], key=user_key)
    assert status == 202
    claimed = [claim(api, user_key, f"m{i}", "fifo")["id"] for i in range(20)]
    assert claimed == [job["id"] for job in jobs]


def test_reports_answer_as_they_always_have(api, user_key):
    """The reports' models (api/bodies.py) changed where their limits are written, not what a
    worker is told: the same statuses and words, an absent body as an empty one, unknown
    fields ignored, and a failure's reason kept to its first 2000 characters."""
    job = submit(api, user_key, container_group_id="words")
    claim(api, user_key, "m1", "words")
    path = f"/jobs/{job['id']}"

    def bad_request(field, message):
        return 400, {"error": "bad_request", "message": f"{field}: {message}",
                     "field": field}

    assert api.request("POST", path + "/heartbeat", None, key=user_key) == \
        bad_request("machine_id", "is required")
    assert api.request("POST", path + "/heartbeat", "m1", key=user_key) == \
        bad_request("body", "must be a JSON object")
    assert api.request("POST", path + "/heartbeat", {"machine_id": "m1", "uptime": 5},
                       key=user_key) == (200, {"status": "running"})
    assert report(api, user_key, job["id"], "completed", "m1", "words", exit_code=1) == \
        bad_request("exit_code", "must be 0 for a completed job (report a failure with "
                    "POST /jobs/:id/failed)")
    assert report(api, user_key, job["id"], "failed", "m1", "words", kind="disk") == \
        bad_request("kind", "must be one of job, node")
    assert report(api, user_key, job["id"], "failed", "m1", "words", exit_code=2**31) == \
        bad_request("exit_code", "must be an integer")
    assert report(api, user_key, job["id"], "failed", "m1", "words",
                  reason="r" * 100_001) == bad_request("reason", "must be at most 100000 characters")
    status, answer = report(api, user_key, job["id"], "failed", "m1", "words", kind=None,
                            exit_code=-(2**31), reason="r" * 100_000, extra="ignored")
    assert status == 202 and answer["recorded"]
    _, events = api.request("GET", f"/jobs/{job['id']}/events", key=user_key)
    [failure] = [e for e in events["events"] if e["kind"] == "attempt_failed"]
    assert failure["exit_code"] == -(2**31) and failure["reason"] == "r" * 2000
