"""Retention (api/retention.py) on SQLite and PostgreSQL: old history of finished jobs and old
settled webhook deliveries go, in batches; everything younger, unfinished or unsettled stays;
Idempotency-Key answers go after 24 h whatever the setting."""

import uuid
from datetime import timedelta

import pytest

from api import db, retention
from api.config import Settings
from api.migrations import apply_all
from api.models import IdempotencyKey, Job, JobEvent, User, WebhookDelivery
from tests.conftest import DIALECTS, make_database_url


@pytest.fixture(params=DIALECTS)
def database(request, tmp_path):
    url, cleanup = make_database_url(request.param, tmp_path)
    db.init(Settings(database_url=url))
    with db.database.connection_context():
        apply_all()
        yield db.database
    db.close()
    cleanup()


def _job(user, status, finished_days_ago, events=3):
    now = db.utcnow()
    finished = now - timedelta(days=finished_days_ago) if finished_days_ago is not None else None
    job = Job.create(id=str(uuid.uuid4()), user=user, status=status,
                     created=now - timedelta(days=30), command="true", arguments=[],
                     environment={}, max_failures=3, heartbeat_interval=30,
                     completed=finished if status == "completed" else None,
                     failed=finished if status == "failed" else None)
    for index in range(events):
        JobEvent.create(job=job.id, at=now - timedelta(days=30), kind=f"k{index}",
                        status=status)
    return job


def _delivery(user, status, days_ago):
    at = db.utcnow() - timedelta(days=days_ago)
    return WebhookDelivery.create(job_id=str(uuid.uuid4()), user_id=user.id, url="http://x/",
                                  job_status="completed", body="{}", status=status,
                                  created=at, next_attempt=at, attempts=1)


def _events(job):
    return JobEvent.select().where(JobEvent.job == job.id).count()


def test_old_history_and_settled_webhooks_go_in_batches(database):
    user = User.create(id="retention-user", name="retention-user", created=db.utcnow())
    old_done = [_job(user, "completed", 10) for _ in range(4)]
    old_failed = _job(user, "failed", 10)
    recent = _job(user, "completed", 1)
    running = _job(user, "running", None)
    old_delivered = [_delivery(user, "delivered", 10) for _ in range(3)]
    old_given_up = _delivery(user, "failed", 10)
    old_pending = _delivery(user, "pending", 10)
    recent_delivered = _delivery(user, "delivered", 1)
    for age_hours, key in ((25, "stale"), (1, "fresh")):
        IdempotencyKey.create(user_id=user.id, project="", idempotency_key=key,
                              request_hash="h", status=202, body="{}",
                              created=db.utcnow() - timedelta(hours=age_hours))

    # A batch of 4 rows: 15 old events take four batches, the last one short.
    removed = retention.purge(retention_days=7, batch=4)

    assert removed == {"events": 15, "webhooks": 4, "idempotency_keys": 1}
    assert [_events(job) for job in (*old_done, old_failed)] == [0] * 5
    assert (_events(recent), _events(running)) == (3, 3)
    assert Job.select().count() == 7  # the jobs themselves stay
    left = {row.id for row in WebhookDelivery.select()}
    assert left == {old_pending.id, recent_delivered.id}
    assert not left & {row.id for row in (*old_delivered, old_given_up)}
    assert [row.idempotency_key for row in IdempotencyKey.select()] == ["fresh"]


def test_without_retention_days_only_idempotency_answers_expire(database):
    user = User.create(id="keeper", name="keeper", created=db.utcnow())
    job = _job(user, "completed", 400)
    delivery = _delivery(user, "delivered", 400)
    IdempotencyKey.create(user_id=user.id, project="", idempotency_key="old", request_hash="h",
                          status=202, body="{}", created=db.utcnow() - timedelta(days=2))
    assert retention.purge(retention_days=None) == {"events": 0, "webhooks": 0,
                                                    "idempotency_keys": 1}
    assert _events(job) == 3 and WebhookDelivery.get_by_id(delivery.id)
