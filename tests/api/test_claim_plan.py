"""The claim's cost does not grow with the jobs a tenant has already run (PostgreSQL).

The claim runs as a prepared statement, and PostgreSQL eventually plans a prepared statement
once, without looking at its parameters (a generic plan). For a tenant whose jobs all share one
group, such a plan once walked every job already claimed to find the next pending one, and
every running job to check for a lost lease: 8.9 ms and 2,249 buffers per claim after 5,000
claims, and growing. This forces the generic plan and bounds the pages one claim reads.
"""

import re
from datetime import timedelta

import pytest

from api import db, jobspec, keys, queue, serialize, sql
from api.config import Settings
from api.principal import Principal
from tests.api.jobdefs import sync_job
from tests.conftest import queue_database

GROUP = "one-group"
JOBS, CLAIMED = 3000, 2000
OTHERS_LOST = 500
# A claim reads the index pages leading to one pending job and to this group's lost leases, the
# job's heap page, and writes the job, its event and their index entries: a few dozen pages
# (35 to 43 measured). The walks this guards against read a page per job skipped or per few:
# every job claimed before (413 pages measured), every lost lease of every tenant (124).
# Statistics taken during the burst say no job is running, and then PostgreSQL may check for
# lost leases with another index than `jobs_stale` (all look like one row to it): that walk is
# bounded by the jobs running at that moment, not by the tenant's history.
MAX_BUFFERS = {"analyzed-after-claims": 100, "analyzed-during-burst": 200}


@pytest.fixture(scope="module", params=["analyzed-after-claims", "analyzed-during-burst"])
def tenant(request, tmp_path_factory):
    """A tenant with one group, CLAIMED of its JOBS claimed, beside another tenant whose
    OTHERS_LOST running jobs all lost their leases (its nodes died and nobody polls its group).
    The statistics are taken either after the claims, as autovacuum leaves them in the end, or
    while every job was still pending, as they stay after a burst until a tenth of the table
    has changed: then every row looks pending and no group seems to run anything, and several
    indexes look as good as the right one."""
    burst = request.param == "analyzed-during-burst"
    with queue_database("postgresql", tmp_path_factory.mktemp("claim-plan"), ["plan", "other"]):
        if burst:
            db.database.execute_sql("ALTER TABLE jobs SET (autovacuum_enabled = false)")
        keys.insert("plan", "plan-key")
        principal = Principal(user_id="plan", key_hash=keys.hash_key("plan-key"))
        other = Principal(user_id="other")
        spec = jobspec.parse_job(sync_job(container_group_id=GROUP), Settings())
        for _ in range(JOBS // 1000):
            queue.submit(principal, [spec] * 1000)
        queue.submit(other, [spec] * OTHERS_LOST)
        if burst:
            db.database.execute_sql("ANALYZE jobs")
        for index in range(OTHERS_LOST):
            assert queue.claim(other, f"lost-{index}", GROUP) is not None
        db.database.execute_sql("UPDATE jobs SET lease_expires = %s WHERE user_id = 'other'",
                                [db.utcnow() - timedelta(hours=1)])
        for index in range(CLAIMED):
            assert queue.claim(principal, f"machine-{index % 100}", GROUP) is not None
        if not burst:
            # The versions the claims replaced are gone from the indexes, as autovacuum leaves
            # them, so what is measured is the walk over live jobs that a poor plan makes.
            db.database.execute_sql("VACUUM ANALYZE jobs")
        yield principal, MAX_BUFFERS[request.param]


def _one_claim(principal: Principal, machine_id: str) -> tuple[int, str]:
    """(pages the claim touched, its plan), run as GET /work runs it, prepared anew under a
    name of its own so the queue's statements on this connection stay as they are."""
    now = db.utcnow()
    statement, params = sql.claim_pending_pg(
        principal.user_id, machine_id, GROUP, now, actor="test",
        timestamp=serialize.timestamp(now), key_hash=principal.key_hash)
    name, prepare = sql.prepared(statement)
    db.database.execute_sql(prepare.replace(name, "claim_plan_test", 1))
    try:
        explain, params = sql.execute_prepared("claim_plan_test", params)
        plan = "\n".join(row[0] for row in db.database.execute_sql(
            "EXPLAIN (ANALYZE, BUFFERS) " + explain, params).fetchall())
    finally:
        db.database.execute_sql("DEALLOCATE claim_plan_test")
    assert "Seq Scan on jobs" not in plan, plan
    top = re.search(r"Buffers: shared hit=(\d+)(?: read=(\d+))?", plan)
    return int(top.group(1)) + int(top.group(2) or 0), plan


def test_a_claim_reads_a_bounded_number_of_pages_under_the_generic_plan(tenant):
    tenant, max_buffers = tenant
    db.database.execute_sql("SET plan_cache_mode = force_generic_plan")
    try:
        for attempt in range(3):
            buffers, plan = _one_claim(tenant, f"late-{attempt}")
            assert buffers <= max_buffers, plan
    finally:
        db.database.execute_sql("RESET plan_cache_mode")
    # Whatever plan was used, the claims happened: the oldest pending jobs, in order.
    assert queue.claim(tenant, "after", GROUP) is not None
