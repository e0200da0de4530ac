"""The autoscaler: every tick, size each ruled container group to its owner's job volume.

For a rule, the job count is the group's pending and running jobs plus those that finished
within `idle_threshold_seconds` (so a group does not stop the moment its queue drains), clamped
to `[min_replicas, max_replicas]`. Then, from the group's state in Salad's API:
target 0 and the group active → stop; target > 0 and the group stopped → start, then set the
replicas if they differ; otherwise set the replicas only when they differ. A group Salad no
longer knows (404) loses its rule.

One tick runs in one process however many API processes and hosts share the database: the
tick is a row in `loop_leases` that a process claims with a single conditional UPDATE (works
the same on SQLite and PostgreSQL, and needs no connection held for the tick).
"""

import asyncio
import logging
import os
import random
import socket
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from api import db, metrics, queue, salad
from api.models import Job, LoopLease, ScalingRule

# A scaling rule's limits (0-500 replicas, 0-3600 s idle) are declared with its request body,
# in api/bodies.py.

log = logging.getLogger("kelpie.autoscale")

LEASE_NAME = "autoscale"
# Statuses in which a group costs money and a target of 0 stops it.
ACTIVE_STATUSES = ("running", "deploying", "pending")
# The status in which a target above 0 starts it.
STOPPED_STATUS = "stopped"


# --- The tick lease ---------------------------------------------------------------------------

def claim_tick(name: str, holder: str, interval: float, max_busy: float):
    """Take this tick if it is due and no one is inside one: (claimed, when the next is due)."""
    now = db.utcnow()
    LoopLease.insert(name=name, due=now).on_conflict_ignore().execute()
    claimed = LoopLease.update(
        due=now + timedelta(seconds=interval),
        busy_until=now + timedelta(seconds=max_busy),
        holder=holder,
    ).where(
        LoopLease.name == name, LoopLease.due <= now,
        LoopLease.busy_until.is_null() | (LoopLease.busy_until <= now),
    ).execute() == 1
    lease = LoopLease.get_by_id(name)
    return claimed, lease.due


def release_tick(name: str, holder: str) -> None:
    LoopLease.update(busy_until=None).where(LoopLease.name == name,
                                            LoopLease.holder == holder).execute()


# --- One rule ---------------------------------------------------------------------------------

def count_jobs(rule: ScalingRule) -> int:
    """The rule owner's jobs for the group that want a replica now, or did recently."""
    cutoff = db.utcnow() - timedelta(seconds=rule.idle_threshold_seconds)
    return Job.select().where(
        Job.user == rule.user_id,
        Job.container_group_id == rule.container_group_id,
        Job.status.in_((queue.PENDING, queue.RUNNING))
        | (Job.completed >= cutoff) | (Job.failed >= cutoff) | (Job.canceled >= cutoff),
    ).count()


def clamp(count: int, rule: ScalingRule) -> int:
    return min(max(count, rule.min_replicas), rule.max_replicas)


def plan(status: str | None, replicas: int | None, target: int) -> list[tuple]:
    """The calls that bring a group in `status` with `replicas` to `target`, in order."""
    if target == 0:
        return [("stop",)] if status in ACTIVE_STATUSES else []
    steps = [("start",)] if status == STOPPED_STATUS else []
    if replicas != target:
        steps.append(("replicas", replicas, target))
    return steps


@dataclass
class Evaluation:
    count: int
    target: int
    group_status: str | None = None
    group_replicas: int | None = None
    done: list[str] = field(default_factory=list)
    error: str | None = None
    gone: bool = False

    @property
    def action(self) -> str:
        return ", ".join(self.done) or "none"


def apply_target(rule: ScalingRule, evaluation: Evaluation) -> None:
    """Read the group from Salad and make the calls `plan` asks for (sync: run off the loop).

    Records in `evaluation` what it saw and each call that succeeded; raises on failure.
    """
    where = (rule.organization_name, rule.project_name, rule.container_group_name)
    group = salad.get_container_group(*where)
    evaluation.group_status = salad.container_group_status(group)
    evaluation.group_replicas = group.get("replicas")
    for step in plan(evaluation.group_status, evaluation.group_replicas, evaluation.target):
        if step[0] == "stop":
            salad.stop_container_group(*where)
            evaluation.done.append("stopped")
        elif step[0] == "start":
            salad.start_container_group(*where)
            evaluation.done.append("started")
        else:
            salad.set_replicas(*where, step[2])
            evaluation.done.append(f"replicas {step[1]} -> {step[2]}")


def record(rule: ScalingRule, evaluation: Evaluation) -> None:
    if evaluation.gone:
        ScalingRule.delete().where(
            ScalingRule.container_group_id == rule.container_group_id).execute()
        return
    ScalingRule.update(
        last_evaluated=db.utcnow(), last_count=evaluation.count, last_target=evaluation.target,
        last_group_status=evaluation.group_status, last_group_replicas=evaluation.group_replicas,
        last_action=evaluation.action, last_error=evaluation.error,
    ).where(ScalingRule.container_group_id == rule.container_group_id).execute()


async def evaluate(rule: ScalingRule) -> Evaluation:
    count = await db.run(count_jobs, rule)
    evaluation = Evaluation(count=count, target=clamp(count, rule))
    metrics.AUTOSCALER_CALLS.inc()
    try:
        await salad.call(apply_target, rule, evaluation)
    except salad.SaladNotFound:
        evaluation.gone = True
        log.info("container group %s (%s/%s/%s) no longer exists: rule deleted",
                 rule.container_group_id, rule.organization_name, rule.project_name,
                 rule.container_group_name)
    except salad.SaladError as error:
        evaluation.error = str(error)[:2000]
        metrics.AUTOSCALER_ERRORS.inc()
        log.warning("autoscaling %s failed: %s", rule.container_group_id, error)
    await db.run(record, rule, evaluation)
    return evaluation


async def evaluate_all() -> int:
    """One tick: every rule, several at once (the Salad client bounds the calls in flight)."""
    rules = await db.run(lambda: list(ScalingRule.select()))
    slots = asyncio.Semaphore(salad.client().concurrency)

    async def one(rule):
        async with slots:
            try:
                await evaluate(rule)
            except Exception:  # one rule's surprise must not stop the others
                log.exception("autoscaling %s failed", rule.container_group_id)

    await asyncio.gather(*(one(rule) for rule in rules))
    return len(rules)


# --- The loop ---------------------------------------------------------------------------------

async def autoscaler(app) -> None:
    """Background loop of every API process; the lease lets only one of them act per tick."""
    settings = app.ctx.settings
    if not salad.is_configured():
        log.info("autoscaling off: KELPIE_SALAD_API_KEY is not set")
        return
    interval = settings.autoscale_interval
    # A holder that dies inside a tick blocks the next one for at most this long.
    max_busy = max(10 * interval, 600.0)
    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    while True:
        try:
            claimed, due = await db.run(claim_tick, LEASE_NAME, holder, interval, max_busy)
            if claimed:
                try:
                    await evaluate_all()
                finally:
                    await db.run(release_tick, LEASE_NAME, holder)
            # Wake when the next tick is due; a little jitter spreads the processes' claims.
            wait = (due - db.utcnow()).total_seconds()
            wait = min(max(wait, interval / 10, 0.05), interval) + random.uniform(0, interval / 20)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("autoscale tick failed")
            wait = interval
        await asyncio.sleep(wait)
