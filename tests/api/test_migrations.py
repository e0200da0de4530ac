"""Migration 0004 (least privilege) on a database that holds data written by 0003-era code:
existing keys keep working and get ids, jobs and events keep their history, reallocation
records move to the tenant-keyed table, and stored webhook answers are dropped. SQLite and
PostgreSQL."""

from datetime import datetime

import pytest

from api import db, keys, queue
from api.config import Settings
from api.migrations import apply_all, discover
from api.models import Job, JobEvent, MachineReallocation, SchemaMigration, WebhookDelivery
from api.principal import Principal
from tests.conftest import DIALECTS, make_database_url

AT = datetime(2026, 1, 2, 3, 4, 5)
SECRET = "kelpie_secret-from-0003-era-0123456789abcdef"
JOB, OTHER = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"


@pytest.fixture
def database(database_url):
    db.init(Settings(database_url=database_url))
    with db.database.connection_context():
        yield db.database
    db.close()


def _migrate_to(version: int) -> None:
    database = db.database
    database.execute_sql("CREATE TABLE IF NOT EXISTS schema_migrations ("
                         " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                         " applied TIMESTAMP NOT NULL)")
    for number, name, module in discover():
        if number <= version:
            with db.write_transaction():
                for statement in module.up(db.dialect()):
                    database.execute_sql(statement)
                SchemaMigration.create(version=number, name=name, applied=AT)


def _old_rows(database) -> None:
    p = "%s" if db.dialect() == "postgresql" else "?"
    rows = [
        ("users (id, name, org, project, is_admin, created)",
         ["alice", "alice", "acme", "prod", False, AT]),
        ("api_keys (key_hash, user_id, created)", [keys.hash_key(SECRET), "alice", AT]),
        ("jobs (id, user_id, status, created, command, arguments, environment, max_failures,"
         " heartbeat_interval, container_group_id)",
         [JOB, "alice", "pending", AT, "python", "[]", "{}", 3, 30, "group-1"]),
        ("jobs (id, user_id, status, created, command, arguments, environment, max_failures,"
         " heartbeat_interval, container_group_id)",
         [OTHER, "alice", "failed", AT, "python", "[]", "{}", 1, 30, "group-1"]),
        ("job_events (job_id, at, kind, status)", [JOB, AT, "created", "pending"]),
        ("machine_reallocations (machine_id, user_id, container_group_id, requested, outcome)",
         ["machine-9", "alice", "group-1", AT, "reallocated"]),
        ("webhook_deliveries (job_id, user_id, url, job_status, body, status, created,"
         " next_attempt, attempts, last_response_code, last_response_body)",
         [JOB, "alice", "http://10.0.0.5/", "running", "{}", "delivered", AT, AT, 1, 200,
          "internal page contents"]),
    ]
    with db.write_transaction():
        for table, values in rows:
            placeholders = ", ".join([p] * len(values))
            database.execute_sql(f"INSERT INTO {table} VALUES ({placeholders})", values)


def test_0004_keeps_0003_data_working(database):
    _migrate_to(3)
    _old_rows(database)

    assert apply_all()[0] == 4  # and any later migrations

    # The old key still authenticates, now with an id, scope user, no expiry.
    principal = keys.authenticate(SECRET)
    assert principal is not None and principal.scope == "user"
    assert principal.key_id == "key_" + keys.hash_key(SECRET)[:16]
    [row] = keys.for_user("alice")
    assert (row.id, row.scope, row.expires) == (principal.key_id, "user", None)
    assert row.last_used is not None  # the login just now

    # Old jobs have no project (Kelpie-key jobs), and their history is intact.
    job = Job.get_by_id(JOB)
    assert (job.organization, job.project, job.status) == (None, None, "pending")
    [event] = JobEvent.select().where(JobEvent.job == JOB)
    assert (event.kind, event.actor) == ("created", None)

    # The reallocation record moved to the tenant-keyed table.
    [record] = MachineReallocation.select()
    assert (record.user_id, record.container_group_id, record.machine_id, record.outcome) == (
        "alice", "group-1", "machine-9", "reallocated")

    # A receiver's answer stored before 0004 is gone; the rest of the delivery is not.
    [delivery] = WebhookDelivery.select()
    assert (delivery.last_response_code, delivery.last_response_body) == (200, None)

    # And the queue works on the migrated rows: the old job is claimed, with an audit actor.
    claimed = queue.claim(principal, "machine-1", "group-1")
    assert claimed.id == JOB
    assigned = JobEvent.select().where(JobEvent.job == JOB, JobEvent.kind == "assigned").get()
    assert assigned.actor == f"key:{principal.key_id}"
    assert queue.claim(Principal(user_id="bob"), "machine-1", "group-1") is None


@pytest.fixture(params=DIALECTS)
def fresh_database(request, tmp_path):
    """A database of its own: the module's is already migrated by the test above."""
    url, cleanup = make_database_url(request.param, tmp_path)
    db.init(Settings(database_url=url))
    with db.database.connection_context():
        yield db.database
    db.close()
    cleanup()


def test_0006_gives_existing_jobs_the_default_limits(fresh_database):
    _migrate_to(5)
    _old_rows(fresh_database)

    assert 6 in apply_all()

    job = Job.get_by_id(JOB)
    assert (job.max_interruptions, job.num_interruptions, job.timeout_s) == (100, 0, None)
