"""Submitting, reading, listing and cancelling jobs — the user's side of the API."""

import re

import pytest

from tests.api.jobdefs import legacy_job, sync_job

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
JOB_KEYS = [
    "id", "user_id", "status", "created", "started", "completed", "canceled", "failed",
    "command", "arguments", "environment", "sync",
    "input_bucket", "input_prefix", "checkpoint_bucket", "checkpoint_prefix",
    "output_bucket", "output_prefix", "webhook", "heartbeat", "num_failures", "num_heartbeats",
    "container_group_id", "machine_id", "max_failures", "heartbeat_interval", "compression",
    # Added by us, after the spec's fields.
    "num_attempts", "num_interruptions", "max_interruptions", "timeout_s",
]


def test_submit_returns_the_full_job_as_the_spec_shows(api, user_key):
    status, job = api.request("POST", "/jobs", sync_job(), key=user_key)
    assert status == 202
    assert list(job) == JOB_KEYS
    assert job["status"] == "pending"
    assert ISO_Z.match(job["created"])
    assert job["started"] is job["completed"] is job["canceled"] is job["failed"] is None
    assert job["heartbeat"] is None and job["machine_id"] is None
    assert job["num_failures"] == 0 and job["num_heartbeats"] == 0
    assert job["max_failures"] == 3 and job["heartbeat_interval"] == 30
    assert job["compression"] is False
    assert job["arguments"] == ["/app/main.py", "--epochs", "3"]
    assert job["environment"] == {"SOME_VAR": "value"}
    # Prefixes get their trailing slash; the pattern is kept.
    assert job["sync"]["before"][0]["prefix"] == "inputs/job1/"
    assert job["sync"]["during"][0]["pattern"] == r"\.ckpt$"
    _, me = api.request("GET", "/users/me", key=user_key)
    assert job["user_id"] == me["id"]
    # What was stored is what comes back.
    status, fetched = api.request("GET", f"/jobs/{job['id']}", key=user_key)
    assert status == 200 and fetched == job


def test_legacy_job_shape(api, user_key):
    status, job = api.request("POST", "/jobs", legacy_job(), key=user_key)
    assert status == 202
    assert job["sync"] is None
    assert job["checkpoint_prefix"] == "checkpoints/job1/"
    assert job["input_bucket"] == "my-bucket"


def test_optional_fields_are_honoured(api, user_key):
    status, job = api.request("POST", "/jobs", sync_job(
        max_failures=5, heartbeat_interval=7, compression=True,
        webhook="http://127.0.0.1:9/hook", container_group_id=None), key=user_key)
    assert status == 202
    assert (job["max_failures"], job["heartbeat_interval"], job["compression"]) == (5, 7, True)
    assert job["webhook"] == "http://127.0.0.1:9/hook"
    assert job["container_group_id"] is None


@pytest.mark.parametrize("body, field", [
    ({"arguments": []}, "command"),
    (sync_job(command=""), "command"),
    (sync_job(command=5), "command"),
    (sync_job(arguments="python x.py"), "arguments"),
    (sync_job(arguments=["ok", 3]), "arguments[1]"),
    (sync_job(environment={"A": 1}), "environment.A"),
    (sync_job(environment=["A=1"]), "environment"),
    (sync_job(sync=None), "sync"),
    ({**sync_job(), **legacy_job()}, "sync"),
    (sync_job(sync={"before": [{"bucket": "b", "prefix": "p", "local_path": "x",
                                "direction": "upload"}]}), "sync.before[0].direction"),
    (sync_job(sync={"during": [{"bucket": "b", "prefix": "p", "local_path": "x",
                                "direction": "download"}]}), "sync.during[0].direction"),
    (sync_job(sync={"after": [{"bucket": "b", "prefix": "p", "local_path": "x",
                               "direction": "upload", "pattern": "(unclosed"}]}),
     "sync.after[0].pattern"),
    (sync_job(sync={"after": [{"prefix": "p", "local_path": "x", "direction": "upload"}]}),
     "sync.after[0].bucket"),
    (sync_job(sync={"later": []}), "sync.later"),
    (sync_job(max_failures=0), "max_failures"),
    (sync_job(max_failures="3"), "max_failures"),
    (sync_job(heartbeat_interval=0), "heartbeat_interval"),
    (sync_job(heartbeat_interval=True), "heartbeat_interval"),
    (sync_job(compression="yes"), "compression"),
    (sync_job(webhook="ftp://example.invalid/"), "webhook"),
    (sync_job(surprise=1), "surprise"),
    ({k: v for k, v in legacy_job().items() if k != "output_prefix"}, "output_prefix"),
    ({k: v for k, v in legacy_job().items() if k != "input_bucket"}, "input_bucket"),
])
def test_invalid_jobs_are_rejected_naming_the_field(api, user_key, body, field):
    status, error = api.request("POST", "/jobs", body, key=user_key)
    assert status == 400, error
    assert error["error"] == "bad_request"
    assert error["field"] == field
    assert field in error["message"]


def test_rejected_job_writes_nothing(api, user_key):
    api.request("POST", "/jobs", sync_job(max_failures=0), key=user_key)
    _, listing = api.request("GET", "/jobs", key=user_key)
    assert listing == {"_count": 0, "jobs": []}


def test_batch_is_all_or_nothing_and_names_the_bad_index(api, user_key):
    jobs = [sync_job() for _ in range(5)]
    jobs[3]["sync"]["before"][0]["direction"] = "upload"
    status, error = api.request("POST", "/jobs/batch", jobs, key=user_key)
    assert status == 400
    assert error["index"] == 3
    assert error["field"] == "[3].sync.before[0].direction"
    assert "[3]" in error["message"]
    _, listing = api.request("GET", "/jobs", key=user_key)
    assert listing["_count"] == 0


def test_batch_of_a_thousand(api, user_key):
    jobs = [sync_job(arguments=[str(i)]) for i in range(1000)]
    status, created = api.request("POST", "/jobs/batch", jobs, key=user_key)
    assert status == 202
    assert len(created) == 1000
    assert [job["arguments"] for job in created] == [[str(i)] for i in range(1000)]
    assert len({job["id"] for job in created}) == 1000
    _, listing = api.request("GET", "/jobs?page_size=1", key=user_key)
    assert listing["_count"] == 1000


@pytest.mark.parametrize("body", [[], [sync_job()] * 1001, {"jobs": []}, "nope"])
def test_batch_size_and_shape_limits(api, user_key, body):
    status, error = api.request("POST", "/jobs/batch", body, key=user_key)
    assert status == 400
    assert error["field"] == "body"


def test_listing_filters_pages_and_orders(api, user_key):
    ids = []
    for group in ("a", "a", "b", "a"):
        _, job = api.request("POST", "/jobs", sync_job(container_group_id=group), key=user_key)
        ids.append(job["id"])
    api.request("DELETE", f"/jobs/{ids[1]}", key=user_key)

    _, everything = api.request("GET", "/jobs", key=user_key)
    assert everything["_count"] == 4
    assert [job["id"] for job in everything["jobs"]] == ids[::-1]  # newest first

    _, ascending = api.request("GET", "/jobs?asc=true", key=user_key)
    assert [job["id"] for job in ascending["jobs"]] == ids

    _, group_a = api.request("GET", "/jobs?container_group_id=a&asc=true", key=user_key)
    assert group_a["_count"] == 3
    assert [job["id"] for job in group_a["jobs"]] == [ids[0], ids[1], ids[3]]

    _, canceled = api.request("GET", "/jobs?status=canceled", key=user_key)
    assert [job["id"] for job in canceled["jobs"]] == [ids[1]]

    _, page2 = api.request("GET", "/jobs?asc=true&page_size=2&page=2", key=user_key)
    assert page2["_count"] == 4
    assert [job["id"] for job in page2["jobs"]] == ids[2:4]


@pytest.mark.parametrize("query, field", [
    ("status=finished", "status"), ("page_size=0", "page_size"), ("page_size=100000", "page_size"),
    ("page=0", "page"), ("page=x", "page"), ("asc=maybe", "asc"),
])
def test_bad_listing_queries(api, user_key, query, field):
    status, error = api.request("GET", f"/jobs?{query}", key=user_key)
    assert status == 400 and error["field"] == field


def test_cancel_only_unfinished_jobs(api, user_key):
    _, job = api.request("POST", "/jobs", sync_job(), key=user_key)
    status, body = api.request("DELETE", f"/jobs/{job['id']}", key=user_key)
    assert (status, body) == (202, {"message": "Job canceled"})
    _, canceled = api.request("GET", f"/jobs/{job['id']}", key=user_key)
    assert canceled["status"] == "canceled" and ISO_Z.match(canceled["canceled"])

    status, error = api.request("DELETE", f"/jobs/{job['id']}", key=user_key)
    assert status == 409 and error["error"] == "conflict"
    _, still = api.request("GET", f"/jobs/{job['id']}", key=user_key)
    assert still == canceled


def test_unknown_job_is_404(api, user_key):
    for method in ("GET", "DELETE"):
        status, error = api.request(method, "/jobs/00000000-0000-0000-0000-000000000000",
                                    key=user_key)
        assert status == 404 and error["error"] == "not_found"


def test_purge_container_group(api, user_key):
    group = "purge-me"
    pending = [api.request("POST", "/jobs", sync_job(container_group_id=group), key=user_key)[1]
               for _ in range(3)]
    _, other = api.request("POST", "/jobs", sync_job(container_group_id="keep"), key=user_key)
    _, [running] = api.request("GET", f"/work?machine_id=m1&container_group_id={group}",
                               key=user_key)

    status, body = api.request("DELETE", f"/jobs/container-groups/{group}", key=user_key)
    assert (status, body) == (200, {"count": 3})  # 200, as the original answers
    _, left = api.request("GET", f"/jobs?container_group_id={group}", key=user_key)
    assert [job["id"] for job in left["jobs"]] == [running["id"]]
    assert left["jobs"][0]["status"] == "canceled"
    for job in pending:
        if job["id"] != running["id"]:  # the pending ones are gone
            assert api.request("GET", f"/jobs/{job['id']}", key=user_key)[0] == 404
    _, kept = api.request("GET", f"/jobs/{other['id']}", key=user_key)
    assert kept["status"] == "pending"
    # The machine that held the purged running job is told to stop.
    _, beat = api.request("POST", f"/jobs/{running['id']}/heartbeat",
                          {"machine_id": "m1", "container_group_id": group}, key=user_key)
    assert beat == {"status": "canceled"}


def test_history_records_every_transition(api, user_key):
    _, job = api.request("POST", "/jobs", sync_job(container_group_id="hist"), key=user_key)
    api.request("GET", "/work?machine_id=m1&container_group_id=hist", key=user_key)
    api.request("POST", f"/jobs/{job['id']}/failed",
                {"machine_id": "m1", "exit_code": 2, "reason": "boom"}, key=user_key)
    api.request("GET", "/work?machine_id=m2&container_group_id=hist", key=user_key)
    api.request("POST", f"/jobs/{job['id']}/completed", {"machine_id": "m2"}, key=user_key)
    status, body = api.request("GET", f"/jobs/{job['id']}/events", key=user_key)
    assert status == 200
    kinds = [(e["kind"], e["status"], e["machine_id"]) for e in body["events"]]
    assert kinds == [
        ("created", "pending", None),
        ("assigned", "running", "m1"),
        ("attempt_failed", "running", "m1"),
        ("requeued", "pending", None),
        ("assigned", "running", "m2"),
        ("completed", "completed", "m2"),
    ]
    failure = body["events"][2]
    assert (failure["exit_code"], failure["reason"], failure["attempt"]) == (2, "boom", 1)
    assert all(ISO_Z.match(e["at"]) for e in body["events"])
