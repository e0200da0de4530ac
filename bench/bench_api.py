"""Coordination API throughput on PostgreSQL, against the reference measured in the same run.

1. Claims. Three figures from 32 concurrent clients each:
   - the claim bare: the very statement `GET /work` runs (api/sql.py's one-statement claim,
     PREPAREd per connection as api/queue.py does), from a psycopg2 loop. Target >= 3,000/s.
   - a minimal claim, the reference: `UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED
     LIMIT 1) RETURNING` on a three-column table, run the same way. What the project's claim
     costs beyond picking and marking a row (bans, the stale check, the key check, the event
     and outbox rows, the job's indexes) is the ratio of the two.
   - claims through `GET /work` (wrk). Target >= 0.5 x the bare claim.
2. Heartbeats sustained (wrk, 32 connections, 10 s) with p50/p99. Target >= 2000/s, p99 <= 50 ms.
3. `POST /jobs/batch` of 1,000 jobs, median of 10. Target <= 250 ms.
"""

import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg2

from api import keys, serialize, sql
from bench.targets import verdict
from tests.api.jobdefs import sync_job
from tests.support import postgres
from tests.support.api_process import ApiProcess

CONNECTIONS = 32
CLAIM_JOBS = 30_000
DURATION_S = 10
API_WORKERS = int(os.environ.get("KELPIE_BENCH_API_WORKERS", "2"))


def run() -> None:
    wrk = _ensure_wrk()
    name, url = postgres.create_database("bench")
    api = ApiProcess(url, workers=API_WORKERS, log_path=Path(tempfile.gettempdir()) / "bench-api.log",
                     env={"KELPIE_AUTH_CACHE_S": "30"})
    try:
        api.start()
        key = api.create_user("bench")
        print(f"API: {API_WORKERS} Sanic worker processes, PostgreSQL {url.rsplit('@', 1)[-1]}")
        _bench_claims(api, key, name, wrk)
        _bench_heartbeats(api, key, wrk)
        _bench_batch(api, key)
    finally:
        api.stop()
        postgres.drop_database(name)


# --- claims -----------------------------------------------------------------------------------

def _submit(api, key, count: int, group: str) -> None:
    for start in range(0, count, 1000):
        status, body = api.request("POST", "/jobs/batch",
                                   [sync_job(container_group_id=group)] * min(1000, count - start),
                                   key=key)
        assert status == 202, body


def _bench_claims(api, key, database_name, wrk) -> None:
    _submit(api, key, CLAIM_JOBS, "claims-http")
    _submit(api, key, CLAIM_JOBS, "claims-sql")
    me = api.request("GET", "/users/me", key=key)[1]

    script = _lua(f"""
        counter = 0
        request = function()
          counter = counter + 1
          return wrk.format("GET", "/work?machine_id=m" .. counter .. "&container_group_id=claims-http",
                            {{["X-Kelpie-Key"] = "{key}"}})
        end
    """)
    http = _wrk(wrk, api.url, script, duration=5)
    _, claimed = api.request("GET", "/jobs?status=running&container_group_id=claims-http&page_size=1",
                             key=key)
    assert claimed["_count"] > 0 and http["non2xx"] == 0, http

    bare = _bare_claim_loop(database_name, me["id"], keys.hash_key(key), "claims-sql", seconds=5)
    minimal = _minimal_claim_loop(database_name, rows=CLAIM_JOBS, seconds=5)
    ratio = http["rps"] / bare
    print(f"claims via GET /work (32 pollers):      {http['rps']:8.0f}/s  p50 {http['p50']:.1f} ms  "
          f"p99 {http['p99']:.1f} ms")
    print(f"the claim statement bare (32 threads):  {bare:8.0f}/s  (target >= 3000)  "
          f"{verdict('bare claim', bare >= 3000)}")
    print(f"minimal SKIP LOCKED claim (reference):  {minimal:8.0f}/s  "
          f"(the claim does {bare / minimal:.2f}x its rate)")
    print(f"GET /work / bare claim: {ratio:.2f}  (target >= 0.5)  "
          f"{verdict('claims vs bare SQL', ratio >= 0.5)}")


def _claim_threads(database_name: str, claim_one, seconds: float) -> float:
    """Claims per second from CONNECTIONS threads, each on its own autocommit psycopg2
    connection, calling `claim_one(cursor, index)` (True: claimed one) until the time is up
    or nothing is left."""
    dsn = f"host=127.0.0.1 port=5432 user=postgres dbname={database_name}"
    counts = [0] * CONNECTIONS
    stop_at = time.monotonic() + seconds

    def worker(index):
        connection = psycopg2.connect(dsn)
        connection.autocommit = True
        cursor = connection.cursor()
        while time.monotonic() < stop_at and claim_one(cursor, index):
            counts[index] += 1
        connection.close()

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.monotonic() - started)


def _bare_claim_loop(database_name, user_id, key_hash, group, seconds) -> float:
    """api/queue.py's claim of a pending job, as GET /work runs it for this user's key, with
    nothing around it: what the HTTP path costs on top of it is the ratio."""
    prepared_on: set[int] = set()

    def claim_one(cursor, index) -> bool:
        machine = f"bare-{index}"
        now = datetime.now(UTC).replace(tzinfo=None)
        statement, params = sql.claim_pending_pg(
            user_id, machine, group, now, actor="bench", timestamp=serialize.timestamp(now),
            key_hash=key_hash)
        name, prepare = sql.prepared(statement)
        if index not in prepared_on:
            cursor.execute(prepare)
            prepared_on.add(index)
        cursor.execute(*sql.execute_prepared(name, params, sql.CLAIM_PENDING_PG_BEFORE))
        row = cursor.fetchone()
        assert row[1], "the key check failed"
        return row[2] is not None

    return _claim_threads(database_name, claim_one, seconds)


def _minimal_claim_loop(database_name, rows: int, seconds) -> float:
    """The least a claim can be: mark the oldest pending row of a three-column table taken."""
    with psycopg2.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={database_name}") as c:
        c.cursor().execute(
            "CREATE TABLE bench_minimal (id bigserial PRIMARY KEY, status text NOT NULL,"
            " machine_id text); CREATE INDEX bench_minimal_pending ON bench_minimal (id)"
            " WHERE status = 'pending';"
            "INSERT INTO bench_minimal (status) SELECT 'pending' FROM generate_series(1, %s)",
            (rows,))

    def claim_one(cursor, index) -> bool:
        cursor.execute(
            "UPDATE bench_minimal SET status = 'running', machine_id = %s WHERE id = ("
            "SELECT id FROM bench_minimal WHERE status = 'pending' ORDER BY id LIMIT 1"
            " FOR UPDATE SKIP LOCKED) RETURNING id", (f"minimal-{index}",))
        return cursor.fetchone() is not None

    return _claim_threads(database_name, claim_one, seconds)


# --- heartbeats -------------------------------------------------------------------------------

def heartbeat_script(api, key, group: str) -> str:
    """Claim 1,000 jobs of `group` for one machine, and write the wrk script that heartbeats
    them in turn (bench_fleet uses it too)."""
    _submit(api, key, 1000, group)
    jobs = []
    for _ in range(1000):
        _, work = api.request("GET", f"/work?machine_id=hb-machine&container_group_id={group}",
                              key=key)
        jobs.append(work[0]["id"])
    ids = ",".join(f'"{job_id}"' for job_id in jobs)
    body = json.dumps({"machine_id": "hb-machine", "container_group_id": group})
    return _lua(f"""
        ids = {{{ids}}}
        counter = 0
        request = function()
          counter = counter + 1
          local id = ids[(counter % #ids) + 1]
          return wrk.format("POST", "/jobs/" .. id .. "/heartbeat",
                            {{["X-Kelpie-Key"] = "{key}", ["Content-Type"] = "application/json"}},
                            '{body}')
        end
    """)


def _bench_heartbeats(api, key, wrk) -> None:
    script = heartbeat_script(api, key, "heartbeats")
    result = _wrk(wrk, api.url, script, duration=DURATION_S)
    assert result["non2xx"] == 0, result
    met = result["rps"] >= 2000 and result["p99"] <= 50
    print(f"heartbeats (32 conns, {DURATION_S} s):        {result['rps']:8.0f}/s  "
          f"p50 {result['p50']:.1f} ms  p99 {result['p99']:.1f} ms  "
          f"(target >= 2000/s, p99 <= 50 ms)  {verdict('heartbeats', met)}")


# --- batch submit -----------------------------------------------------------------------------

def _bench_batch(api, key) -> None:
    batch = [sync_job(arguments=[str(uuid.uuid4())]) for _ in range(1000)]
    timings = []
    for _ in range(10):
        started = time.perf_counter()
        status, _ = api.request("POST", "/jobs/batch", batch, key=key)
        timings.append((time.perf_counter() - started) * 1000)
        assert status == 202
    median = statistics.median(timings)
    print(f"POST /jobs/batch of 1000, median of 10: {median:6.0f} ms  (min {min(timings):.0f}, "
          f"max {max(timings):.0f}; target <= 250 ms)  {verdict('batch submission', median <= 250)}")


# --- wrk --------------------------------------------------------------------------------------

def _ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                   stdout=subprocess.DEVNULL)
    return shutil.which("wrk")


def _lua(source: str) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(source + """
        done = function(summary, latency, requests)
          io.write(string.format("KELPIE %d %d %f %f %d\\n", summary.requests,
            summary.duration, latency:percentile(50), latency:percentile(99),
            summary.errors.status + summary.errors.connect + summary.errors.read +
            summary.errors.write + summary.errors.timeout))
        end
    """)
    return handle.name


def _wrk(wrk, url, script, duration) -> dict:
    output = subprocess.run(
        [wrk, "-t", "2", "-c", str(CONNECTIONS), "-d", f"{duration}s", "-s", script, url],
        capture_output=True, text=True, check=True).stdout
    match = re.search(r"KELPIE (\d+) (\d+) ([\d.]+) ([\d.]+) (\d+)", output)
    requests, duration_us, p50_us, p99_us, errors = match.groups()
    return {"rps": int(requests) / (int(duration_us) / 1e6), "p50": float(p50_us) / 1000,
            "p99": float(p99_us) / 1000, "non2xx": int(errors)}
