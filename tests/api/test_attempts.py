"""Attempt accounting and leases (issue 11), against the real API process on SQLite and
PostgreSQL: lost leases count toward max_interruptions, an attempt past timeout_s fails with
"timed out", and every lease carries the grace of api/lease.py."""

import time

import pytest

from api import lease
from tests.api.jobdefs import sync_job
from tests.api.test_work import claim, report, submit
from tests.support.api_process import ApiProcess
from tests.support.net import wait_until
from tests.support.webhook_receiver import WebhookReceiver

FAST_WEBHOOKS = {"KELPIE_WEBHOOK_POLL_S": "0.05", "KELPIE_WEBHOOK_RETRY_BASE_S": "0.1"}
# The tests below poll without waiting for a lease to run out, which nothing announces: their
# polls see it once the empty cache's safety net lapses, so that is short here.
FAST_LEASE_CHECKS = {"KELPIE_EMPTY_CACHE_TTL_S": "1"}
GRACE_S = 3


@pytest.fixture(scope="module")
def api(database_url, api_server):
    """This module's API: leases of exactly 2 × interval (grace 0), fast webhooks."""
    return api_server(database_url, env={**FAST_WEBHOOKS, **FAST_LEASE_CHECKS,
                                         "KELPIE_LEASE_GRACE_S": "0"})


@pytest.fixture
def receiver():
    with WebhookReceiver() as server:
        yield server


def fetch(api, key, job_id):
    status, job = api.request("GET", f"/jobs/{job_id}", key=key)
    assert status == 200, job
    return job


def events(api, key, job_id):
    status, body = api.request("GET", f"/jobs/{job_id}/events", key=key)
    assert status == 200, body
    return body["events"]


# --- The lease rule ---------------------------------------------------------------------------

def test_lease_rule():
    lease.configure(15)
    try:
        assert lease.seconds(1) == 16  # interval + grace: short intervals get the slack
        assert lease.seconds(15) == 30
        assert lease.seconds(30) == 60  # long ones keep 2 × interval
        lease.configure(0)
        assert lease.seconds(1) == 2
    finally:
        lease.configure(lease.DEFAULT_GRACE_S)


def test_lease_grace_keeps_a_slow_holder_its_job(database_url, tmp_path, user_key, api):
    """Interval 1 s, grace 3 s: the lease is 4 s, not 2. A holder whose heartbeat comes 2.5 s
    late (main's 2 s lease would have handed its job on) keeps its job; after the full lease
    without heartbeats the job goes to the next machine."""
    graced = ApiProcess(database_url, env={**FAST_LEASE_CHECKS,
                                           "KELPIE_LEASE_GRACE_S": str(GRACE_S)},
                        log_path=tmp_path / "graced.log")
    graced.admin_key = api.admin_key  # the bootstrap admin key must agree across processes
    with graced:
        job = submit(graced, user_key, container_group_id="grace", heartbeat_interval=1)
        taken = claim(graced, user_key, "m1", "grace")
        assert taken["id"] == job["id"]
        started = time.monotonic()
        while time.monotonic() - started < 2.5:
            assert claim(graced, user_key, "m2", "grace") is None
            time.sleep(0.2)
        # The heartbeat 2.5 s after the claim still finds m1 the holder, and renews 4 s.
        assert report(graced, user_key, job["id"], "heartbeat", "m1", "grace")[1] == {
            "status": "running"}
        renewed = time.monotonic()
        took_over = wait_until(lambda: claim(graced, user_key, "m2", "grace"), timeout=15,
                               interval=0.1)
        waited = time.monotonic() - renewed
        assert took_over["id"] == job["id"]
        assert waited >= 1 + GRACE_S - 0.3, f"handed on after {waited:.1f} s, lease is 4 s"


# --- max_interruptions ------------------------------------------------------------------------

def test_too_many_interruptions_fail_the_job(api, user_key, receiver):
    job = submit(api, user_key, container_group_id="poison", heartbeat_interval=1,
                 max_interruptions=1, webhook=receiver.url)
    assert job["max_interruptions"] == 1 and job["num_interruptions"] == 0
    assert claim(api, user_key, "m1", "poison")["id"] == job["id"]
    # m1 dies; m2 takes over the lost lease: interruption 1 of 1 is allowed.
    second = wait_until(lambda: claim(api, user_key, "m2", "poison"), timeout=15, interval=0.1)
    assert second["id"] == job["id"] and second["num_interruptions"] == 1
    # m2 dies too: the next claim does not hand it on but fails it.
    def ended():
        assert claim(api, user_key, "m3", "poison") is None
        return fetch(api, user_key, job["id"])["status"] == "failed"
    wait_until(ended, timeout=15, interval=0.1)
    final = fetch(api, user_key, job["id"])
    assert final["num_interruptions"] == 2 and final["num_failures"] == 0
    assert final["machine_id"] == "m2"
    history = events(api, user_key, job["id"])
    assert [(e["kind"], e["status"], e["reason"]) for e in history[-2:]] == [
        ("heartbeat_lost", "running",
         "no heartbeat from m2; interruption 2 of max_interruptions=1"),
        ("failed", "failed", "too many interruptions")]
    assert report(api, user_key, job["id"], "heartbeat", "m2", "poison")[1] == {
        "status": "failed"}
    notified = receiver.wait_for(job["id"], 3)  # running (m1), running (m2), failed
    assert notified[-1].json["status"] == "failed"
    assert notified[-1].json["reason"] == "too many interruptions"
    assert notified[-1].json["num_interruptions"] == 2


def test_an_interrupted_job_with_interruptions_left_is_handed_on(api, user_key):
    job = submit(api, user_key, container_group_id="lives", heartbeat_interval=1)
    assert job["max_interruptions"] == 100  # the documented default
    for machine in ("m1", "m2", "m3"):
        taken = wait_until(lambda m=machine: claim(api, user_key, m, "lives"), timeout=15,
                           interval=0.1)
        assert taken["id"] == job["id"] and taken["machine_id"] == machine
    assert fetch(api, user_key, job["id"])["num_interruptions"] == 2


# --- timeout_s --------------------------------------------------------------------------------

def _heartbeat_for(api, key, job_id, machine, group, seconds):
    """Keep the lease for `seconds` (a holder whose agent does not enforce the timeout)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert report(api, key, job_id, "heartbeat", machine, group)[1] == {"status": "running"}
        time.sleep(0.3)


def test_attempt_past_its_timeout_fails_when_reclaimed(api, user_key, receiver):
    """timeout 1 s, lease 2 s: m1 heartbeats for 3.5 s and vanishes. The claim that finds the
    lost lease fails the attempt with "timed out" (a failure of the job, max_failures=1)
    instead of handing it on."""
    job = submit(api, user_key, container_group_id="slow", heartbeat_interval=1, timeout_s=1,
                 max_failures=1, webhook=receiver.url)
    assert job["timeout_s"] == 1
    claim(api, user_key, "m1", "slow")
    _heartbeat_for(api, user_key, job["id"], "m1", "slow", 3.5)
    def ended():
        assert claim(api, user_key, "m2", "slow") is None
        return fetch(api, user_key, job["id"])["status"] == "failed"
    wait_until(ended, timeout=15, interval=0.1)
    final = fetch(api, user_key, job["id"])
    assert final["num_failures"] == 1 and final["num_interruptions"] == 0
    failed = [e for e in events(api, user_key, job["id"]) if e["kind"] == "attempt_failed"]
    assert [(e["machine_id"], e["reason"]) for e in failed] == [("m1", "timed out")]
    notified = receiver.wait_for(job["id"], 2)
    assert (notified[-1].json["status"], notified[-1].json["reason"]) == ("failed", "timed out")


def test_timed_out_attempt_with_failures_left_is_retried(api, user_key):
    job = submit(api, user_key, container_group_id="retry-slow", heartbeat_interval=1,
                 timeout_s=1, max_failures=2)
    claim(api, user_key, "m1", "retry-slow")
    _heartbeat_for(api, user_key, job["id"], "m1", "retry-slow", 3.5)
    again = wait_until(lambda: claim(api, user_key, "m2", "retry-slow"), timeout=15,
                       interval=0.1)
    assert again["id"] == job["id"] and again["num_failures"] == 1
    assert again["num_interruptions"] == 0 and again["num_attempts"] == 2


def test_timeout_not_reached_is_an_interruption(api, user_key):
    job = submit(api, user_key, container_group_id="not-slow", heartbeat_interval=1,
                 timeout_s=3600, max_failures=1)
    claim(api, user_key, "m1", "not-slow")
    again = wait_until(lambda: claim(api, user_key, "m2", "not-slow"), timeout=15,
                       interval=0.1)
    assert again["id"] == job["id"]
    assert again["num_failures"] == 0 and again["num_interruptions"] == 1


# --- Submission -------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, field", [
    ({"max_interruptions": -1}, "max_interruptions"),
    ({"max_interruptions": "3"}, "max_interruptions"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"timeout_s": 1.5}, "timeout_s"),
    ({"timeout_s": True}, "timeout_s"),
])
def test_bad_limits_are_refused(api, user_key, fields, field):
    status, error = api.request("POST", "/jobs", sync_job(**fields), key=user_key)
    assert status == 400 and error["field"] == field, error
    _, jobs = api.request("GET", "/jobs", key=user_key)
    assert jobs["_count"] == 0


def test_limits_are_optional_and_shown(api, user_key):
    _, job = api.request("POST", "/jobs", sync_job(max_interruptions=0, timeout_s=None),
                         key=user_key)
    assert (job["max_interruptions"], job["timeout_s"], job["num_interruptions"]) == (0, None, 0)
