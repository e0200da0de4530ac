"""Coordination API throughput on PostgreSQL, against the reference measured in the same run.

1. Claims through `GET /work` with 32 concurrent pollers (wrk) vs. a bare psycopg2 loop that
   runs the same claim transaction from 32 threads. Target: ratio >= 0.5.
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
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2

from api import sql
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
    user_id = api.request("GET", "/users/me", key=key)[1]["id"]

    script = _lua(f"""
        counter = 0
        request = function()
          counter = counter + 1
          return wrk.format("GET", "/work?machine_id=m" .. counter .. "&container_group_id=claims-http",
                            {{["X-Kelpie-Key"] = "{key}"}})
        end
    """)
    http = _wrk(wrk, api.url, script, duration=5)

    rate_sql = _bare_claim_loop(database_name, user_id, "claims-sql", seconds=5)
    _, claimed = api.request("GET", "/jobs?status=running&container_group_id=claims-http&page_size=1",
                             key=key)
    assert claimed["_count"] > 0 and http["non2xx"] == 0, http
    ratio = http["rps"] / rate_sql
    print(f"claims via GET /work (32 pollers):  {http['rps']:8.0f}/s  p50 {http['p50']:.1f} ms  "
          f"p99 {http['p99']:.1f} ms")
    print(f"bare psycopg2 claim loop (32 thr):  {rate_sql:8.0f}/s")
    print(f"ratio {ratio:.2f}  (target >= 0.5)  {verdict('claims vs bare SQL', ratio >= 0.5)}")


def _bare_claim_loop(database_name, user_id, group, seconds) -> float:
    """The claim transaction of api/queue.py (candidate, update, event, read back), as plain
    SQL on plain psycopg2 connections: what the HTTP path costs on top of it is the ratio."""
    dsn = f"host=127.0.0.1 port=5432 user=postgres dbname={database_name}"
    counts = [0] * CONNECTIONS
    stop_at = time.monotonic() + seconds

    def worker(index):
        connection = psycopg2.connect(dsn)
        cursor = connection.cursor()
        machine = f"bare-{index}"
        while time.monotonic() < stop_at:
            now = datetime.now(UTC).replace(tzinfo=None)
            # The very statement api/queue.py runs to pick the candidate.
            cursor.execute(*sql.claim_candidate("postgresql", user_id, machine, group, now))
            row = cursor.fetchone()
            if row is None:
                connection.rollback()
                break
            _, job_id, _, _, interval, attempts = row
            cursor.execute(
                "UPDATE jobs SET status = 'running', machine_id = %s, started = %s, heartbeat = %s, "
                "lease_expires = %s, num_attempts = %s WHERE id = %s",
                (machine, now, now, now + timedelta(seconds=2 * interval), attempts + 1, job_id))
            cursor.execute(
                "INSERT INTO job_events (job_id, at, kind, status, machine_id, attempt) "
                "VALUES (%s, %s, 'assigned', 'running', %s, %s)", (job_id, now, machine, attempts + 1))
            cursor.execute("SELECT * FROM jobs WHERE id = %s", (job_id,))
            cursor.fetchone()
            connection.commit()
            counts[index] += 1
        connection.close()

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.monotonic() - started)


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
