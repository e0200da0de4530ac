"""Retention: what the database keeps, and for how long.

With KELPIE_RETENTION_DAYS set, the history (events) of jobs that finished longer ago than that,
and webhook deliveries settled (delivered or given up) longer ago, are deleted; the jobs
themselves stay. Idempotency-Key answers go once they can no longer be replayed (24 h), whatever
the setting. Everything is deleted in batches, each its own short transaction, so no tenant's
heartbeat waits behind a purge (the same reason as api/queue.py's PURGE_BATCH).
"""

import asyncio
import logging
from datetime import timedelta

from peewee import fn

from api import db, idempotency, queue
from api.models import IdempotencyKey, Job, JobEvent, WebhookDelivery

log = logging.getLogger("kelpie.retention")

BATCH = 1000


def _delete_in_batches(model, ids_query, batch: int) -> int:
    total = 0
    while True:
        with db.write_transaction():
            ids = [row.id for row in ids_query.limit(batch)]
            if ids:
                model.delete().where(model.id.in_(ids)).execute()
        total += len(ids)
        if len(ids) < batch:
            return total


def purge(retention_days: float | None, batch: int = BATCH) -> dict[str, int]:
    """One pass; returns how many rows of each kind went."""
    now = db.utcnow()
    removed = {"events": 0, "webhooks": 0, "idempotency_keys": 0}
    if retention_days:
        cutoff = now - timedelta(days=retention_days)
        finished_at = fn.COALESCE(Job.completed, Job.failed, Job.canceled)
        old_events = (JobEvent.select(JobEvent.id).join(Job, on=(JobEvent.job == Job.id))
                      .where(Job.status.in_(queue.FINAL_STATUSES), finished_at < cutoff))
        removed["events"] = _delete_in_batches(JobEvent, old_events, batch)
        settled = (WebhookDelivery.select(WebhookDelivery.id)
                   .where(WebhookDelivery.status != "pending", WebhookDelivery.created < cutoff))
        removed["webhooks"] = _delete_in_batches(WebhookDelivery, settled, batch)
    removed["idempotency_keys"] = _purge_idempotency_keys(now, batch)
    return removed


def _purge_idempotency_keys(now, batch: int) -> int:
    cutoff = now - idempotency.KEY_LIFETIME
    total = 0
    while True:
        with db.write_transaction():
            rows = list(IdempotencyKey.select(IdempotencyKey.user_id, IdempotencyKey.project,
                                              IdempotencyKey.idempotency_key)
                        .where(IdempotencyKey.created <= cutoff).limit(batch))
            for row in rows:
                IdempotencyKey.delete().where(
                    IdempotencyKey.user_id == row.user_id,
                    IdempotencyKey.project == row.project,
                    IdempotencyKey.idempotency_key == row.idempotency_key).execute()
        total += len(rows)
        if len(rows) < batch:
            return total


async def retention_loop(app) -> None:
    """Background loop of every API process. Several processes may overlap: deleting what
    another has just deleted is a no-op."""
    settings = app.ctx.settings
    while True:
        try:
            removed = await db.run(purge, settings.retention_days)
            if any(removed.values()):
                log.info("retention removed %s", removed)
        except Exception:  # the database away for a moment: try again next time
            log.exception("retention pass failed")
        await asyncio.sleep(settings.retention_interval)
