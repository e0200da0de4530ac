"""GET /work?wait=N: a long poll held until a job of the caller's group can be claimed."""

import collections
import re
import socket
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import pytest

from api import config
from tests.api.jobdefs import sync_job
from tests.conftest import make_database_url
from tests.support import postgres
from tests.support.api_process import ApiProcess
from tests.support.net import wait_until


def submit(api, key, group, **overrides):
    status, job = api.request("POST", "/jobs", sync_job(container_group_id=group, **overrides),
                              key=key)
    assert status == 202, job
    return job


def waiters(api) -> int:
    """The kelpie_work_waiters gauge, summed over the API's processes."""
    request = urllib.request.Request(api.url + "/metrics", headers={"X-Kelpie-Key": api.admin_key})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    match = re.search(r"^kelpie_work_waiters(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE)
    return int(float(match.group(1))) if match else 0


class Poll(threading.Thread):
    """One long poll in the background; `.answer` is (status, body) once it returns."""

    def __init__(self, api, key, machine, group, wait):
        super().__init__(daemon=True)
        self.api, self.key, self.path = api, key, (
            f"/work?machine_id={machine}&container_group_id={group}&wait={wait}")
        self.answer = None

    def run(self):
        self.answer = self.api.request("GET", self.path, key=self.key)

    def result(self, timeout=40):
        self.join(timeout)
        assert not self.is_alive(), "the long poll did not return"
        return self.answer


def group():
    return f"g-{uuid.uuid4().hex[:8]}"


def parked(api, count):
    wait_until(lambda: waiters(api) >= count, timeout=20,
               message=f"{count} waiter(s) never parked")


def test_wait_returns_a_job_submitted_during_the_wait(api, user_key):
    g = group()
    poll = Poll(api, user_key, "m1", g, 20)
    poll.start()
    parked(api, 1)
    job = submit(api, user_key, g)
    status, work = poll.result()
    assert status == 200 and [item["id"] for item in work] == [job["id"]]
    assert work[0]["status"] == "running" and work[0]["machine_id"] == "m1"
    wait_until(lambda: waiters(api) == 0, timeout=10)


def test_a_pending_job_is_answered_at_once_and_other_groups_do_not_wake(api, user_key):
    g, other = group(), group()
    job = submit(api, user_key, g)
    status, work = api.request("GET", f"/work?machine_id=m1&container_group_id={g}&wait=20",
                               key=user_key)
    assert status == 200 and work[0]["id"] == job["id"]
    poll = Poll(api, user_key, "m2", g, 2)
    poll.start()
    parked(api, 1)
    submit(api, user_key, other)
    assert poll.result() == (200, [])


@pytest.mark.parametrize("bad", ["abc", "-1", "nan", "inf", "1e999"])
def test_bad_wait_is_refused(api, user_key, bad):
    status, error = api.request("GET", f"/work?machine_id=m1&container_group_id=g&wait={bad}",
                                key=user_key)
    assert status == 400 and error["field"] == "wait", error


def test_the_wait_is_in_the_openapi_document(api):
    status, spec = api.request("GET", "/docs/openapi.json")
    assert status == 200
    parameters = spec["paths"]["/work"]["get"]["parameters"]
    wait = next(p for p in parameters if p["name"] == "wait")
    assert wait["in"] == "query" and wait["schema"]["maximum"] == 30


def each_job_to_one_waiter(api, key, *, waiters: int, jobs: int, wait: float) -> None:
    """`waiters` long polls parked on one group, then `jobs` submissions to it: every poll
    answers 200 and every job is handed out exactly once (the rest answer [] at their wait's
    end)."""
    g = group()
    polls = [Poll(api, key, f"m{i}", g, wait) for i in range(waiters)]
    for poll in polls:
        poll.start()
    parked(api, waiters)
    submitted = [submit(api, key, g) for _ in range(jobs)]
    answers = [poll.result() for poll in polls]
    assert all(status == 200 for status, _ in answers), answers
    got = [item["id"] for _, work in answers for item in work]
    assert sorted(got) == sorted(job["id"] for job in submitted)


def test_exactly_one_of_several_waiters_gets_the_job(api, user_key):
    each_job_to_one_waiter(api, user_key, waiters=4, jobs=1, wait=4)


def test_a_failure_that_requeues_wakes_a_waiter(api, user_key):
    g = group()
    job = submit(api, user_key, g, max_failures=3)
    assert api.request("GET", f"/work?machine_id=m1&container_group_id={g}",
                       key=user_key)[1][0]["id"] == job["id"]
    poll = Poll(api, user_key, "m2", g, 20)
    poll.start()
    parked(api, 1)
    status, _ = api.request("POST", f"/jobs/{job['id']}/failed",
                            {"machine_id": "m1", "container_group_id": g, "exit_code": 1},
                            key=user_key)
    assert status == 202
    status, work = poll.result()
    assert status == 200 and work[0]["id"] == job["id"] and work[0]["machine_id"] == "m2"


def test_a_lease_that_expires_wakes_a_waiter(api, user_key):
    g = group()
    job = submit(api, user_key, g, heartbeat_interval=1)  # lease 2 s; m1 never heartbeats
    assert api.request("GET", f"/work?machine_id=m1&container_group_id={g}",
                       key=user_key)[1][0]["id"] == job["id"]
    poll = Poll(api, user_key, "m2", g, 25)
    poll.start()
    status, work = poll.result()
    assert status == 200 and work and work[0]["id"] == job["id"]
    assert work[0]["machine_id"] == "m2" and work[0]["num_interruptions"] == 1


def test_a_client_that_goes_away_leaves_no_waiter(api, user_key):
    g = group()
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as connection:
        connection.sendall(
            f"GET /work?machine_id=m1&container_group_id={g}&wait=25 HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nX-Kelpie-Key: {user_key}\r\n\r\n".encode())
        parked(api, 1)
    wait_until(lambda: waiters(api) == 0, timeout=10, message="the waiter outlived its client")
    # And the job submitted afterwards is still there for the next poll (nobody took it).
    job = submit(api, user_key, g)
    assert api.request("GET", f"/work?machine_id=m2&container_group_id={g}",
                       key=user_key)[1][0]["id"] == job["id"]


def empty_cache_hits(api) -> int:
    """The kelpie_work_empty_cache_hits counter, summed over the API's processes."""
    request = urllib.request.Request(api.url + "/metrics", headers={"X-Kelpie-Key": api.admin_key})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    return int(sum(float(value) for value in re.findall(
        r"^kelpie_work_empty_cache_hits_total(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE)))


def test_the_poll_after_a_quiet_wait_costs_no_claim(api, user_key):
    """An idle agent polls again right after its wait ends. Nothing woke the group during
    the wait, so that poll is answered from the empty cache, however long the wait was
    (longer than the cache's own 5 s safety limit here)."""
    g = group()
    path = f"/work?machine_id=m1&container_group_id={g}"
    assert api.request("GET", path + "&wait=6", key=user_key) == (200, [])
    hits = empty_cache_hits(api)
    assert api.request("GET", path, key=user_key) == (200, [])
    assert empty_cache_hits(api) == hits + 1
    # A submission still ends the group's emptiness at once.
    job = submit(api, user_key, g)
    status, work = api.request("GET", path, key=user_key)
    assert status == 200 and [claimed["id"] for claimed in work] == [job["id"]]


def test_a_revoked_key_is_refused_even_when_the_group_is_known_empty(api):
    key = api.create_user(f"revoked-{uuid.uuid4().hex[:8]}")
    g = group()
    path = f"/work?machine_id=m1&container_group_id={g}"
    assert api.request("GET", path, key=key) == (200, [])
    assert api.request("GET", path, key=key) == (200, [])  # the empty cache may answer this one
    status, listing = api.request("GET", "/users/me/tokens", key=key)
    assert status == 200
    status, _ = api.request("DELETE", f"/users/me/tokens/{listing['tokens'][0]['id']}", key=key)
    assert status == 204
    # The revocation clears this process's stamp of the key (directly, or through the
    # listener on PostgreSQL), so the poll reads the key; at worst KELPIE_KEY_RECHECK_S later.
    wait_until(lambda: api.request("GET", path, key=key)[0] == 403,
               timeout=config.load().key_recheck_seconds + 0.5,
               message="a revoked key still got [] from the empty cache")
    assert api.request("GET", path, key=key)[0] == 403


def _known_empty_polls(api, key, path, count):
    """`count` polls answered [] (each process of the API has seen the group empty)."""
    for _ in range(count):
        assert api.request("GET", path, key=key) == (200, [])


def test_an_expired_key_is_refused_by_the_empty_cache_within_the_recheck_bound(own_api):
    """Nothing announces an expiry: the empty cache's answer re-reads the key once it was last
    seen valid KELPIE_KEY_RECHECK_S ago, so an expired key gets [] that long at most."""
    api = own_api
    user_id = api.request("GET", "/users/me", key=api.create_user("expiring"))[1]["id"]
    status, issued = api.request("POST", f"/users/{user_id}/token", {"expires_in_s": 2})
    assert status == 201, issued
    issued_by = time.monotonic()
    key = issued["token"]
    path = "/work?machine_id=m1&container_group_id=" + group()
    hits = empty_cache_hits(api)
    _known_empty_polls(api, key, path, 3)
    assert empty_cache_hits(api) > hits  # the path under test answered
    wait_until(lambda: api.request("GET", path, key=key)[0] == 403, timeout=10,
               message="an expired key was never refused")
    # Expired at issued_by + 2 s at the latest; refused at most the recheck bound later (plus
    # one poll's time on a busy machine).
    assert time.monotonic() - issued_by <= 2 + OWN_RECHECK_S + 0.75


@pytest.fixture(scope="module")
def pg_two_workers(postgres_url, api_server):
    """Two Sanic processes on PostgreSQL whose key stamps outlast the module, so that only a
    notification can tell one process of what the other did to a key."""
    return api_server(postgres_url, workers=2, env={"KELPIE_KEY_RECHECK_S": "600"})


def test_postgres_a_revocation_reaches_every_process_at_once(pg_two_workers):
    """With a recheck bound far longer than the test, only the revocation's notification can
    make the other process refuse the key: every poll after the first 403 is refused."""
    api = pg_two_workers
    key = api.create_user("revoked-everywhere")
    path = "/work?machine_id=m1&container_group_id=" + group()

    def polls(count):
        # Concurrent connections: one after another, they all tend to land on one process.
        with ThreadPoolExecutor(16) as pool:
            return collections.Counter(pool.map(
                lambda _: api.request("GET", path, key=key)[0], range(count)))

    hits = empty_cache_hits(api)
    assert polls(64) == {200: 64}
    # At least two claims ran: both processes know the group empty and have seen the key.
    assert empty_cache_hits(api) - hits <= 62
    listing = api.request("GET", "/users/me/tokens", key=key)[1]
    status, _ = api.request("DELETE", f"/users/me/tokens/{listing['tokens'][0]['id']}",
                            key=key)
    assert status == 204
    wait_until(lambda: api.request("GET", path, key=key)[0] == 403, timeout=5,
               message="the revoked key was still answered")
    assert polls(64) == {403: 64}


# --- limits and processes of their own ---------------------------------------------------------

OWN_RECHECK_S = 1.0


@pytest.fixture(scope="module")
def own_api(database_url, api_server, tmp_path_factory):
    """An API on a database of its own (the module's dialect) with settings the shared one must
    not have: waits capped at 1 s, and a key recheck bound the test states itself."""
    url, cleanup = make_database_url("postgresql" if database_url.startswith("postgres")
                                     else "sqlite", tmp_path_factory.mktemp("own"))
    server = api_server(url, env={"KELPIE_MAX_POLL_WAIT_S": "1",
                                  "KELPIE_KEY_RECHECK_S": str(OWN_RECHECK_S)})
    yield server
    server.stop()  # before its database goes
    cleanup()


def test_the_wait_is_capped(own_api):
    api = own_api
    key = api.create_user("capped")
    started = time.monotonic()
    status, work = api.request("GET", "/work?machine_id=m1&container_group_id=g&wait=600",
                               key=key)
    # Answered by the server's cap, long before the client's own 30 s timeout.
    assert (status, work) == (200, []) and time.monotonic() - started < 25


@pytest.fixture
def pg_url():
    name, url = postgres.create_database("longpoll")
    yield name, url
    postgres.drop_database(name)


def test_postgres_wakes_a_waiter_in_another_process(pg_url, tmp_path):
    _, url = pg_url
    with ApiProcess(url, log_path=tmp_path / "a.log") as first:
        key = first.create_user("cross")
        second = ApiProcess(url, log_path=tmp_path / "b.log")
        second.admin_key = first.admin_key  # one database, one administrator key
        with second:
            g = group()
            poll = Poll(first, key, "m1", g, 20)
            poll.start()
            parked(first, 1)
            job = submit(second, key, g)
            status, work = poll.result()
            assert status == 200 and work[0]["id"] == job["id"]


def test_postgres_two_workers_hand_each_job_to_one_waiter(pg_two_workers):
    each_job_to_one_waiter(pg_two_workers, pg_two_workers.create_user("workers"),
                           waiters=6, jobs=3, wait=6)


def test_postgres_listener_reconnects_after_its_connection_is_killed(pg_url, tmp_path):
    name, url = pg_url
    with ApiProcess(url, log_path=tmp_path / "api.log") as api:
        key = api.create_user("reconnect")
        g = group()
        poll = Poll(api, key, "m1", g, 25)
        poll.start()
        parked(api, 1)
        admin = psycopg2.connect(postgres.ADMIN_DSN)
        admin.autocommit = True
        try:
            with admin.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                               " AND query ILIKE 'LISTEN%%'", (name,))
                assert cursor.fetchone()[0] == 1
            postgres.terminate_connections(name)
            with admin.cursor() as cursor:
                def listening_again():
                    cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                                   " AND query ILIKE 'LISTEN%%'", (name,))
                    return cursor.fetchone()[0] == 1
                wait_until(listening_again, timeout=20, message="the listener never came back")
        finally:
            admin.close()
        parked(api, 1)
        job = submit(api, key, g)
        status, work = poll.result()
        assert status == 200 and work and work[0]["id"] == job["id"]


def test_sqlite_with_two_processes_still_wakes_waiters(tmp_path):
    """Several Sanic processes on one SQLite file do not hear each other's signal: the
    sweeper's re-check finds the job for a waiter in the other process."""
    with ApiProcess(f"sqlite:///{tmp_path}/kelpie.db", workers=2,
                    log_path=tmp_path / "api.log") as api:
        # Several of the sweeper's passes (api/wakeups.py) fit in 8 s, after the last waiter parks.
        each_job_to_one_waiter(api, api.create_user("sqlite-two"), waiters=4, jobs=2, wait=8)
