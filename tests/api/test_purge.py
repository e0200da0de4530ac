"""Big purges in bounded batches (issue 11), against the real API process on SQLite and
PostgreSQL: purging a container group of many jobs while another tenant heartbeats. The
heartbeats never fail and never wait behind the whole purge, only behind one batch.

20,000 jobs (20 batches) in `make test`; KELPIE_PURGE_JOBS=100000 is the size the issue measured.
"""

import os
import sqlite3
import threading
import time
import uuid
from datetime import UTC, datetime

import psycopg2
from psycopg2.extras import execute_values

from tests.api.jobdefs import sync_job

JOBS = int(os.environ.get("KELPIE_PURGE_JOBS", "20000"))


def _insert(database_url: str, user_id: str, group: str, count: int) -> None:
    """Pending jobs with their creation events, written straight into the database: through
    the API this would take minutes."""
    now = datetime.now(UTC).replace(tzinfo=None)
    ids = [str(uuid.uuid4()) for _ in range(count)]
    jobs = [(job_id, user_id, "pending", now, "true", "[]", "{}", 3, 30, group)
            for job_id in ids]
    events = [(job_id, now, "created", "pending") for job_id in ids]
    job_sql = ("INSERT INTO jobs (id, user_id, status, created, command, arguments,"
               " environment, max_failures, heartbeat_interval, container_group_id) VALUES ")
    event_sql = "INSERT INTO job_events (job_id, at, kind, status) VALUES "
    if database_url.startswith("sqlite"):
        connection = sqlite3.connect(database_url[len("sqlite:///"):], timeout=60)
        with connection:
            connection.executemany(job_sql + "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                   [(*row[:3], row[3].isoformat(" "), *row[4:]) for row in jobs])
            connection.executemany(event_sql + "(?, ?, ?, ?)",
                                   [(row[0], row[1].isoformat(" "), *row[2:]) for row in events])
        connection.close()
        return
    connection = psycopg2.connect(database_url)
    with connection, connection.cursor() as cursor:
        execute_values(cursor, job_sql + "%s", jobs, page_size=5000)
        execute_values(cursor, event_sql + "%s", events, page_size=5000)
    connection.close()


def test_a_big_purge_does_not_block_another_tenants_heartbeats(api, database_url, user_key):
    other_key = api.create_user("purge-bystander")
    status, mine = api.request("POST", "/jobs", sync_job(container_group_id="huge"),
                               key=user_key)
    assert status == 202
    _insert(database_url, mine["user_id"], "huge", JOBS)
    # A few of the group's jobs are running: they are canceled, not deleted.
    for index in range(3):
        status, work = api.request("GET", f"/work?machine_id=p{index}&container_group_id=huge",
                                   key=user_key)
        assert status == 200 and work
    # The bystander holds a job of its own and heartbeats throughout.
    api.request("POST", "/jobs", sync_job(container_group_id="huge"), key=other_key)
    status, [held] = api.request("GET", "/work?machine_id=b1&container_group_id=huge",
                                 key=other_key)
    assert status == 200

    done = threading.Event()
    beats: list[tuple[int, float]] = []

    def heartbeat():
        while not done.is_set():
            started = time.monotonic()
            status, _ = api.request("POST", f"/jobs/{held['id']}/heartbeat",
                                    {"machine_id": "b1", "container_group_id": "huge"},
                                    key=other_key)
            beats.append((status, time.monotonic() - started))

    beater = threading.Thread(target=heartbeat)
    beater.start()
    try:
        started = time.monotonic()
        status, body = api.request("DELETE", "/jobs/container-groups/huge", key=user_key)
        took = time.monotonic() - started
    finally:
        done.set()
        beater.join()
    assert status == 200 and body == {"count": JOBS + 1}, body
    assert beats and all(status == 200 for status, _ in beats), beats[:20]
    slowest = max(latency for _, latency in beats)
    print(f"purge of {JOBS + 1} jobs took {took:.1f} s; {len(beats)} heartbeats, "
          f"slowest {slowest * 1000:.0f} ms")
    # Behind one batch at most, never behind the whole purge.
    assert slowest < max(1.0, took / 4), (slowest, took)
    # The bystander's job is untouched; the purged group's running jobs are canceled.
    _, still = api.request("GET", f"/jobs/{held['id']}", key=other_key)
    assert still["status"] == "running" and still["machine_id"] == "b1"
    _, left = api.request("GET", "/jobs?container_group_id=huge", key=user_key)
    assert left["_count"] == 3 and {job["status"] for job in left["jobs"]} == {"canceled"}
