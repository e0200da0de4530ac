"""The claim's cost does not grow with the jobs a tenant has already run (PostgreSQL).

The claim runs as a prepared statement, and PostgreSQL eventually plans a prepared statement
once, without looking at its parameters (a generic plan). For a tenant whose jobs all share one
group, such a plan once walked every job already claimed to find the next pending one, and
every running job to check for a lost lease: 8.9 ms and 2,249 buffers per claim after 5,000
claims, and growing. This forces the generic plan and bounds the pages one claim reads.
"""

import re

import pytest

from api import db, jobspec, keys, queue, serialize, sql
from api.config import Settings
from api.principal import Principal
from tests.api.jobdefs import sync_job
from tests.conftest import queue_database

GROUP = "one-group"
JOBS, CLAIMED = 3000, 2000
# A claim reads the index pages leading to one pending job and one lease, the job's heap page,
# and writes the job, its event and their index entries: a few dozen pages. The walk this
# guards against read one page per skipped job (over 2,000 here).
MAX_BUFFERS = 200


@pytest.fixture(scope="module", params=["analyzed-after-claims", "analyzed-during-burst"])
def tenant(request, tmp_path_factory):
    """A tenant with one group, CLAIMED of its JOBS claimed, and the statistics taken either
    after the claims (as autovacuum leaves them in the end) or while every job was still
    pending (a burst just submitted, as autovacuum leaves them until a tenth of the table has
    changed): when every row looked pending, several indexes served the claim's order alike."""
    with queue_database("postgresql", tmp_path_factory.mktemp("claim-plan"), ["plan"]):
        keys.insert("plan", "plan-key")
        principal = Principal(user_id="plan", key_hash=keys.hash_key("plan-key"))
        spec = jobspec.parse_job(sync_job(container_group_id=GROUP), Settings())
        if request.param == "analyzed-during-burst":
            db.database.execute_sql("ALTER TABLE jobs SET (autovacuum_enabled = false)")
        for _ in range(JOBS // 1000):
            queue.submit(principal, [spec] * 1000)
        if request.param == "analyzed-during-burst":
            db.database.execute_sql("ANALYZE jobs")
        for index in range(CLAIMED):
            assert queue.claim(principal, f"machine-{index % 100}", GROUP) is not None
        if request.param == "analyzed-after-claims":
            # The versions the claims replaced are gone from the indexes, as autovacuum leaves
            # them, so what is measured is the walk over live jobs that a poor plan makes.
            db.database.execute_sql("VACUUM ANALYZE jobs")
        yield principal


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
    db.database.execute_sql("SET plan_cache_mode = force_generic_plan")
    try:
        for attempt in range(3):
            buffers, plan = _one_claim(tenant, f"late-{attempt}")
            assert buffers <= MAX_BUFFERS, plan
    finally:
        db.database.execute_sql("RESET plan_cache_mode")
    # Whatever plan was used, the claims happened: the oldest pending jobs, in order.
    assert queue.claim(tenant, "after", GROUP) is not None
