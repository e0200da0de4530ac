"""No two machines ever hold the same job: 32 concurrent claimers over 500 jobs."""

import threading
from collections import Counter

import pytest

from tests.api.jobdefs import sync_job

CLAIMERS = 32
JOBS = 500


@pytest.fixture(scope="module")
def pg_api(postgres_url, api_server):
    return api_server(postgres_url, workers=2)


def test_every_job_is_claimed_exactly_once(pg_api):
    key = pg_api.create_user("claimers")
    status, _ = pg_api.request("POST", "/jobs/batch",
                               [sync_job(container_group_id="race", arguments=[str(i)])
                                for i in range(JOBS)], key=key)
    assert status == 202

    claims: list[tuple[str, str]] = []
    errors: list[object] = []
    lock = threading.Lock()

    def claimer(machine: str) -> None:
        while True:
            status, work = pg_api.request(
                "GET", f"/work?machine_id={machine}&container_group_id=race", key=key)
            if status != 200:
                errors.append((status, work))
                return
            if not work:
                return
            with lock:
                claims.append((work[0]["id"], machine))

    threads = [threading.Thread(target=claimer, args=(f"machine-{n}",)) for n in range(CLAIMERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)

    assert not errors
    counts = Counter(job_id for job_id, _ in claims)
    assert len(counts) == JOBS, "every job was handed out"
    assert max(counts.values()) == 1, "no job was handed out twice"
    assert len({machine for _, machine in claims}) > 1, "the claimers really ran concurrently"
    _, running = pg_api.request("GET", "/jobs?status=running&page_size=1", key=key)
    assert running["_count"] == JOBS
